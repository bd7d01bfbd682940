"""pretrain3d.engine"""
