"""Pre-training stage: train a backbone with a 2D->3D method on the TRAIN split, hand it to fine-tuning.

Inputs: the processed scenes (``data.processed_root``, train split only -- never val); PPKT also
reads the 2D feature cache of the configured teacher (``stages.features.features_dir(cfg)``; the
teacher itself is never built here). Outputs, each written atomically, in ``out_dir``:

* ``backbone.pt``: ``{"format": 1, "kind": "backbone", "backbone": <SpUNet state dict, the keys of
  Segmentor.backbone>, "method", "seed", "fingerprint", "config_hash", "uses_gt_labels": False,
  "teacher": <the cache's meta.json or None>}`` -- fine-tuning loads ``["backbone"]`` strictly;
  PonderV2 adds ``"renderer"`` (volume UNet + neural field state) so the report can render views;
* ``pretrain_log.json``: per-epoch history and the run summary;
* ``checkpoint/last.pt``: the resumable training state (exact resume, see engine.trainer);
* PonderV2 only: ``render.png`` / ``render.json``, a held-out val view rendered beside the real
  frame (also logged to MLflow).

Settings: optimiser and schedule from ``pretrain.*``; voxel size, device, AMP, threads and data
workers from ``train.*`` (shared with fine-tuning, so the backbone sees the same voxels).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

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
METHODS = ("ppkt", "ponderv2", "ponderv2_semantic")


@dataclass
class MethodSetup:
    """What differs between pre-training methods; the loop, checkpoints and tracking are shared."""

    dataset: Dataset
    collate: Callable
    model: torch.nn.Module
    loss_fn: Callable
    uses_gt_labels: bool
    tags: dict[str, Any]
    fingerprint: dict[str, Any]
    checkpoint: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def run_fingerprint(cfg: Params, method: str, seed: int, extra: dict) -> str:
    """Identifies a pre-training run: a checkpoint from any other run is never resumed."""
    return config_hash({
        "model": cfg.model.model_dump(mode="json"), "pretrain": cfg.pretrain.model_dump(mode="json"),
        "grid_size": cfg.train.grid_size, "data": data_hash(cfg.data.processed_root),
        "method": method, "seed": seed, **extra,
    })


def _ppkt_setup(cfg: Params, scenes: list) -> MethodSetup:
    from pretrain3d.methods.ppkt import PPKTDataset, PPKTModel, ppkt_collate, ppkt_loss
    from pretrain3d.stages.features import features_dir
    from pretrain3d.teachers.cache import read_cache_meta

    pc = cfg.pretrain
    cache = features_dir(cfg)
    meta = read_cache_meta(cache)
    model = PPKTModel(build_backbone(cfg.model), int(meta["dim"]), pc.ppkt.embed_dim, tau=pc.ppkt.tau,
                      mask_false_negatives=pc.ppkt.pair_sampling == "masked")
    return MethodSetup(
        dataset=PPKTDataset(scenes, cache, pc, cfg.train.grid_size), collate=ppkt_collate, model=model,
        loss_fn=ppkt_loss, uses_gt_labels=False,
        tags={"teacher": str(meta.get("name", cfg.teacher.name)),
              "teacher_layer": str(meta.get("layer", cfg.teacher.layer)),
              "pairs_per_batch": pc.ppkt.num_pairs, "tau": pc.ppkt.tau, "point_source": pc.ppkt.points,
              "num_views": pc.ppkt.frames_per_sample, "pair_sampling": pc.ppkt.pair_sampling},
        fingerprint={"teacher": meta}, checkpoint={"teacher": meta},
        summary={"teacher": meta, "cache_dir": str(cache), "point_source": pc.ppkt.points,
                 "pairs_per_batch": pc.ppkt.num_pairs, "pair_sampling": pc.ppkt.pair_sampling, "tau": pc.ppkt.tau})


def class_text_embeddings(cfg: Params) -> tuple[torch.Tensor, dict]:
    """Text embeddings of the class names (cached per encoder, templates and class list)."""
    from pretrain3d.data.labels import dataset_class_names
    from pretrain3d.teachers.text import build_text_encoder, class_embeddings

    pv = cfg.pretrain.ponderv2
    names = dataset_class_names(cfg.data.dataset, cfg.data.num_classes)
    encoder = build_text_encoder(pv.text_encoder, weights=pv.text_encoder_weights)
    emb = class_embeddings(encoder, names, pv.text_templates, cache_dir="data/text_embeddings")
    return torch.as_tensor(emb, dtype=torch.float32), {"text_encoder": pv.text_encoder, "classes": names,
                                                       "templates": list(pv.text_templates)}


def _ponder_setup(cfg: Params, method: str, scenes: list) -> MethodSetup:
    from pretrain3d.methods.ponderv2 import PonderDataset, PonderV2Model, ponder_collate, ponder_loss

    pv = cfg.pretrain.ponderv2
    semantic = method == "ponderv2_semantic"
    text, text_meta = class_text_embeddings(cfg) if semantic else (None, {})
    model = PonderV2Model(build_backbone(cfg.model), pv, text_embeddings=text)
    tags = {"views": pv.views, "rays_per_view": pv.rays_per_view,
            "samples": f"{pv.samples_uniform}+{pv.samples_importance}",
            "volume_resolution": "x".join(map(str, pv.volume_resolution)), "render_semantic": str(semantic).lower()}
    if semantic:
        tags["text_encoder"] = pv.text_encoder
    return MethodSetup(
        dataset=PonderDataset(scenes, cfg.pretrain, cfg.train.grid_size, semantic=semantic), collate=ponder_collate,
        model=model, loss_fn=ponder_loss, uses_gt_labels=semantic, tags=tags, fingerprint=text_meta,
        checkpoint={"teacher": None, "text": text_meta or None}, summary={"ponderv2": pv.model_dump(mode="json")})


def build_method(cfg: Params, method: str, scenes: list) -> MethodSetup:
    if method == "ppkt":
        return _ppkt_setup(cfg, scenes)
    if method in ("ponderv2", "ponderv2_semantic"):
        return _ponder_setup(cfg, method, scenes)
    raise ValueError(f"pre-training method {method!r} is not implemented here (available: "
                     f"{', '.join(METHODS)}; 'scratch' is a random initialisation: stages.init_backbone)")


def renderer_state(model: torch.nn.Module) -> dict:
    """PonderV2's pre-training head (volume UNet + field), saved beside the backbone for renders."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def pretrain(cfg: Params, method: str, seed: int, out_dir: str | Path, progress: bool = True,
             crash_after_steps: int | None = None) -> dict:
    from pretrain3d.methods.ppkt import load_pretrain_scenes

    if method not in METHODS:
        build_method(cfg, method, [])  # raises the explanatory error
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pc, tc = cfg.pretrain, cfg.train
    seed_everything(seed, threads=tc.threads)
    device = resolve_device(tc.device)

    scenes = load_pretrain_scenes(cfg.data.processed_root, "train", cfg.data.num_classes)
    setup = build_method(cfg, method, scenes)
    ds, model = setup.dataset, setup.model.to(device)
    steps_per_epoch = math.ceil(len(ds) / pc.batch_size)
    optimizer = build_optimizer(model.parameters(), pc)
    scheduler = build_scheduler(optimizer, pc, pc.epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        sampler = EpochSampler(len(ds), seed, epoch, shuffle=True, start=start_batch * pc.batch_size)
        return DataLoader(ds, batch_sampler=BatchSampler(sampler, pc.batch_size, drop_last=False),
                          collate_fn=setup.collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    uses_gt = "true" if setup.uses_gt_labels else "false"
    tags = job_tags(cfg, "pretrain", method=method, seed=seed, uses_gt_labels=uses_gt, **setup.tags)
    fingerprint = run_fingerprint(cfg, method, seed, setup.fingerprint)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, f"pretrain-{method}-seed{seed}", tags, job_params(cfg)) as run:
        trainer = Trainer(
            model=model, loss_fn=setup.loss_fn, optimizer=optimizer, scheduler=scheduler, make_loader=make_loader,
            steps_per_epoch=steps_per_epoch, epochs=pc.epochs, checkpoint_path=out_dir / "checkpoint" / "last.pt",
            fingerprint=fingerprint, checkpoint_every=pc.checkpoint_every, grad_clip=pc.grad_clip, amp=tc.amp,
            device=device, validate=None, on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch),
            progress=progress, crash_after_steps=crash_after_steps)
        history = trainer.fit()
        seconds = time.perf_counter() - t0

        backbone = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
        ckpt = {"format": BACKBONE_FORMAT, "kind": "backbone", "backbone": backbone, "method": method, "seed": seed,
                "fingerprint": fingerprint, "config_hash": config_hash(cfg), "uses_gt_labels": setup.uses_gt_labels,
                **setup.checkpoint}
        if method.startswith("ponderv2"):
            ckpt["renderer"] = renderer_state(model)
        steps = trainer.state.global_step
        summary = {
            "method": method, "seed": seed, "epochs": pc.epochs, "steps": steps,
            "steps_this_process": trainer.steps_this_process, "scenes": len(ds),
            "uses_gt_labels": setup.uses_gt_labels, "train_seconds_this_process": seconds,
            "fingerprint": fingerprint, **setup.summary, "history": history,
            "final": {k[len("train/"):]: v for k, v in (history[-1] if history else {}).items()
                      if k.startswith("train/")},
        }
        if method.startswith("ponderv2"):
            summary["render"] = _render_heldout(cfg, model, out_dir, device, f"{method} seed {seed}")
            run.log_metrics({"render/depth_abs_err_median_m": summary["render"]["depth_abs_err_median"]})
            run.log_artifact(out_dir / "render.png")
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


def _render_heldout(cfg: Params, model, out_dir: Path, device, title: str) -> dict:
    """Render the first view of the first val scene (never seen in pre-training) beside the real frame."""
    from pretrain3d.methods.ppkt import load_pretrain_scenes
    from pretrain3d.stages.render import render_scene_view

    scene = load_pretrain_scenes(cfg.data.processed_root, "val", cfg.data.num_classes)[0]
    return render_scene_view(cfg, model, scene, 0, out_dir / "render.png", out_dir / "render.json", device,
                             title=f"{title}: held-out val scene {scene.scene_id}")
