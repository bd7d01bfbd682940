"""2D feature cache stage: run the frozen teacher once over every frame of every scene."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pretrain3d.config import Params
from pretrain3d.data.scene import list_scenes
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)


def features_dir(cfg: Params) -> Path:
    """Where the cache of the configured teacher lives (the same key the cache module uses)."""
    from pretrain3d.teachers.cache import configured_cache_dir

    return configured_cache_dir(cfg.teacher)


def cache_features(cfg: Params, progress: bool = True) -> dict:
    from pretrain3d.engine.seed import seed_everything
    from pretrain3d.teachers.cache import cache_scenes
    from pretrain3d.teachers.registry import build_teacher

    seed_everything(0, threads=cfg.train.threads)
    t = cfg.teacher
    teacher = build_teacher(t.name, layer=t.layer, input_size=(t.input_height, t.input_width), weights=t.weights)
    scene_dirs = [d for split in ("train", "val") for d in list_scenes(cfg.data.processed_root, split)]
    out = features_dir(cfg)
    t0 = time.perf_counter()
    tags = job_tags(cfg, "features", teacher=t.name, teacher_layer=t.layer, uses_gt_labels="false")
    with job_run(cfg.tracking, f"features/{t.name}", tags, job_params(cfg)) as run:
        stats = cache_scenes(teacher, scene_dirs, out, batch_size=t.batch_size, progress=progress)
        run.log_metrics({f"features/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        run.log_artifact(out / "meta.json")
    log.info("cached %s features of %d scenes in %s (%.1f s)", t.name, len(scene_dirs), out, time.perf_counter() - t0)
    return stats
