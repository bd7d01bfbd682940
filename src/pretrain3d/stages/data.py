"""Data stages: generate the embedded dataset, preprocess raw scenes, fuse 7-Scenes frames."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pretrain3d.atomic import atomic_dir, write_json
from pretrain3d.config import Params
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)


def generate(cfg: Params, run_name: str = "data/generate") -> Path:
    """Procedural rooms → raw ScanNet-like layout at data.raw_root (written atomically)."""
    from pretrain3d.data.synthetic import generate_dataset

    if cfg.data.dataset != "synthetic":
        raise ValueError(f"data.dataset is {cfg.data.dataset!r}: nothing to generate (generation is for 'synthetic')")
    s = cfg.data.synthetic
    out = Path(cfg.data.raw_root)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, run_name, job_tags(cfg, "generate"), job_params(cfg)) as run:
        with atomic_dir(out) as tmp:
            generate_dataset(tmp, num_train=s.num_train, num_val=s.num_val, seed=s.seed,
                             frames_per_scene=s.frames_per_scene, width=s.image_width, height=s.image_height,
                             points_per_m2=s.points_per_m2, workers=cfg.data.workers, progress=True,
                             rescans=s.rescans, domain=s.domain)
        run.log_metrics({"generate/seconds": time.perf_counter() - t0,
                         "generate/scenes": s.num_train + s.num_val * (1 + s.rescans)})
    log.info("generated %d scenes in %s (%.1f s)", s.num_train + s.num_val, out, time.perf_counter() - t0)
    return out


def preprocess(cfg: Params, dataset: str | None = None, raw_root: str | None = None,
               out_root: str | None = None, scenes: list[str] | None = None, run_name: str = "data/preprocess") -> Path:
    """Raw scenes of ``dataset`` (default data.dataset) → processed-scene contract.

    Without ``out_root`` the output is data.processed_root, replaced as a whole atomically (the
    pipeline's rule). With ``out_root`` (the CLI's --out-root) scenes are written into it one by
    one, each atomically, and a ScanNet manifest keeps the scenes of earlier runs.
    """
    dataset = dataset or cfg.data.dataset
    raw = Path(raw_root or cfg.data.raw_root)
    out = Path(out_root or cfg.data.processed_root)
    t0 = time.perf_counter()
    with job_run(cfg.tracking, run_name, job_tags(cfg, "preprocess", dataset=dataset), job_params(cfg)) as run:
        if out_root is not None:
            out.mkdir(parents=True, exist_ok=True)
            manifest = _ingest(cfg, dataset, raw, out, scenes, merge=True)
        else:
            with atomic_dir(out) as tmp:
                manifest = _ingest(cfg, dataset, raw, tmp, scenes, merge=False)
        run.set_tags({"data_hash": manifest.get("data_hash", "unknown")})
        run.log_metrics({"preprocess/seconds": time.perf_counter() - t0})
        run.log_artifact(out / "manifest.json")
    log.info("preprocessed %s from %s into %s (%.1f s)", dataset, raw, out, time.perf_counter() - t0)
    return out


def dataset_data(cfg: Params, name: str) -> Path:
    """One of ``multi_dataset.datasets`` (several datasets in one run, PPT): generated first when it is
    embedded, then preprocessed into its own processed_root, exactly like `data` is."""
    md = cfg.multi_dataset
    if name not in md.datasets:
        raise ValueError(f"unknown dataset {name!r}: multi_dataset.datasets has {sorted(md.datasets)}")
    sub = cfg.model_copy(update={"data": md.datasets[name]})
    if sub.data.dataset == "synthetic":
        generate(sub, run_name=f"data/generate/{name}")
    return preprocess(sub, run_name=f"data/preprocess/{name}")


def _ingest(cfg: Params, dataset: str, raw: Path, out: Path, scenes: list[str] | None, merge: bool) -> dict:
    d = cfg.data
    if dataset in ("synthetic", "scannet_like"):
        from pretrain3d.data.scannet_like import preprocess_scannet_like

        # the generator's rescans (data.synthetic.rescans) are a split of their own
        rescan = dataset == "synthetic" and (raw / "splits" / "rescan.txt").exists()
        # the raw root's meta.json names its generator domain (label space); a synthetic root must be
        # of data.synthetic.domain, and data.num_classes must fit that space (13 / 20 / 25)
        return preprocess_scannet_like(raw, out, workers=d.workers, progress=True, num_classes=d.num_classes,
                                       domain=d.synthetic.domain if dataset == "synthetic" else None,
                                       splits=("train", "val", "rescan") if rescan else ("train", "val"))
    if dataset == "scannet":
        from pretrain3d.data.scannet import ScanNetOptions, preprocess_scannet

        sc = d.scannet
        opts = ScanNetOptions(frame_step=sc.frame_step, export_frames=sc.export_frames, axis_align=sc.axis_align)
        return preprocess_scannet(raw, out, opts, labels_tsv=sc.labels_tsv, split_dir=sc.split_dir,
                                  splits=sc.splits, scenes=scenes or sc.scenes, workers=d.workers, merge=merge)
    if dataset == "scannet_npy":
        from pretrain3d.data.pointcept_npy import link_pointcept_scenes

        return link_pointcept_scenes(raw, out, splits=d.scannet.splits, num_classes=d.num_classes)
    if dataset == "s3dis":
        from pretrain3d.data.s3dis import preprocess_s3dis

        return preprocess_s3dis(raw, out, val_area=d.s3dis.val_area, policy=d.s3dis.malformed_lines,
                                workers=d.workers)
    raise ValueError(f"unknown dataset {dataset!r}")


def fuse_sevenscenes(root: str, out: str, frame_step: int, voxel_size: float) -> Path:
    from pretrain3d.data.sevenscenes import preprocess_sevenscenes

    t0 = time.perf_counter()
    preprocess_sevenscenes(root, out, frame_step=frame_step, voxel_size=voxel_size)
    log.info("fused 7-Scenes %s into %s (%.1f s)", root, out, time.perf_counter() - t0)
    return Path(out)


def write_schema(path: str) -> None:
    from pretrain3d.config import json_schema

    write_json(path, json_schema())
