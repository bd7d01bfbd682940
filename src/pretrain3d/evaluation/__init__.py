"""pretrain3d.evaluation"""
