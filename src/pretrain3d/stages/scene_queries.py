"""Scene repository stages (ConDense part 2): index scenes as keypoints, and answer image / scene
(duplicate) / text queries against an index. Feature sources: ``retrieval.sources`` (the fused-teacher
baseline, and every method with ``query_source`` in methods.registry).

Every index stores a fingerprint (source, backbone file hash, teacher, keypoint rule, K); a query with
another model or settings is refused (``retrieval.index.load_index``). A text query also needs the
index's text head (``text_head.npz``, fitted on ground-truth labels: ``retrieval.language``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from pretrain3d.atomic import atomic_path, write_json
from pretrain3d.config import Params
from pretrain3d.errors import DataError
from pretrain3d.retrieval.sources import build_source

log = logging.getLogger(__name__)

__all__ = ["build_source", "read_image", "index_scenes", "index_split", "fit_text_head_for", "load_text_head",
           "query_image", "query_scene", "query_text"]

TEXT_HEAD = "text_head.npz"


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image file as (H, W, 3) uint8; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(path, f"not a readable image ({type(e).__name__}: {e})", "pass a PNG or JPEG file") from e


def index_scenes(source, scenes: list, out_dir: str | Path, k: int = 128, rule: str = "fps",
                 progress: bool = False) -> dict:
    """Index ``scenes`` (processed) into ``out_dir``; returns a summary with the time per scene."""
    from tqdm import tqdm

    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval.keypoints import select_keypoints

    out = Path(out_dir)
    t0 = time.perf_counter()
    for s in tqdm(scenes, desc=f"index ({source.name})", unit="scene", disable=not progress):
        ri.write_scene(out, select_keypoints(s.scene_id, np.asarray(s.coord), source.point_features(s), k, rule))
    fp = {**source.fingerprint, "rule": rule, "k": int(k)}
    ri.write_index(out, fp, [s.scene_id for s in scenes])
    seconds = time.perf_counter() - t0
    log.info("indexed %d scenes into %s (%s, K=%d, %s): %.2f s per scene", len(scenes), out, source.name, k, rule,
             seconds / max(1, len(scenes)))
    return {"scenes": len(scenes), "seconds_per_scene": seconds / max(1, len(scenes)), "fingerprint": fp}


def index_split(cfg: Params, source, split: str, out_dir: str | Path, k: int = 128, rule: str = "fps") -> dict:
    """Index every processed scene of ``split`` into ``out_dir``."""
    from pretrain3d.data.scene import load_split_scenes

    scenes = load_split_scenes(cfg.data.processed_root, split, cfg.data.num_classes)
    if not scenes:
        raise DataError(Path(cfg.data.processed_root) / split, "no processed scenes to index")
    return index_scenes(source, scenes, out_dir, k, rule)


def fit_text_head_for(cfg: Params, source, out_dir: str | Path, seed: int = 0) -> dict:
    """Fit the source's text head on the labelled train split (``retrieval.language``; uses ground-truth
    labels) and store it in the index folder with the class names, encoder and template it was made for."""
    from pretrain3d.data.labels import IGNORE_INDEX
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.retrieval.language import fit_text_head

    q = cfg.queries
    scenes = load_split_scenes(cfg.data.processed_root, "train", cfg.data.num_classes)
    if not scenes:
        raise DataError(Path(cfg.data.processed_root) / "train", "no labelled train scenes to fit the text head on")
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for s in scenes:
        seg = np.asarray(s.segment)
        idx = np.flatnonzero(seg != IGNORE_INDEX)
        idx = rng.choice(idx, min(len(idx), q.head_points_per_scene), replace=False) if len(idx) else idx
        X.append(source.point_features(s)[idx])
        Y.append(seg[idx])
    names, text = class_text(cfg, "{}")
    head = fit_text_head(np.concatenate(X), np.concatenate(Y), text, epochs=q.head_epochs, seed=seed)
    path = Path(out_dir) / TEXT_HEAD
    meta = {"fingerprint": {**source.fingerprint}, "classes": names, "text_encoder": cfg.queries.text_encoder,
            "uses_gt_labels": True, "train_scenes": len(scenes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, head=head, meta=np.array(json.dumps(meta)))
    return {"head": head, **meta}


def class_text(cfg: Params, template: str) -> tuple[list[str], np.ndarray]:
    """The dataset's class names and their text embeddings through ``template`` (unit rows)."""
    from pretrain3d.data.labels import dataset_class_names
    from pretrain3d.teachers.text import build_text_encoder, class_embeddings

    q = cfg.queries
    names = list(dataset_class_names(cfg.data.dataset, cfg.data.num_classes))
    enc = build_text_encoder(q.text_encoder, q.text_encoder_weights)
    return names, class_embeddings(enc, names, [template])


def load_text_head(index_dir: str | Path, fingerprint: dict) -> tuple[np.ndarray, dict]:
    """The index's text head (``fit_text_head_for``); missing, unreadable or made for another source: DataError."""
    path = Path(index_dir) / TEXT_HEAD
    if not path.exists():
        raise DataError(path, "this index has no text head (language queries need one)",
                        "build the index with `pretrain3d index --text-head` or the scene_queries step")
    try:
        with np.load(path) as z:
            head, meta = z["head"].astype(np.float32), json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path, f"not a readable text head ({type(e).__name__}: {e})", "rebuild the index") from e
    diff = sorted(k for k, v in fingerprint.items() if meta.get("fingerprint", {}).get(k) != v)
    if diff:
        raise DataError(path, f"text head was fitted for another model ({', '.join(diff)} differ)", "rebuild the index")
    return head, meta


def query_image(source, index_dir: str | Path, image: np.ndarray, top: int = 5,
                intrinsics: np.ndarray | None = None) -> dict:
    """Rank the index's scenes for an RGB image; with ``intrinsics`` (3, 3), the camera pose in the best one."""
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval import search as rs

    idx = ri.load_index(index_dir, expect=source.fingerprint)
    desc, uv = source.image_cells(image)
    scores = rs.scores_against(desc, idx.desc)
    order = np.argsort(-scores, kind="stable")[:top]
    out = {"top": [(idx.scene_ids[i], float(scores[i])) for i in order]}
    if intrinsics is not None:
        b = int(order[0])
        pose = rs.localise(desc, uv, idx.xyz[b], idx.desc[b], intrinsics)
        out["pose"] = None if pose is None else pose["pose"].tolist()
    return out


def query_scene(source, index_dir: str | Path, scene_dir: str | Path, top: int = 5) -> dict:
    """Rank the index's scenes by similarity to a processed scene (``scene_dir``): the duplicate-scene query.
    The scene is condensed with the index's own rule and K; the score is the symmetric set similarity."""
    from pretrain3d.data.scene import load_processed_scene
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval import search as rs
    from pretrain3d.retrieval.keypoints import select_keypoints

    idx = ri.load_index(index_dir, expect=source.fingerprint)
    scene = load_processed_scene(scene_dir, allow_unlabelled=True)
    ks = select_keypoints(scene.scene_id, np.asarray(scene.coord), source.point_features(scene),
                          int(idx.fingerprint["k"]), idx.fingerprint["rule"])
    scores = rs.scores_against(ks.desc, idx.desc, symmetric=True)
    order = np.argsort(-scores, kind="stable")[:top]
    return {"scene": scene.scene_id, "top": [(idx.scene_ids[i], float(scores[i])) for i in order]}


def query_text(cfg: Params, source_fingerprint: dict, index_dir: str | Path, text: str, top: int = 5) -> dict:
    """Rank the index's scenes for a sentence through the index's text head (ground-truth-label aligned)."""
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval.language import text_scores
    from pretrain3d.teachers.text import build_text_encoder, class_embeddings

    if not text.strip():
        raise ValueError("the text query is empty")
    idx = ri.load_index(index_dir, expect=source_fingerprint)
    head, meta = load_text_head(index_dir, source_fingerprint)
    enc = build_text_encoder(meta["text_encoder"], cfg.queries.text_encoder_weights)
    q = class_embeddings(enc, [text], ["{}"])[0]
    scores = text_scores(q, idx.desc, head)
    order = np.argsort(-scores, kind="stable")[:top]
    return {"text": text, "uses_gt_labels": True, "top": [(idx.scene_ids[i], float(scores[i])) for i in order]}
