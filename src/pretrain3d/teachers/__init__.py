"""pretrain3d.teachers"""
