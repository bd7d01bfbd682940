"""Evaluation stage: every original val point, metrics JSON, confusion PNG, GT-vs-prediction render."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.data.dataset import EvalDataset, load_split
from pretrain3d.data.labels import SCANNET20_PALETTE
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.evaluation.inference import evaluate_scenes
from pretrain3d.evaluation.plots import plot_confusion, render_segmentation
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.stages.finetune import class_names, load_segmentor
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

METRIC_PREFIX = "val"  # MLflow keys: val/mIoU, val/mAcc, val/allAcc, val/iou/<class>


def evaluate(cfg: Params, model_path: str | Path, out_dir: str | Path, method: str, seed: int,
             protocol: str = "full") -> dict:
    out_dir = Path(out_dir)
    seed_everything(seed, threads=cfg.train.threads)
    device = resolve_device(cfg.train.device)
    nc = cfg.data.num_classes
    names = class_names(nc)
    t0 = time.perf_counter()
    model, ck = load_segmentor(cfg, model_path, device)
    scenes = load_split(cfg.data.processed_root, "val", nc)
    ds = EvalDataset(scenes, cfg.train.grid_size)
    metrics, cm, preds = evaluate_scenes(model, (ds[i] for i in range(len(ds))), nc, names, device,
                                         keep_predictions=True)
    result = {
        "method": method, "protocol": protocol, "seed": seed, "split": "val",
        "uses_gt_labels": bool(ck.get("uses_gt_labels", False)), "num_scenes": len(scenes),
        "num_points": int(cm.sum()), "model": str(model_path), "fingerprint": ck.get("fingerprint"),
        **metrics,
    }
    render_id = cfg.eval.render_scene or scenes[0].scene_id
    by_id = {s.scene_id: s for s in scenes}
    if render_id not in by_id:
        raise ValueError(f"eval.render_scene {render_id!r} is not a val scene (have {sorted(by_id)[:5]}...)")
    scene = by_id[render_id]
    plot_confusion(cm, names, out_dir / "confusion.png")
    render_segmentation(scene.coord, scene.segment, preds[render_id], SCANNET20_PALETTE[:nc]
                        if nc <= len(SCANNET20_PALETTE) else None, out_dir / "render.png",
                        title=f"{method} ({protocol}) seed {seed} — {render_id}", class_names=names)
    write_json(out_dir / "metrics.json", result)

    tags = job_tags(cfg, "evaluate", method=method, seed=seed, protocol=protocol,
                    uses_gt_labels=str(result["uses_gt_labels"]).lower())
    with job_run(cfg.tracking, f"evaluate-{method}-{protocol}-seed{seed}", tags, job_params(cfg)) as run:
        flat = {f"{METRIC_PREFIX}/{k}": metrics[k] for k in ("mIoU", "mAcc", "allAcc") if metrics[k] is not None}
        flat.update({f"{METRIC_PREFIX}/iou/{c}": v for c, v in metrics["iou_per_class"].items() if v is not None})
        run.log_metrics(flat)
        for name in ("metrics.json", "confusion.png", "render.png"):
            run.log_artifact(out_dir / name)
    log.info("evaluated %s (%s) seed %d on %d val scenes: mIoU %.4f mAcc %.4f allAcc %.4f (%.1f s)", method,
             protocol, seed,
             len(scenes), metrics["mIoU"], metrics["mAcc"], metrics["allAcc"], time.perf_counter() - t0)
    return result
