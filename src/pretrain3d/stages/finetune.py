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
from pretrain3d.engine.distributed import ShardedBatches
from pretrain3d.data.labels import dataset_class_names
from pretrain3d.data.protocols import limited_annotations, limited_reconstructions
from pretrain3d.engine import distributed
from pretrain3d.engine.optim import build_optimizer, build_scheduler
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import CheckpointError, Trainer, load_checkpoint, load_state_strict, save_checkpoint
from pretrain3d.errors import DataError
from pretrain3d.evaluation.inference import evaluate_scenes
from pretrain3d.methods.linear_probe import train_probe
from pretrain3d.methods.semseg import semseg_loss
from pretrain3d.models.segmentor import build_segmentor, check_backbone_architecture
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run
from pretrain3d.tracking.provenance import data_hash

log = logging.getLogger(__name__)

MODEL_FORMAT = 1


def class_names(num_classes: int, dataset: str) -> list[str]:
    """The class names of ``dataset`` (data.dataset): S3DIS 13, ScanNet200, ScanNet-20, else ``class<i>``."""
    return dataset_class_names(dataset, num_classes)


PROTOCOLS = ("full", "la", "lr", "probe")


def run_fingerprint(cfg: Params, method: str, seed: int, init: str | None, protocol: str = "full") -> str:
    """Identifies a training run: a checkpoint from any other run is never resumed."""
    parts = {
        "model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json"),
        "data": data_hash(cfg.data.processed_root), "method": method, "seed": seed,
        "init": _file_sha(init) if init else None,
        "protocol": protocol, "protocols": cfg.protocols.model_dump(mode="json") if protocol != "full" else None,
    }
    bench = protocol_file(cfg, protocol)
    if bench:  # only then, so that runs without a benchmark file keep their fingerprints (and resume)
        if not Path(bench).is_file():
            key = f"data.scannet.{protocol}_file"
            raise DataError(bench, f"{key} not found", f"the data-efficient benchmark file of protocol {protocol}; "
                            f"fix {key} or set it to null")
        parts["benchmark_file_sha256"] = _sha256(bench)  # its content: the same path may hold a new file
    return config_hash(parts)


def protocol_file(cfg: Params, protocol: str) -> str | None:
    """The data-efficient benchmark file a protocol reads, if configured: data.scannet.la_file (la),
    data.scannet.lr_file (lr); never one for full or probe."""
    return {"la": cfg.data.scannet.la_file, "lr": cfg.data.scannet.lr_file}.get(protocol) or None


def apply_protocol(cfg: Params, protocol: str, scenes: list) -> list:
    """The training scenes (and labels) a data-efficient protocol allows: the benchmark's files
    when data.scannet.lr_file / la_file are set, else our fixed random selections."""
    from pretrain3d.data import efficient
    from pretrain3d.errors import DataError

    lr_file, la_file = cfg.data.scannet.lr_file, cfg.data.scannet.la_file
    if protocol == "lr":
        ids = [s.scene_id for s in scenes]
        if lr_file:
            keep = set(efficient.select_scenes(ids, efficient.read_lr_file(lr_file), lr_file))
        else:
            keep = set(limited_reconstructions(ids, cfg.protocols.lr_fraction))
        scenes = [s for s in scenes if s.scene_id in keep]
    elif protocol == "la":
        chosen = efficient.read_la_file(la_file) if la_file else None
        for s in scenes:
            if chosen is None:
                s.segment = limited_annotations(s.segment, cfg.protocols.la_points, s.scene_id)
            elif s.scene_id not in chosen:
                raise DataError(la_file, f"no labelled points listed for training scene {s.scene_id!r}")
            else:
                s.segment = efficient.keep_labelled_points(s.segment, chosen[s.scene_id], s.scene_id, la_file)
    elif protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (valid: {', '.join(PROTOCOLS)})")
    return scenes


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_sha(path: str) -> str:
    return _sha256(path)[:16]


def finetune(cfg: Params, method: str, seed: int, out_dir: str | Path, init_backbone: str | None = None,
             protocol: str = "full", progress: bool = True, crash_after_steps: int | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if protocol == "probe":
        tc = tc.model_copy(update={"epochs": cfg.protocols.probe_epochs, "lr": cfg.protocols.probe_lr})
    seed_everything(seed, threads=tc.threads)
    device = distributed.setup(tc.distributed.backend, resolve_device(tc.device))
    try:
        return _finetune(cfg, tc, method, seed, out_dir, init_backbone, protocol, progress, crash_after_steps, device)
    finally:
        distributed.teardown()


def _finetune(cfg: Params, tc, method: str, seed: int, out_dir: Path, init_backbone: str | None, protocol: str,
              progress: bool, crash_after_steps: int | None, device: torch.device) -> dict:
    main = distributed.is_main()
    parallel = distributed.world_size() > 1 and protocol != "probe"
    if protocol == "probe" and not main:
        return {}  # the probe (seconds, frozen features) runs in process 0 alone
    nc = cfg.data.num_classes

    train_scenes = apply_protocol(cfg, protocol, load_split(cfg.data.processed_root, "train", nc))
    val_scenes = load_split(cfg.data.processed_root, "val", nc)
    # LA: a voxel keeps a labelled point when it holds one (protocols.la_voxel_label, see data/protocols.py)
    prefer_labelled = protocol == "la" and cfg.protocols.la_voxel_label == "labelled"
    train_ds = TrainDataset(train_scenes, tc.grid_size, tc.augment, tc.max_points, prefer_labelled=prefer_labelled)
    labelled_per_scene = sum(int((s.segment >= 0).sum()) for s in train_scenes) / len(train_scenes)
    val_samples = [EvalDataset(val_scenes, tc.grid_size)[i] for i in range(len(val_scenes))]
    steps_per_epoch = math.ceil(len(train_ds) / tc.batch_size)

    model = build_segmentor(cfg.model, nc)
    uses_gt_labels = "false"
    pretrain_datasets = "none"
    if init_backbone:
        ck = load_checkpoint(init_backbone)
        if ck.get("kind") != "backbone":
            raise CheckpointError(f"{init_backbone}: not a backbone checkpoint (kind {ck.get('kind')!r})")
        check_backbone_architecture(ck.get("architecture"), cfg.model, init_backbone)
        load_state_strict(model.backbone, ck["backbone"], init_backbone)
        uses_gt_labels = str(ck.get("uses_gt_labels", False)).lower()
        # the datasets its pre-training saw (multi-dataset methods record them; others saw the target's train split)
        seen = ck.get("datasets", [cfg.multi_dataset.target])
        pretrain_datasets = ",".join(seen) if seen else "none"
        log.info("initialised the backbone from %s (%s, seed %s)", init_backbone, ck.get("method"), ck.get("seed"))
    if protocol == "probe":
        model.freeze_backbone()
    if parallel:
        distributed.per_process_batch(tc.batch_size)
        if tc.distributed.sync_bn:
            model = distributed.convert_batchnorm(model)
    model = model.to(device)
    if parallel:
        distributed.broadcast_state(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], tc)
    scheduler = build_scheduler(optimizer, tc, tc.epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        sampler = EpochSampler(len(train_ds), seed, epoch, shuffle=True, start=start_batch * tc.batch_size)
        batches = BatchSampler(sampler, tc.batch_size, drop_last=False)
        if parallel:  # this process's share of every global batch
            batches = ShardedBatches(batches, distributed.rank(), distributed.world_size())
        return DataLoader(train_ds, batch_sampler=batches,
                          collate_fn=collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    names = class_names(nc, cfg.data.dataset)

    def validate(m) -> dict[str, float]:
        metrics, _ = evaluate_scenes(m, val_samples, nc, names, device)
        return {k: metrics[k] for k in ("mIoU", "mAcc", "allAcc")}

    # uses_gt_labels: whether the *pre-training* saw ground-truth labels (fine-tuning always does).
    tags = job_tags(cfg, "finetune", method=method, seed=seed, protocol=protocol, uses_gt_labels=uses_gt_labels,
                    init_backbone=init_backbone or "none", pretrain_datasets=pretrain_datasets,
                    train_scenes=len(train_scenes),
                    labelled_points=int(sum(int((s.segment >= 0).sum()) for s in train_scenes)))
    fingerprint = run_fingerprint(cfg, method, seed, init_backbone, protocol)
    t0 = time.perf_counter()
    trainer = None  # the probe has no resumable state
    params = {**job_params(cfg), "labelled_points_per_scene": labelled_per_scene}
    tracking = cfg.tracking if main else cfg.tracking.model_copy(update={"enabled": False})
    with job_run(tracking, f"finetune/{method}/{protocol}/seed{seed}", tags, params) as run:
        if protocol == "probe":
            # Frozen features are computed once (seconds); see methods/linear_probe.py.
            train_eval = EvalDataset(train_scenes, tc.grid_size)
            history = train_probe(model.backbone, model.head, [train_eval[i] for i in range(len(train_eval))],
                                  cfg.protocols.probe_features, tc.epochs, tc.lr, tc.weight_decay, seed, device)
            history[-1].update({f"val/{k}": v for k, v in validate(model).items()})
            for h in history:
                run.log_metrics(h, step=h["epoch"])
            steps = int(history[-1]["train/steps"])
        else:
            trainer = Trainer(
                model=model, loss_fn=semseg_loss, optimizer=optimizer, scheduler=scheduler, make_loader=make_loader,
                steps_per_epoch=steps_per_epoch, epochs=tc.epochs, checkpoint_path=out_dir / "checkpoint" / "last.pt",
                fingerprint=fingerprint, checkpoint_every=tc.checkpoint_every, grad_clip=tc.grad_clip, amp=tc.amp,
                device=device, validate=validate, val_every=tc.val_every,
                on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch), progress=progress,
                crash_after_steps=crash_after_steps)
            history = trainer.fit()
            steps = trainer.state.global_step
            if not main:
                return {"method": method, "protocol": protocol, "seed": seed, "rank": distributed.rank()}
        steps_here = trainer.steps_this_process if trainer is not None else steps
        # How many labelled points reached the loss: labelled voxels per training sample and step,
        # averaged over the run (LA: at most la_points; see data/protocols.py).
        per_epoch = [h["train/labelled_voxels_per_sample"] for h in history if "train/labelled_voxels_per_sample" in h]
        labelled_voxels = sum(per_epoch) / len(per_epoch) if per_epoch else None
        if labelled_voxels is not None:
            run.log_metrics({"train/labelled_voxels_per_sample_mean": labelled_voxels})
            run.set_tags({"labelled_voxels_per_sample": f"{labelled_voxels:.1f}"})
        seconds = time.perf_counter() - t0

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(out_dir / "model.pt", {
            "format": MODEL_FORMAT, "kind": "segmentor", "model": state,
            "backbone": {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
            "num_classes": nc, "method": method, "protocol": protocol, "seed": seed, "fingerprint": fingerprint,
            "uses_gt_labels": uses_gt_labels == "true", "config_hash": config_hash(cfg)})
        write_text(out_dir / "config.yaml", dump_yaml(cfg))
        summary = {"method": method, "protocol": protocol, "seed": seed, "epochs": tc.epochs, "steps": steps,
                   "steps_this_process": steps_here, "train_seconds_this_process": seconds,
                   "fingerprint": fingerprint,
                   "labelled_points_per_scene": labelled_per_scene,
                   "labelled_voxels_per_sample": labelled_voxels,
                   "voxel_label": "labelled" if prefer_labelled else "random", "history": history,
                   "final_val": {k[4:]: v for k, v in history[-1].items() if k.startswith("val/")}}
        write_json(out_dir / "train_log.json", summary)
        run.log_artifact(out_dir / "config.yaml")
        run.log_artifact(out_dir / "train_log.json")
        if cfg.tracking.log_checkpoint:
            run.log_artifact(out_dir / "model.pt", "checkpoint")
        if trainer is not None:
            trainer.discard_checkpoint()  # outputs complete: a rerun must train, not resume
    log.info("fine-tuned %s (%s) seed %d: %d steps in %.1f s; final val %s", method, protocol, seed,
             steps, seconds, json.dumps(summary["final_val"]))
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
