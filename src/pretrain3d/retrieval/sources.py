"""Feature sources of the scene queries: what turns a scene into point features and an image into
feature cells that live in one space. A source is built by name (``build_source``): ``teacher`` (the
baseline here) or a method's ``query_source`` class (methods.registry), from its pre-training run.

Every source has ``name``, ``fingerprint`` (what made its features: stored with an index, so that a
query with another model is refused), ``point_features(scene) -> (N, D)`` and
``image_cells(image) -> (desc (n, D), uv (n, 2))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pretrain3d.errors import ConfigError
from pretrain3d.teachers.base import sha256_file as file_sha256

__all__ = ["TeacherSource", "build_source", "configured_teacher", "file_sha256", "teacher_tag"]


def teacher_tag(teacher) -> str:
    meta = teacher.metadata()
    return f"{meta['name']}:{meta['layer']}:{meta['weights_sha256'][:16]}"


def configured_teacher(cfg, device="cpu"):
    """The frozen teacher of ``cfg.teacher`` in eval mode on ``device``."""
    from pretrain3d.teachers.registry import build_teacher

    t = cfg.teacher
    return build_teacher(t.name, t.layer, (t.input_height, t.input_width), t.weights).to(device).eval()


class TeacherSource:
    """The frozen configured teacher (``cfg.teacher``): scenes by multi-view fusion of its features onto the
    points (``retrieval.fused_teacher``), images by its own feature cells. No 3D training at all."""

    name = "teacher"

    def __init__(self, cfg, backbone=None, device="cpu"):
        from pretrain3d.teachers.cache import cell_geometry

        self.device = device
        self.teacher = configured_teacher(cfg, device)
        self.geometry = cell_geometry(self.teacher.metadata(), "teacher")
        self.fingerprint = {"source": self.name, "teacher": teacher_tag(self.teacher)}

    @torch.no_grad()
    def _maps(self, images) -> torch.Tensor:
        return self.teacher(self.teacher.preprocess(list(images))).float().cpu()

    def point_features(self, scene) -> np.ndarray:
        from pretrain3d.retrieval.fused_teacher import fused_point_features

        return fused_point_features(self._maps, self.geometry, scene)[0]

    def image_cells(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from pretrain3d.retrieval.search import check_query_image, map_cells

        img = check_query_image(image)
        return map_cells(self._maps(img[None].copy())[0].numpy(), img.shape[1], img.shape[0], self.geometry)


_BASELINE_CLASSES = {"teacher": TeacherSource}


def build_source(cfg, name: str, backbone: str | Path | None = None, device="cpu"):
    """The feature source ``name`` (``retrieval.SOURCES``); method sources need their run's ``backbone``."""
    from pretrain3d.methods import registry
    from pretrain3d.retrieval import SOURCES

    if name not in SOURCES:
        raise ConfigError(f"unknown scene-query feature source {name!r} (one of {', '.join(SOURCES)})")
    if name in _BASELINE_CLASSES:
        return _BASELINE_CLASSES[name](cfg, backbone, device)
    if backbone is None:
        raise ConfigError(f"the {name} source needs --backbone (its pre-training run's backbone.pt)")
    if not Path(backbone).is_file():
        raise ConfigError(f"{backbone}: no such backbone file (the {name} pre-training run writes it)")
    return registry.resolve(registry.spec(name).query_source)(cfg, backbone, device)
