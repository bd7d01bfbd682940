"""pretrain3d.data"""
