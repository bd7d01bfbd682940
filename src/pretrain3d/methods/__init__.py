"""pretrain3d.methods"""
