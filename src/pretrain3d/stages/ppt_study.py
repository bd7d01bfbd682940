"""The multi-dataset experiment of the PPT paper, on the `multi_dataset` datasets (step ``ppt_study``).

One job per (variant, seed); a variant is ``single-<dataset>`` (one model on that dataset alone: shared
BatchNorm, a linear head), ``single_language-<dataset>`` (the same with the language-guided head: the
control that separates the head's effect from joint training's), ``joint`` (one model on every dataset: shared BatchNorm, one linear head over
the union of class names, so differently named classes are negatives of each other), ``ppt`` (PDNorm
+ language-guided categorical alignment) or ``ppt_decoupled`` (PDNorm + a linear head per dataset).
Every variant trains ``ppt_study.epochs`` passes over its data with fine-tuning's optimiser, batch size
and augmentation (``train.*``) on scenes cropped to ``ppt_study.max_points`` voxels, then is scored on the val split of each dataset it trained on.

Outputs in ``out_dir``: ``metrics.json`` ({dataset: mIoU, mAcc, allAcc, per-class IoU}, the variant's
datasets, steps, seconds) and an MLflow run ``ppt_study-<variant>-seed<k>`` tagged with the datasets it
saw and ``uses_gt_labels=true`` (every variant is supervised).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch.utils.data import DataLoader

from pretrain3d.atomic import write_json
from pretrain3d.config import Params, config_hash
from pretrain3d.data.multi_dataset import MultiDatasetBatches, multi_collate
from pretrain3d.engine.optim import build_optimizer, build_scheduler
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import Trainer
from pretrain3d.methods.ppt import (ConditionedSegmentor, build_ppt_model, class_names_of, dataset_config,
                                   multi_train_dataset, ppt_loss)
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run
from pretrain3d.workflow.steps import study_datasets

log = logging.getLogger(__name__)

# variant -> (head, PDNorm); single-<dataset> is single
VARIANTS = {"single": ("decoupled", False), "single_language": ("language", False), "joint": ("joint", False), "ppt": ("language", True),
            "ppt_decoupled": ("decoupled", True)}


def parse_variant(cfg: Params, variant: str) -> tuple[str, list[str], str, bool]:
    """(kind, datasets, head, pdnorm) of a job name."""
    kind, _, dataset = variant.partition("-")
    single = kind.startswith("single")
    if kind not in VARIANTS or single != bool(dataset):
        raise ValueError(f"unknown ppt_study variant {variant!r} (single-<dataset> | single_language-<dataset> | "
                         "joint | ppt | ppt_decoupled)")
    names = [dataset] if single else study_datasets(cfg)
    unknown = [d for d in names if d not in study_datasets(cfg)]
    if unknown:
        raise ValueError(f"ppt_study variant {variant!r}: unknown dataset {unknown[0]!r} ({study_datasets(cfg)})")
    head, pdnorm = VARIANTS[kind]
    return kind, names, head, pdnorm


def run_variant(cfg: Params, variant: str, seed: int, out_dir: str | Path, progress: bool = True) -> dict:
    from pretrain3d.data.dataset import EvalDataset, load_split
    from pretrain3d.evaluation.inference import evaluate_scenes
    from pretrain3d.tracking.provenance import data_hash

    kind, names, head, pdnorm = parse_variant(cfg, variant)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, epochs = cfg.train, cfg.ppt_study.epochs
    if cfg.ppt_study.max_points is not None:
        tc = tc.model_copy(update={"max_points": cfg.ppt_study.max_points})
    seed_everything(seed, threads=tc.threads)
    device = resolve_device(tc.device)
    dataset, hashes = multi_train_dataset(cfg, names, tc.augment, tc.max_points)
    model = build_ppt_model(cfg, names, head, pdnorm).to(device)
    loops = {n: cfg.multi_dataset.loops.get(n, 1) for n in names}
    sizes = dataset.sizes()
    steps_per_epoch = MultiDatasetBatches.num_batches(sizes, tc.batch_size, loops)
    optimizer = build_optimizer(model.parameters(), tc)
    scheduler = build_scheduler(optimizer, tc, epochs * steps_per_epoch)

    def make_loader(epoch: int, start_batch: int):
        return DataLoader(dataset, batch_sampler=MultiDatasetBatches(sizes, tc.batch_size, seed, epoch, loops,
                                                                     start=start_batch),
                          collate_fn=multi_collate, num_workers=tc.num_workers, pin_memory=device.type == "cuda")

    fingerprint = config_hash({"variant": variant, "seed": seed, "model": cfg.model.model_dump(mode="json"),
                               "train": tc.model_dump(mode="json"), "study": cfg.ppt_study.model_dump(mode="json"),
                               "multi_dataset": cfg.multi_dataset.model_dump(mode="json"), "data": hashes, "loops": loops})
    tags = job_tags(cfg, "ppt_study", variant=variant, seed=seed, uses_gt_labels="true", datasets=",".join(names),
                    head=head, pdnorm=str(pdnorm).lower())
    t0 = time.perf_counter()
    with job_run(cfg.tracking, f"ppt_study/{variant}/seed{seed}", tags, job_params(cfg)) as run:
        trainer = Trainer(model=model, loss_fn=ppt_loss, optimizer=optimizer, scheduler=scheduler,
                          make_loader=make_loader, steps_per_epoch=steps_per_epoch, epochs=epochs,
                          checkpoint_path=out_dir / "checkpoint" / "last.pt", fingerprint=fingerprint,
                          checkpoint_every=tc.checkpoint_every, grad_clip=tc.grad_clip, amp=tc.amp, device=device,
                          on_epoch_end=lambda epoch, m: run.log_metrics(m, step=epoch), progress=progress)
        history = trainer.fit()
        per_dataset = {}
        for name in names:
            d = dataset_config(cfg, name)
            val = load_split(d.processed_root, "val", d.num_classes)
            samples = [EvalDataset(val, tc.grid_size)[i] for i in range(len(val))]
            metrics, _ = evaluate_scenes(ConditionedSegmentor(model, name), samples, d.num_classes,
                                         class_names_of(d), device)
            per_dataset[name] = {"mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "allAcc": metrics["allAcc"],
                                 "iou_per_class": metrics.get("iou_per_class"), "val_scenes": len(val),
                                 "data_hash": data_hash(d.processed_root)}
            run.log_metrics({f"val/{name}/mIoU": metrics["mIoU"], f"val/{name}/allAcc": metrics["allAcc"]})
        seconds = time.perf_counter() - t0
        result = {"variant": variant, "kind": kind, "seed": seed, "datasets": names, "head": head, "pdnorm": pdnorm,
                  "epochs": epochs, "max_points": tc.max_points, "steps": trainer.state.global_step, "train_scenes": sizes, "seconds": seconds,
                  "uses_gt_labels": True, "fingerprint": fingerprint, "metrics": per_dataset,
                  "final": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("train/")}}
        write_json(out_dir / "metrics.json", result)
        run.log_artifact(out_dir / "metrics.json")
        trainer.discard_checkpoint()
    log.info("ppt_study %s seed %d: %s (%.1f s)", variant, seed,
             {n: round(m["mIoU"], 4) for n, m in per_dataset.items()}, seconds)
    return result

