"""The `scratch` "pre-training": a randomly initialised backbone, saved like a pre-trained one.

Every method's fine-tuning then starts the same way (strict loading of a backbone checkpoint), so
scratch and pre-trained runs differ only in the backbone weights they start from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pretrain3d.config import Params, config_hash
from pretrain3d.engine.seed import seed_everything
from pretrain3d.engine.trainer import save_checkpoint
from pretrain3d.models.segmentor import build_backbone
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)


def init_backbone(cfg: Params, seed: int, out_dir: str | Path) -> Path:
    out = Path(out_dir) / "backbone.pt"
    seed_everything(seed, threads=cfg.train.threads)
    backbone = build_backbone(cfg.model)
    fingerprint = config_hash({"model": cfg.model.model_dump(mode="json"), "seed": seed, "method": "scratch"})
    tags = job_tags(cfg, "pretrain", method="scratch", seed=seed, uses_gt_labels="false")
    with job_run(cfg.tracking, f"pretrain/scratch/seed{seed}", tags, job_params(cfg)):
        _save(out, backbone, seed, fingerprint, cfg)
    log.info("wrote a randomly initialised backbone (seed %d) to %s", seed, out)
    return out


def _save(out: Path, backbone, seed: int, fingerprint: str, cfg: Params) -> None:
    save_checkpoint(out, {
        "format": 1, "kind": "backbone", "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "method": "scratch", "seed": seed, "fingerprint": fingerprint, "config_hash": config_hash(cfg),
        "uses_gt_labels": False, "teacher": None, "datasets": []})


def build_backbone_file(cfg: Params, method: str, seed: int, out_dir: str | Path) -> Path:
    """The entry the CLI calls for an untrained method's stage (methods.registry ``stage``)."""
    return init_backbone(cfg, seed, out_dir)
