"""pretrain3d.tracking"""
