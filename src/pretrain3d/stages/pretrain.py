"""Pre-training stage: train a backbone with a 2D->3D method on the TRAIN split, hand it to fine-tuning.

Inputs: the processed scenes (``data.processed_root``, train split only -- never val) and the 2D
feature cache of the configured teacher (``stages.features.features_dir(cfg)``; the teacher itself
is never built here). Outputs, each written atomically, in ``out_dir``:

* ``backbone.pt``: ``{"format": 1, "kind": "backbone", "backbone": <SpUNet state dict, the keys of
  Segmentor.backbone>, "method", "seed", "fingerprint", "config_hash", "uses_gt_labels": False,
  "teacher": <the cache's meta.json>}`` -- fine-tuning loads ``["backbone"]`` strictly;
* ``pretrain_log.json``: per-epoch history and the run summary;
* ``checkpoint/last.pt``: the resumable training state (exact resume, see engine.trainer).

Settings: optimiser and schedule from ``pretrain.*``; voxel size, device, AMP, threads and data
workers from ``train.*`` (shared with fine-tuning, so the backbone sees the same voxels).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from torch.utils.data import BatchSampler, DataLoader

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash, dump_yaml
from pretrain3d.data.dataset import EpochSampler
from pretrain3d.engine.optim import build_optimizer, build_scheduler
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import Trainer, save_checkpoint
from pretrain3d.models.segmentor import build_backbone
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run
from pretrain3d.tracking.provenance import data_hash

log = logging.getLogger(__name__)

BACKBONE_FORMAT = 1
METHODS = ("ppkt",)


def run_fingerprint(cfg: Params, method: str, seed: int, teacher_meta: dict) -> str:
    """Identifies a pre-training run: a checkpoint from any other run is never resumed."""
    return config_hash({
        "model": cfg.model.model_dump(mode="json"), "pretrain": cfg.pretrain.model_dump(mode="json"),
        "grid_size": cfg.train.grid_size, "data": data_hash(cfg.data.processed_root),
        "teacher": teacher_meta, "method": method, "seed": seed,
    })


def pretrain(cfg: Params, method: str, seed: int, out_dir: str | Path, progress: bool = True,
             crash_after_steps: int | None = None) -> dict:
    if method not in METHODS:
        raise ValueError(f"pre-training method {method!r} is not implemented here (available: "
                         f"{', '.join(METHODS)}; 'scratch' is a random initialisation: stages.init_backbone)")
    from pretrain3d.methods.ppkt import PPKTDataset, PPKTModel, load_pretrain_scenes, ppkt_collate, ppkt_loss
    from pretrain3d.stages.features import features_dir
    from pretrain3d.teachers.cache import read_cache_meta

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pc, tc = cfg.pretrain, cfg.train
    seed_everything(seed, threads=tc.threads)
    device = resolve_device(tc.device)

    cache = features_dir(cfg)
    meta = read_cache_meta(cache)
    scenes = load_pretrain_scenes(cfg.data.processed_root, "train", cfg.data.num_classes)
    ds = PPKTDataset(scenes, cache, pc, tc.grid_size)
    steps_per_epoch = math.ceil(len(ds) / pc.batch_size)

    model = PPKTModel(build_backbone(cfg.model), int(meta["dim"]), pc.ppkt.embed_dim, tau=pc.ppkt.tau).to(device)
    optimizer = build_optimizer(model.parameters(), pc)
    scheduler = build_scheduler(optimizer, pc, pc.epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        sampler = EpochSampler(len(ds), seed, epoch, shuffle=True, start=start_batch * pc.batch_size)
        return DataLoader(ds, batch_sampler=BatchSampler(sampler, pc.batch_size, drop_last=False),
                          collate_fn=ppkt_collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    teacher_name = str(meta.get("name", cfg.teacher.name))
    teacher_layer = str(meta.get("layer", cfg.teacher.layer))
    tags = job_tags(cfg, "pretrain", method=method, seed=seed, uses_gt_labels="false", teacher=teacher_name,
                    teacher_layer=teacher_layer, pairs_per_batch=pc.ppkt.num_pairs, tau=pc.ppkt.tau,
                    point_source=pc.ppkt.points, num_views=pc.ppkt.frames_per_sample)
    fingerprint = run_fingerprint(cfg, method, seed, meta)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, f"pretrain-{method}-seed{seed}", tags, job_params(cfg)) as run:
        trainer = Trainer(
            model=model, loss_fn=ppkt_loss, optimizer=optimizer, scheduler=scheduler, make_loader=make_loader,
            steps_per_epoch=steps_per_epoch, epochs=pc.epochs, checkpoint_path=out_dir / "checkpoint" / "last.pt",
            fingerprint=fingerprint, checkpoint_every=pc.checkpoint_every, grad_clip=pc.grad_clip, amp=tc.amp,
            device=device, validate=None, on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch),
            progress=progress, crash_after_steps=crash_after_steps)
        history = trainer.fit()
        seconds = time.perf_counter() - t0

        backbone = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
        save_checkpoint(out_dir / "backbone.pt", {
            "format": BACKBONE_FORMAT, "kind": "backbone", "backbone": backbone, "method": method, "seed": seed,
            "fingerprint": fingerprint, "config_hash": config_hash(cfg), "uses_gt_labels": False,
            "teacher": meta})
        write_text(out_dir / "config.yaml", dump_yaml(cfg))
        steps = trainer.state.global_step
        summary = {
            "method": method, "seed": seed, "epochs": pc.epochs, "steps": steps, "scenes": len(ds),
            "train_seconds_this_process": seconds, "fingerprint": fingerprint, "teacher": meta,
            "cache_dir": str(cache), "point_source": pc.ppkt.points, "pairs_per_batch": pc.ppkt.num_pairs,
            "tau": pc.ppkt.tau, "history": history,
            "final": {k[len("train/"):]: v for k, v in (history[-1] if history else {}).items()
                      if k.startswith("train/")},
        }
        write_json(out_dir / "pretrain_log.json", summary)
        run.log_artifact(out_dir / "config.yaml")
        run.log_artifact(out_dir / "pretrain_log.json")
        if cfg.tracking.log_checkpoint:
            run.log_artifact(out_dir / "backbone.pt", "checkpoint")
    log.info("pre-trained %s seed %d: %d steps in %.1f s; final %s", method, seed, steps, seconds,
             json.dumps({k: round(v, 4) for k, v in summary["final"].items()}))
    return summary
