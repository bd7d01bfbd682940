"""Fine-tuning stage: supervised semantic segmentation (method `scratch`, or from a pre-trained backbone)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash, dump_yaml
from pretrain3d.data.dataset import EpochSampler, EvalDataset, TrainDataset, collate, load_split
from pretrain3d.data.labels import SCANNET20_NAMES
from pretrain3d.engine.optim import build_optimizer, build_scheduler
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import Trainer, load_checkpoint, load_state_strict, save_checkpoint
from pretrain3d.evaluation.inference import evaluate_scenes
from pretrain3d.methods.semseg import semseg_loss
from pretrain3d.models.segmentor import build_segmentor
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run
from pretrain3d.tracking.provenance import data_hash

log = logging.getLogger(__name__)

MODEL_FORMAT = 1


def class_names(num_classes: int) -> list[str]:
    if num_classes == len(SCANNET20_NAMES):
        return list(SCANNET20_NAMES)
    return [f"class{i}" for i in range(num_classes)]


def run_fingerprint(cfg: Params, method: str, seed: int, init: str | None) -> str:
    """Identifies a training run: a checkpoint from any other run is never resumed."""
    parts = {
        "model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json"),
        "data": data_hash(cfg.data.processed_root), "method": method, "seed": seed,
        "init": _file_sha(init) if init else None,
    }
    return config_hash(parts)


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def finetune(cfg: Params, method: str, seed: int, out_dir: str | Path, init_backbone: str | None = None,
             progress: bool = True, crash_after_steps: int | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    seed_everything(seed, threads=tc.threads)
    device = resolve_device(tc.device)
    nc = cfg.data.num_classes

    train_scenes = load_split(cfg.data.processed_root, "train", nc)
    val_scenes = load_split(cfg.data.processed_root, "val", nc)
    train_ds = TrainDataset(train_scenes, tc.grid_size, tc.augment, tc.max_points)
    val_samples = [EvalDataset(val_scenes, tc.grid_size)[i] for i in range(len(val_scenes))]
    steps_per_epoch = math.ceil(len(train_ds) / tc.batch_size)

    model = build_segmentor(cfg.model, nc).to(device)
    if init_backbone:
        ck = load_checkpoint(init_backbone)
        load_state_strict(model.backbone, ck["backbone"], init_backbone)
        log.info("initialised the backbone from %s", init_backbone)
    optimizer = build_optimizer(model.parameters(), tc)
    scheduler = build_scheduler(optimizer, tc, tc.epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        sampler = EpochSampler(len(train_ds), seed, epoch, shuffle=True, start=start_batch * tc.batch_size)
        return DataLoader(train_ds, batch_sampler=BatchSampler(sampler, tc.batch_size, drop_last=False),
                          collate_fn=collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    names = class_names(nc)

    def validate(m) -> dict[str, float]:
        metrics, _ = evaluate_scenes(m, val_samples, nc, names, device)
        return {k: metrics[k] for k in ("mIoU", "mAcc", "allAcc")}

    tags = job_tags(cfg, "finetune", method=method, seed=seed, uses_gt_labels="false",
                    init_backbone=init_backbone or "none")
    fingerprint = run_fingerprint(cfg, method, seed, init_backbone)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, f"finetune-{method}-seed{seed}", tags, job_params(cfg)) as run:
        trainer = Trainer(
            model=model, loss_fn=semseg_loss, optimizer=optimizer, scheduler=scheduler, make_loader=make_loader,
            steps_per_epoch=steps_per_epoch, epochs=tc.epochs, checkpoint_path=out_dir / "checkpoint" / "last.pt",
            fingerprint=fingerprint, checkpoint_every=tc.checkpoint_every, grad_clip=tc.grad_clip, amp=tc.amp,
            device=device, validate=validate, val_every=tc.val_every,
            on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch), progress=progress,
            crash_after_steps=crash_after_steps)
        history = trainer.fit()
        seconds = time.perf_counter() - t0

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(out_dir / "model.pt", {
            "format": MODEL_FORMAT, "kind": "segmentor", "model": state,
            "backbone": {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
            "num_classes": nc, "method": method, "seed": seed, "fingerprint": fingerprint,
            "config_hash": config_hash(cfg)})
        write_text(out_dir / "config.yaml", dump_yaml(cfg))
        summary = {"method": method, "seed": seed, "epochs": tc.epochs, "steps": trainer.state.global_step,
                   "train_seconds_this_process": seconds, "fingerprint": fingerprint, "history": history,
                   "final_val": {k[4:]: v for k, v in history[-1].items() if k.startswith("val/")}}
        write_json(out_dir / "train_log.json", summary)
        run.log_artifact(out_dir / "config.yaml")
        run.log_artifact(out_dir / "train_log.json")
        if cfg.tracking.log_checkpoint:
            run.log_artifact(out_dir / "model.pt", "checkpoint")
    log.info("fine-tuned %s seed %d: %d steps in %.1f s; final val %s", method, seed,
             trainer.state.global_step, seconds, json.dumps(summary["final_val"]))
    return summary


def load_segmentor(cfg: Params, model_path: str | Path, device: torch.device):
    ck = load_checkpoint(model_path)
    if ck.get("format") != MODEL_FORMAT or ck.get("kind") != "segmentor":
        raise ValueError(f"{model_path}: not a pretrain3d segmentor checkpoint (format {ck.get('format')}, "
                         f"kind {ck.get('kind')})")
    if ck["num_classes"] != cfg.data.num_classes:
        raise ValueError(f"{model_path}: trained for {ck['num_classes']} classes but data.num_classes is "
                         f"{cfg.data.num_classes}")
    model = build_segmentor(cfg.model, cfg.data.num_classes)
    load_state_strict(model, ck["model"], str(model_path))
    return model.to(device).eval(), ck
