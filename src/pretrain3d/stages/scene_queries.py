"""Scene repository stages (ConDense part 2): index a split's scenes as keypoints, and answer image /
scene (duplicate) queries against an index. Feature sources ("methods" here):

* ``condense`` -- the 3D field (scene side) and the jointly trained 2D network (image side) of a ConDense
  pre-training run (``--backbone .../condense/seedK/backbone.pt``);
* ``teacher`` -- the frozen teacher fused onto the points by multi-view averaging (scene side) and the
  teacher's own cells (image side): the no-3D-training baseline;

Every index stores a fingerprint (source, backbone file hash, teacher, keypoint rule, K); a query
with another model or settings is refused (``retrieval.index.load_index``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pretrain3d.config import Params
from pretrain3d.errors import DataError
from pretrain3d.retrieval import SOURCES  # name -> description

log = logging.getLogger(__name__)



def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureSource:
    """Scene-side point features and image-side cells of one source, and its fingerprint."""

    def __init__(self, cfg: Params, source: str, backbone: str | Path | None = None, device="cpu"):
        from pretrain3d.methods import condense

        if source not in SOURCES:
            raise ValueError(f"unknown feature source {source!r} (one of {', '.join(SOURCES)})")
        self.source, self.device = source, device
        if source == "condense":
            if backbone is None:
                raise ValueError("the condense source needs --backbone (a ConDense pre-training's backbone.pt)")
            self.model = condense.load_condense_model(cfg, backbone, device).eval()
            self.teacher = self.model.image_net.teacher
            self.fingerprint = {"source": source, "backbone_sha256": _sha256(Path(backbone))}
        else:
            self.model = None
            self.teacher = condense.build_condense_teacher(cfg).to(device).eval()
            self.fingerprint = {"source": source}
        meta = self.teacher.metadata()
        self.fingerprint["teacher"] = f"{meta['name']}:{meta['layer']}:{meta['weights_sha256'][:16]}"

    @torch.no_grad()
    def _teacher_maps(self, images) -> torch.Tensor:
        return self.teacher(self.teacher.preprocess(list(images))).float().cpu()

    def point_features(self, scene) -> np.ndarray:
        if self.source == "condense":
            from pretrain3d.methods.condense import point_features

            return point_features(self.model, scene, self.device).numpy()
        from pretrain3d.retrieval.fused_teacher import fused_point_features
        from pretrain3d.teachers.cache import cell_geometry

        return fused_point_features(self._teacher_maps, cell_geometry(self.teacher.metadata(), "teacher"), scene)[0]

    def image_cells(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from pretrain3d.retrieval import condense_features as cf

        if self.source == "condense":
            return cf.image_cells(self.model, image)
        from pretrain3d.retrieval.search import check_query_image, map_cells
        from pretrain3d.teachers.cache import cell_geometry

        img = check_query_image(image)
        return map_cells(self._teacher_maps(img[None])[0].numpy(), img.shape[1], img.shape[0],
                         cell_geometry(self.teacher.metadata(), "teacher"))


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image file as (H, W, 3) uint8; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(path, f"not a readable image ({type(e).__name__}: {e})", "pass a PNG or JPEG file") from e


def index_split(cfg: Params, source: FeatureSource, split: str, out_dir: str | Path, k: int = 128,
                rule: str = "fps") -> dict:
    """Index every scene of ``split`` (processed) into ``out_dir``; returns a summary."""
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval.keypoints import select_keypoints

    scenes = load_split_scenes(cfg.data.processed_root, split, cfg.data.num_classes)
    if not scenes:
        raise DataError(Path(cfg.data.processed_root) / split, "no processed scenes to index")
    out = Path(out_dir)
    t0 = time.perf_counter()
    for s in scenes:
        ks = select_keypoints(s.scene_id, np.asarray(s.coord), source.point_features(s), k, rule)
        ri.write_scene(out, ks)
    fp = {**source.fingerprint, "rule": rule, "k": int(k)}
    ri.write_index(out, fp, [s.scene_id for s in scenes])
    seconds = time.perf_counter() - t0
    log.info("indexed %d %s scenes into %s (%s, K=%d, %s): %.2f s per scene", len(scenes), split, out,
             source.source, k, rule, seconds / len(scenes))
    return {"scenes": len(scenes), "seconds_per_scene": seconds / len(scenes), "fingerprint": fp}


def query_image(source: FeatureSource, index_dir: str | Path, image: np.ndarray, top: int = 5,
                intrinsics: np.ndarray | None = None) -> dict:
    """Rank the index's scenes for an RGB image; with ``intrinsics`` (3, 3), the camera pose in the best one."""
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval import search as rs

    idx = ri.load_index(index_dir, expect=source.fingerprint)
    desc, uv = source.image_cells(image)
    scores = rs.scores_against(desc, idx.desc)
    order = np.argsort(-scores, kind="stable")[:top]
    out = {"top": [(idx.scene_ids[i], float(scores[i])) for i in order]}
    if intrinsics is not None:
        b = int(order[0])
        i, j, _ = rs.mutual_matches(desc, idx.desc[b].astype(np.float32))
        pose = rs.estimate_pose(uv[i], idx.xyz[b][j], intrinsics)
        out["pose"] = None if pose is None else pose["pose"].tolist()
    return out


def query_scene(source: FeatureSource, index_dir: str | Path, scene_dir: str | Path, top: int = 5) -> dict:
    """Rank the index's scenes by similarity to a processed scene (``scene_dir``): the duplicate-scene query.
    The scene is condensed with the index's own rule and K; the score is the symmetric set similarity."""
    from pretrain3d.data.scene import load_processed_scene
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval import search as rs
    from pretrain3d.retrieval.keypoints import select_keypoints

    idx = ri.load_index(index_dir, expect=source.fingerprint)
    scene = load_processed_scene(scene_dir, allow_unlabelled=True)
    ks = select_keypoints(scene.scene_id, np.asarray(scene.coord), source.point_features(scene),
                          int(idx.fingerprint["k"]), idx.fingerprint["rule"])
    scores = rs.scores_against(ks.desc, idx.desc, symmetric=True)
    order = np.argsort(-scores, kind="stable")[:top]
    return {"scene": scene.scene_id, "top": [(idx.scene_ids[i], float(scores[i])) for i in order]}
