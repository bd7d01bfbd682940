"""pretrain3d.stages"""
