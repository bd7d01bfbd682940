"""ConDense's two sides as retrieval inputs: a scene's keypoints from the 3D field, an image's cells from
the jointly trained 2D network, both in the space the consistency loss aligned (``CondenseModel.embed_2d``:
centred on the teacher's mean feature, projected when ``feature_dim`` is smaller).

A query image needs no depth: its 2D network features at every cell, and each cell centre's pixel
(``teachers.cache.cell_to_pixel``) for the pose.
"""

from __future__ import annotations

import numpy as np
import torch

from pretrain3d.retrieval.keypoints import KeypointSet, select_keypoints

__all__ = ["CondenseSource", "scene_keypoints", "image_cells"]


class CondenseSource:
    """A ConDense run as a scene-query source (``retrieval.sources``): its 3D field for scenes, its jointly
    trained 2D network for images."""

    name = "condense"

    def __init__(self, cfg, backbone, device="cpu"):
        from pretrain3d.methods.condense import load_condense_model
        from pretrain3d.retrieval.sources import file_sha256, teacher_tag

        self.device = device
        self.model = load_condense_model(cfg, backbone, device).eval()
        self.fingerprint = {"source": self.name, "backbone_sha256": file_sha256(backbone),
                            "teacher": teacher_tag(self.model.image_net.teacher)}

    def point_features(self, scene) -> np.ndarray:
        from pretrain3d.methods.condense import point_features

        return point_features(self.model, scene, self.device).numpy()

    def image_cells(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return image_cells(self.model, image)


def scene_keypoints(model, scene, k: int, rule: str, device="cpu", **select_kw) -> KeypointSet:
    """K keypoints of a processed scene from the field's features at its points (``condense.point_features``)."""
    from pretrain3d.methods.condense import point_features

    feats = point_features(model, scene, device).numpy()
    return select_keypoints(scene.scene_id, np.asarray(scene.coord), feats, k, rule, **select_kw)


@torch.no_grad()
def image_cells(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(desc (h*w, D) float32, uv (h*w, 2) pixel of each cell centre)`` of one RGB image (H, W, 3) uint8.
    A wrong-shaped or non-uint8 image is a ValueError saying what it is."""
    from pretrain3d.retrieval.search import check_query_image, map_cells

    img = check_query_image(image)
    net = model.image_net
    f = model.embed_2d(net.head(net.trunk(net.preprocess([img]))), 1)[0]  # (D, h, w)
    return map_cells(f.cpu().numpy(), img.shape[1], img.shape[0], net.geometry)
