"""pretrain3d.geometry"""
