"""The scene_queries step: index the val repository (val scenes + their rescans) with one feature source,
score the three query benchmarks (retrieval.benchmark), write ``metrics.json`` and a PNG per query type (``figures/``),
and record them in MLflow. The index it leaves (``<out>/index``, with its text head) answers
``pretrain3d query image|scene|text`` afterwards.

With the 7-Scenes fixture present, its held-out frames are also queried against the repository plus the
fused real scene (stages/real_queries.py; a recorded skip without it).

The text head is fitted on ground-truth labels of the train split (retrieval.language), so every run is
tagged ``uses_gt_labels=true`` with ``gt_labels_in=language_head``: the image and duplicate benchmarks do
not use labels.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.errors import DataError
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

REPOSITORY_SPLITS = ("val", "rescan")
FIGURES = ("image", "scene", "text")


def repository_splits(cfg: Params) -> list[str]:
    """The val split and, where the dataset has one, its rescan split: those with processed scenes."""
    from pretrain3d.data.scene import list_scenes

    return [split for split in REPOSITORY_SPLITS if list_scenes(cfg.data.processed_root, split)]


def repository_scenes(cfg: Params) -> list:
    """The scenes every query ranks (``repository_splits``)."""
    from pretrain3d.data.scene import load_split_scenes

    root = Path(cfg.data.processed_root)
    scenes = [s for split in repository_splits(cfg) for s in load_split_scenes(root, split, cfg.data.num_classes)]
    if not scenes:
        raise DataError(root / "val", "no processed val scenes: the scene repository is empty",
                        "run the preprocess step first")
    return scenes


def _image_queries(scenes: list, per_scene: int | None):
    for s in scenes:
        if s.frames is None:
            continue
        for f in range(len(s.frames) if per_scene is None else min(per_scene, len(s.frames))):
            yield {"scene": s.scene_id, "frame": f, "image": s.frames.read_color(f),
                   "intrinsics": np.asarray(s.frames[f].intrinsics), "pose": np.asarray(s.frames[f].pose)}


def _relevance(scenes: list, num_classes: int, min_points: int) -> np.ndarray:
    rel = np.zeros((len(scenes), num_classes), bool)
    for i, s in enumerate(scenes):
        seg = np.asarray(s.segment)
        counts = np.bincount(seg[(seg >= 0) & (seg < num_classes)], minlength=num_classes)
        rel[i] = counts >= min_points
    return rel


def score_queries(cfg: Params, source_name: str, seed: int, out_dir: str | Path, backbone: str | Path | None = None,
                  progress: bool = True) -> dict:
    from pretrain3d.engine.seed import resolve_device, seed_everything
    from pretrain3d.retrieval import benchmark as rb
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval.figures import query_figure, scene_thumbnail
    from pretrain3d.retrieval.search import normalise
    from pretrain3d.stages.real_queries import real_image_queries
    from pretrain3d.stages.scene_queries import build_source, class_text, fit_text_head_for, index_scenes

    q = cfg.queries
    out = Path(out_dir)
    seed_everything(seed, threads=cfg.train.threads)
    device = resolve_device(cfg.train.device)
    t0 = time.perf_counter()
    source = build_source(cfg, source_name, backbone, device)
    scenes = repository_scenes(cfg)
    by_id = {s.scene_id: s for s in scenes}
    index_dir = out / "index"
    if index_dir.exists():  # a rerun rebuilds the index as a whole: no scene of a former model survives
        shutil.rmtree(index_dir)
    summary = index_scenes(source, scenes, index_dir, q.keypoints, q.rule, progress=progress)
    idx = ri.load_index(index_dir, expect=source.fingerprint)
    xyz, bank = idx.xyz, normalise(idx.desc.astype(np.float32))
    seconds = {"index_per_scene": summary["seconds_per_scene"]}

    t = time.perf_counter()
    head = fit_text_head_for(cfg, source, index_dir, seed)["head"]
    seconds["text_head"] = time.perf_counter() - t

    t = time.perf_counter()
    image = rb.image_benchmark(idx.scene_ids, xyz, bank, _image_queries(scenes, q.queries_per_scene),
                               source.image_cells, shared_frame=cfg.data.dataset == "synthetic",
                               reproj_px=q.pnp_reprojection_px)
    seconds["per_image_query"] = (time.perf_counter() - t) / max(1, image["queries"])
    dup = rb.duplicate_benchmark(idx.scene_ids, bank)
    names, text = class_text(cfg, q.text_template)
    sentences = [q.text_template.format(n) for n in names]
    lang = rb.language_benchmark(idx.scene_ids, bank, head, text,
                                 _relevance([by_id[s] for s in idx.scene_ids], cfg.data.num_classes,
                                            q.min_class_points), names, sentences)
    t = time.perf_counter()
    real = real_image_queries(cfg, source, idx.scene_ids, bank, q.keypoints, q.rule, q.pnp_reprojection_px)
    seconds["real"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    result = {"source": source_name, "seed": seed, "backbone": None if backbone is None else str(backbone),
              "uses_gt_labels": True, "gt_labels_in": "language_head", "fingerprint": summary["fingerprint"],
              "repository": {"scenes": len(idx), "rooms": len({rb.room_key(s) for s in idx.scene_ids}),
                             "splits": repository_splits(cfg)},
              "image": image, "duplicates": dup, "language": lang, "real_image": real, "seconds": seconds}

    title = f"{source_name} seed {seed}"
    if image["examples"]:
        ex = image["examples"][0]
        frame = by_id[ex["query"]].frames.read_color(ex["frame"])
        query_figure(ex, by_id, lambda ax: (ax.imshow(frame), ax.set_xticks([]), ax.set_yticks([]),
                                            ax.set_xlabel(f"{ex['query']} frame {ex['frame']}", fontsize=8)),
                     f"image -> scene ({title}; its own capture left out)", out / "figures" / "image.png")
    if dup["examples"]:
        ex = dup["examples"][0]
        query_figure(ex, by_id, lambda ax: (scene_thumbnail(ax, by_id[ex["query"]]),
                                            ax.set_xlabel(ex["query"], fontsize=8)),
                     f"duplicate scenes ({title})", out / "figures" / "scene.png")
    if lang["examples"]:
        ex = lang["examples"][0]
        query_figure(ex, by_id, lambda ax: (ax.text(0.5, 0.5, f"\u201c{ex['query']}\u201d", ha="center", va="center",
                                                    wrap=True, fontsize=11), ax.axis("off")),
                     f"text -> scene ({title}; head fitted on GT labels)", out / "figures" / "text.png")
    (out / "figures").mkdir(parents=True, exist_ok=True)  # a declared output, even with no example to draw
    write_json(out / "metrics.json", result)

    tags = job_tags(cfg, "scene_queries", source=source_name, seed=seed, uses_gt_labels="true",
                    gt_labels_in="language_head", keypoint_rule=q.rule)
    with job_run(cfg.tracking, f"queries/{source_name}/seed{seed}", tags, job_params(cfg)) as run:
        run.log_metrics(flat_metrics(result))
        for name in ("metrics.json", *(f"{f}.png" for f in FIGURES)):
            run.log_artifact(out / name if name == "metrics.json" else out / "figures" / name, "queries")
    log.info("scene queries (%s, seed %d, %d scenes): image R@1 %.3f (chance %.3f), duplicates AP %.3f (chance %.3f), "
             "language mAP %.3f over %d classes (chance %.3f); %.1f s", source_name, seed, len(idx),
             image["recall@1"], image["chance@1"], dup["ap"], dup["chance"], lang["map"], lang["classes"],
             lang["chance"], seconds["total"])
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """MLflow keys of a scene-query result (``queries/...``)."""
    im, pose = result["image"], result["image"]["pose"]
    out = {"queries/image/recall@1": im["recall@1"], "queries/image/recall@5": im["recall@5"],
           "queries/image/chance@1": im["chance@1"], "queries/duplicates/ap": result["duplicates"]["ap"],
           "queries/duplicates/chance": result["duplicates"]["chance"], "queries/language/map": result["language"]["map"],
           "queries/language/chance": result["language"]["chance"],
           "queries/seconds/index_per_scene": result["seconds"]["index_per_scene"],
           "queries/seconds/per_image_query": result["seconds"]["per_image_query"]}
    if "rotation_deg_median" in pose:
        out["queries/image/pose_rotation_deg_median"] = pose["rotation_deg_median"]
        out["queries/image/pose_translation_m_median"] = pose["translation_m_median"]
    real = result.get("real_image", {})
    if real.get("status") == "ok":
        out["queries/real/recall@1"] = real["recall@1"]
        out["queries/real/pose_rotation_deg_median"] = real["pose"]["rotation_deg_median"]
        out["queries/real/pose_translation_m_median"] = real["pose"]["translation_m_median"]
    return {k: v for k, v in out.items() if v is not None and np.isfinite(v)}
