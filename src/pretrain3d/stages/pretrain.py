"""Pre-training stage: train a backbone with a 2D->3D method on the TRAIN split, hand it to fine-tuning.

The method is a plug-in (methods.registry): its module builds the dataset, model and loss
(``build``); this stage owns the loop, checkpoints, outputs and tracking and names no method.
Inputs: the processed scenes (``data.processed_root``, train split only -- never val) and what the
method's registry line says it needs (e.g. PPKT: the 2D feature cache). Outputs, each written
atomically, in ``out_dir``:

* ``backbone.pt``: ``{"format": 1, "kind": "backbone", "backbone": <SpUNet state dict, the keys of
  Segmentor.backbone>, "method", "seed", "fingerprint", "config_hash", "uses_gt_labels",
  "teacher": <teacher meta or None>, **the method's extras}`` -- fine-tuning loads ``["backbone"]``
  strictly; extras are what the method saves beside it (PonderV2: ``"renderer"``, volume UNet + field,
  so the report can render views);
* ``pretrain_log.json``: per-epoch history and the run summary;
* ``checkpoint/last.pt``: the resumable training state (exact resume, see engine.trainer), deleted
  once the outputs are complete;
* the method's held-out check (``MethodSpec.after_training``; PonderV2: ``render.png`` /
  ``render.json``, a val view rendered beside the real frame), also logged to MLflow.

Settings: optimiser and schedule from ``pretrain.*``; voxel size, device, AMP, threads and data
workers from ``train.*`` (shared with fine-tuning, so the backbone sees the same voxels).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader

from pretrain3d.atomic import write_json, write_text
from pretrain3d.config import Params, config_hash, dump_yaml
from pretrain3d.data.dataset import EpochSampler
from pretrain3d.engine import distributed
from pretrain3d.engine.distributed import ShardedBatches
from pretrain3d.engine.optim import build_optimizer, build_scheduler
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import Trainer, save_checkpoint
from pretrain3d.methods import registry
from pretrain3d.methods.plugin import AfterTraining, MethodSetup
from pretrain3d.methods.registry import MethodSpec
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run
from pretrain3d.tracking.provenance import data_hash

log = logging.getLogger(__name__)

BACKBONE_FORMAT = 1


def run_fingerprint(cfg: Params, method: str, seed: int, extra: dict) -> str:
    """Identifies a pre-training run: a checkpoint from any other run is never resumed."""
    return config_hash({
        "model": cfg.model.model_dump(mode="json"), "pretrain": cfg.pretrain.model_dump(mode="json"),
        "grid_size": cfg.train.grid_size, "data": data_hash(cfg.data.processed_root),
        "method": method, "seed": seed, **extra,
    })


def trained_spec(method: str) -> MethodSpec:
    """The registry entry of a method this stage trains (scratch is stages.init_backbone)."""
    spec = registry.spec(method)
    if spec.plugin is None:
        raise ValueError(f"pre-training method {method!r} is not trained here (it is made by {spec.stage}; "
                         f"trained methods: {', '.join(registry.trained_method_names())})")
    return spec


def build_method(cfg: Params, method: str, scenes: list) -> MethodSetup:
    """The method's plug-in: ``<plugin>.build(cfg, method, scenes)``."""
    return importlib.import_module(trained_spec(method).plugin).build(cfg, method, scenes)


def pretrain(cfg: Params, method: str, seed: int, out_dir: str | Path, progress: bool = True,
             crash_after_steps: int | None = None) -> dict:
    spec = trained_spec(method)  # an unknown or untrained method fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pc, tc = cfg.pretrain, cfg.train
    seed_everything(seed, threads=tc.threads)
    device = distributed.setup(tc.distributed.backend, resolve_device(tc.device))
    try:
        return _pretrain(cfg, spec, method, seed, out_dir, progress, crash_after_steps, device)
    finally:
        distributed.teardown()


def _pretrain(cfg: Params, spec: MethodSpec, method: str, seed: int, out_dir: Path, progress: bool,
              crash_after_steps: int | None, device: torch.device) -> dict:
    from pretrain3d.data.scene import load_split_scenes

    pc, tc = cfg.pretrain, cfg.train
    main, parallel = distributed.is_main(), distributed.world_size() > 1
    scenes = load_split_scenes(cfg.data.processed_root, "train", cfg.data.num_classes)
    setup = build_method(cfg, method, scenes)
    model = setup.model
    if parallel:
        distributed.per_process_batch(pc.batch_size, "pretrain.batch_size")
        if tc.distributed.sync_bn:
            model = distributed.convert_batchnorm(model)
    ds, model = setup.dataset, model.to(device)
    if parallel:
        distributed.broadcast_state(model)
        distributed.reseed_process(seed)  # rays, pairs and masks drawn independently per process
    steps_per_epoch = setup.steps_per_epoch or math.ceil(len(ds) / pc.batch_size)
    optimizer = build_optimizer(model.parameters(), pc)
    scheduler = build_scheduler(optimizer, pc, pc.epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        if setup.batches is not None:  # the method's own batching (several datasets)
            batch_sampler = setup.batches(seed, epoch, start_batch)
        else:
            sampler = EpochSampler(len(ds), seed, epoch, shuffle=True, start=start_batch * pc.batch_size)
            batch_sampler = BatchSampler(sampler, pc.batch_size, drop_last=False)
        if parallel:  # this process's share of every global batch
            batch_sampler = ShardedBatches(batch_sampler, distributed.rank(), distributed.world_size())
        return DataLoader(ds, batch_sampler=batch_sampler,
                          collate_fn=setup.collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    uses_gt = "true" if spec.uses_gt_labels else "false"
    tags = job_tags(cfg, "pretrain", method=method, seed=seed, uses_gt_labels=uses_gt, **setup.tags)
    fingerprint = run_fingerprint(cfg, method, seed, setup.fingerprint)
    t0 = time.perf_counter()
    tracking = cfg.tracking if main else cfg.tracking.model_copy(update={"enabled": False})
    with job_run(tracking, f"pretrain/{method}/seed{seed}", tags, job_params(cfg)) as run:
        trainer = Trainer(
            model=model, loss_fn=setup.loss_fn, optimizer=optimizer, scheduler=scheduler, make_loader=make_loader,
            steps_per_epoch=steps_per_epoch, epochs=pc.epochs, checkpoint_path=out_dir / "checkpoint" / "last.pt",
            fingerprint=fingerprint, checkpoint_every=pc.checkpoint_every, grad_clip=pc.grad_clip, amp=tc.amp,
            device=device, validate=None, on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch),
            progress=progress, crash_after_steps=crash_after_steps)
        history = trainer.fit()
        seconds = time.perf_counter() - t0
        if not main:  # process 0 writes the outputs
            return {"method": method, "seed": seed, "rank": distributed.rank()}

        backbone = setup.export_backbone(model) if setup.export_backbone else \
            {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
        ckpt = {"format": BACKBONE_FORMAT, "kind": "backbone", "backbone": backbone, "method": method, "seed": seed,
                "fingerprint": fingerprint, "config_hash": config_hash(cfg), "uses_gt_labels": spec.uses_gt_labels,
                **setup.checkpoint, **(setup.save_extras(model) if setup.save_extras else {})}
        steps = trainer.state.global_step
        summary = {
            "method": method, "seed": seed, "epochs": pc.epochs, "steps": steps,
            "steps_this_process": trainer.steps_this_process, "scenes": len(ds),
            "uses_gt_labels": spec.uses_gt_labels, "train_seconds_this_process": seconds,
            "fingerprint": fingerprint, **setup.summary, "history": history,
            "final": {k[len("train/"):]: v for k, v in (history[-1] if history else {}).items()
                      if k.startswith("train/")},
        }
        if spec.after_training:  # the method's held-out check (render, feature PCA...), beside backbone.pt
            summary.update(registry.resolve(spec.after_training)(
                AfterTraining(cfg, model, out_dir, device, run, method, seed)))
        save_checkpoint(out_dir / "backbone.pt", ckpt)
        write_text(out_dir / "config.yaml", dump_yaml(cfg))
        write_json(out_dir / "pretrain_log.json", summary)
        run.log_artifact(out_dir / "config.yaml")
        run.log_artifact(out_dir / "pretrain_log.json")
        if cfg.tracking.log_checkpoint:
            run.log_artifact(out_dir / "backbone.pt", "checkpoint")
        trainer.discard_checkpoint()  # outputs complete: a rerun must train, not resume
    log.info("pre-trained %s seed %d: %d steps in %.1f s; final %s", method, seed, steps, seconds,
             json.dumps({k: round(v, 4) for k, v in summary["final"].items()}))
    return summary

