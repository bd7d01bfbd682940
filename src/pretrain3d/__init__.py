"""pretrain3d: reproducible 2D-to-3D pre-training experiments for point-cloud backbones."""

__version__ = "0.1.0"
