"""pretrain3d.models"""
