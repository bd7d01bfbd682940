"""Evaluation stage: every original val point, metrics JSON, confusion PNG, GT-vs-prediction render;
plus the ScanNet benchmark format (export of predictions / ground truth, and its official scoring)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.data.dataset import SceneArrays, load_split
from pretrain3d.data.labels import dataset_palette
from pretrain3d.data.scene import list_scenes, load_processed_scene
from pretrain3d.engine.seed import resolve_device, seed_everything
from pretrain3d.engine.trainer import CheckpointError, load_checkpoint
from pretrain3d.errors import ConfigError, DataError
from pretrain3d.evaluation import scannet_benchmark as sb
from pretrain3d.evaluation.inference import predict_scenes, score_predictions
from pretrain3d.evaluation.plots import plot_confusion, render_segmentation
from pretrain3d.evaluation.tta import make_views
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.stages.finetune import class_names, load_segmentor
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

METRIC_PREFIX = "val"  # MLflow keys: val/mIoU, val/mAcc, val/allAcc, val/iou/<class>


def _tta_views(cfg: Params):
    t = cfg.eval.tta
    return make_views(t.rotations_z, t.scales, t.flips) if t.enabled else None


def _check_benchmark_classes(cfg: Params) -> None:
    if cfg.data.num_classes != sb.NUM_CLASSES:
        raise ConfigError(f"the ScanNet benchmark format needs the 20 ScanNet classes; data.num_classes is "
                          f"{cfg.data.num_classes}")


def evaluate_models(cfg: Params, model_paths: list[str | Path], method: str) -> list[dict]:
    """Evaluate several models of one method in one process (the workflow's evaluate job): the val
    split is loaded once and each model's results go to its own folder (beside ``model.pt``), with
    one MLflow run each, exactly as :func:`evaluate` writes them. Protocol and seed come from each
    checkpoint; a checkpoint of another method is an error."""
    scenes = load_split(cfg.data.processed_root, "val", cfg.data.num_classes)
    results = []
    for path in model_paths:
        meta = load_checkpoint(path)
        if meta.get("method") != method or meta.get("protocol") is None or meta.get("seed") is None:
            raise CheckpointError(f"{path}: a segmentor of method {meta.get('method')!r} (protocol "
                                  f"{meta.get('protocol')!r}, seed {meta.get('seed')!r}); expected method {method!r}")
        results.append(evaluate(cfg, path, Path(path).parent, method, int(meta["seed"]), protocol=meta["protocol"],
                                val_scenes=scenes))
    return results


def evaluate(cfg: Params, model_path: str | Path, out_dir: str | Path, method: str, seed: int,
             protocol: str = "full", export_dir: str | Path | None = None,
             val_scenes: list[SceneArrays] | None = None) -> dict:
    """``export_dir``: also write the val predictions as ScanNet ``<scene>.txt`` (NYU40 ids);
    ``val_scenes``: the val split already loaded (several models evaluated in one process)."""
    out_dir = Path(out_dir)
    if export_dir is not None:
        _check_benchmark_classes(cfg)
    seed_everything(seed, threads=cfg.train.threads)
    device = resolve_device(cfg.train.device)
    nc = cfg.data.num_classes
    names = class_names(nc, cfg.data.dataset)
    t0 = time.perf_counter()
    model, ck = load_segmentor(cfg, model_path, device)
    scenes = val_scenes if val_scenes is not None else load_split(cfg.data.processed_root, "val", nc)
    by_id = {s.scene_id: s for s in scenes}
    views = _tta_views(cfg)
    stats: dict = {}
    t_pred = time.perf_counter()
    predictions = predict_scenes(model, scenes, cfg.train.grid_size, device, views, cfg.eval.tta.fragments, stats)
    metrics, cm, preds = score_predictions(((sid, p, by_id[sid].segment) for sid, p in predictions), nc, names,
                                           keep_predictions=True)
    pred_seconds = time.perf_counter() - t_pred
    result = {
        "method": method, "protocol": protocol, "seed": seed, "split": "val",
        "uses_gt_labels": bool(ck.get("uses_gt_labels", False)), "num_scenes": len(scenes),
        "num_points": int(cm.sum()), "model": str(model_path), "fingerprint": ck.get("fingerprint"),
        "tta": {"enabled": views is not None, "views": len(views) if views else 1,
                "fragments": bool(views is not None and cfg.eval.tta.fragments),
                "forward_passes": int(sum(stats["forward_passes"])),
                "seconds_per_scene": pred_seconds / max(len(scenes), 1)},
        **metrics,
    }
    render_id = cfg.eval.render_scene or scenes[0].scene_id
    if render_id not in by_id:
        raise ValueError(f"eval.render_scene {render_id!r} is not a val scene (have {sorted(by_id)[:5]}...)")
    scene = by_id[render_id]
    plot_confusion(cm, names, out_dir / "confusion.png")
    render_segmentation(scene.coord, scene.segment, preds[render_id], dataset_palette(cfg.data.dataset, nc),
                        out_dir / "render.png",
                        title=f"{method} ({protocol}) seed {seed} — {render_id}", class_names=names)
    if export_dir is not None:
        sb.write_scene_dir(export_dir, {sid: sb.prediction_to_nyu40(p) for sid, p in preds.items()})
    write_json(out_dir / "metrics.json", result)

    tags = job_tags(cfg, "evaluate", method=method, seed=seed, protocol=protocol,
                    uses_gt_labels=str(result["uses_gt_labels"]).lower())
    with job_run(cfg.tracking, f"evaluate/{method}/{protocol}/seed{seed}", tags, job_params(cfg)) as run:
        flat = {f"{METRIC_PREFIX}/{k}": metrics[k] for k in ("mIoU", "mAcc", "allAcc") if metrics[k] is not None}
        flat.update({f"{METRIC_PREFIX}/iou/{c}": v for c, v in metrics["iou_per_class"].items() if v is not None})
        run.log_metrics(flat)
        for name in ("metrics.json", "confusion.png", "render.png"):
            run.log_artifact(out_dir / name)
    log.info("evaluated %s (%s) seed %d on %d val scenes%s: mIoU %.4f mAcc %.4f allAcc %.4f (%.1f s)", method,
             protocol, seed, len(scenes),
             f" with TTA ({len(views)} views, {result['tta']['forward_passes']} passes)" if views else "",
             metrics["mIoU"], metrics["mAcc"], metrics["allAcc"], time.perf_counter() - t0)
    return result


# ----------------------------------------------------------------------------- ScanNet benchmark format
def _load_scenes(root: str | Path, split: str, nc: int, need_labels: bool) -> list[SceneArrays]:
    """The split's scenes; without ``need_labels`` an unlabelled scene (ScanNet test) gets all -1."""
    if need_labels:
        return load_split(root, split, nc)
    dirs = list_scenes(root, split)
    if not dirs:
        raise DataError(Path(root) / split, "no processed scenes found",
                        "run the preprocess stage first, or check data.processed_root and --split")
    scenes = []
    for d in dirs:
        s = load_processed_scene(d, num_classes=nc, load_frames=False, allow_unlabelled=True)
        scenes.append(SceneArrays(s.scene_id, s.coord.astype(np.float64), s.color.astype(np.float64),
                                  s.normal.astype(np.float64), s.segment.astype(np.int64)))
    return scenes


def export_benchmark(cfg: Params, split: str = "val", pred_dir: str | Path | None = None,
                     gt_dir: str | Path | None = None, model_path: str | Path | None = None) -> dict:
    """Write ScanNet-format ``<scene>.txt`` files for every scene of ``split``: the model's
    predictions (TTA per ``eval.tta``) into ``pred_dir``, the ground truth (segment20 → NYU40,
    ignore → 0) into ``gt_dir``."""
    if pred_dir is None and gt_dir is None:
        raise ValueError("nothing to export: give a prediction and/or a ground-truth folder")
    if pred_dir is not None and model_path is None:
        raise ValueError("exporting predictions needs a model")
    _check_benchmark_classes(cfg)
    nc = cfg.data.num_classes
    scenes = _load_scenes(cfg.data.processed_root, split, nc, need_labels=gt_dir is not None)
    summary: dict = {"split": split, "num_scenes": len(scenes)}
    if gt_dir is not None:
        sb.write_scene_dir(gt_dir, {s.scene_id: sb.segment20_to_nyu40(s.segment) for s in scenes})
        summary["gt_dir"] = str(gt_dir)
        log.info("wrote ground truth of %d %s scenes to %s", len(scenes), split, gt_dir)
    if pred_dir is not None:
        seed_everything(0, threads=cfg.train.threads)
        device = resolve_device(cfg.train.device)
        model, _ = load_segmentor(cfg, model_path, device)
        views = _tta_views(cfg)
        stats: dict = {}
        t0 = time.perf_counter()
        preds = {sid: sb.prediction_to_nyu40(p) for sid, p in
                 predict_scenes(model, scenes, cfg.train.grid_size, device, views, cfg.eval.tta.fragments, stats)}
        sb.write_scene_dir(pred_dir, preds)
        summary.update(pred_dir=str(pred_dir), forward_passes=int(sum(stats["forward_passes"])),
                       seconds=time.perf_counter() - t0)
        log.info("wrote predictions of %d %s scenes to %s (%s, %.1f s)", len(scenes), split, pred_dir,
                 f"TTA {len(views)} views" if views else "single pass", summary["seconds"])
    return summary


def eval_benchmark(fmt: str, gt_dir: str | Path, pred_dir: str | Path, json_out: str | Path | None = None) -> dict:
    """Score a folder of predictions against a folder of ground truth with the official semantics;
    prints the table, writes the JSON when asked."""
    if fmt != "scannet":
        raise ValueError(f"unknown benchmark format {fmt!r}")
    result = sb.evaluate_dirs(gt_dir, pred_dir).to_dict()
    print(sb.format_table(result))
    if json_out is not None:
        write_json(json_out, result)
    return result
