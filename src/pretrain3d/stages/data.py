"""Data stages: generate the embedded dataset, preprocess raw scenes, fuse 7-Scenes frames."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pretrain3d.atomic import atomic_dir, write_json
from pretrain3d.config import Params
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)


def generate(cfg: Params) -> Path:
    """Procedural rooms → raw ScanNet-like layout at data.raw_root (written atomically)."""
    from pretrain3d.data.synthetic import generate_dataset

    if cfg.data.dataset != "synthetic":
        raise ValueError(f"data.dataset is {cfg.data.dataset!r}: nothing to generate (generation is for 'synthetic')")
    s = cfg.data.synthetic
    out = Path(cfg.data.raw_root)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, "generate", job_tags(cfg, "generate"), job_params(cfg)) as run:
        with atomic_dir(out) as tmp:
            generate_dataset(tmp, num_train=s.num_train, num_val=s.num_val, seed=s.seed,
                             frames_per_scene=s.frames_per_scene, width=s.image_width, height=s.image_height,
                             points_per_m2=s.points_per_m2, workers=cfg.data.workers, progress=True)
        run.log_metrics({"generate/seconds": time.perf_counter() - t0,
                         "generate/scenes": s.num_train + s.num_val})
    log.info("generated %d scenes in %s (%.1f s)", s.num_train + s.num_val, out, time.perf_counter() - t0)
    return out


def preprocess(cfg: Params) -> Path:
    """Raw ScanNet-like scenes → processed-scene contract at data.processed_root."""
    from pretrain3d.data.scannet_like import preprocess_scannet_like

    out = Path(cfg.data.processed_root)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, "preprocess", job_tags(cfg, "preprocess"), job_params(cfg)) as run:
        with atomic_dir(out) as tmp:
            manifest = preprocess_scannet_like(cfg.data.raw_root, tmp, workers=cfg.data.workers, progress=True)
        run.set_tags({"data_hash": manifest.get("data_hash", "unknown")})
        run.log_metrics({"preprocess/seconds": time.perf_counter() - t0})
        run.log_artifact(out / "manifest.json")
    log.info("preprocessed into %s (%.1f s)", out, time.perf_counter() - t0)
    return out


def fuse_sevenscenes(root: str, out: str, frame_step: int, voxel_size: float) -> Path:
    from pretrain3d.data.sevenscenes import preprocess_sevenscenes

    t0 = time.perf_counter()
    preprocess_sevenscenes(root, out, frame_step=frame_step, voxel_size=voxel_size)
    log.info("fused 7-Scenes %s into %s (%.1f s)", root, out, time.perf_counter() - t0)
    return Path(out)


def write_schema(path: str) -> None:
    from pretrain3d.config import json_schema

    write_json(path, json_schema())
