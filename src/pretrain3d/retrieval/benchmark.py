"""The three scene-query benchmarks on one repository of keypoint sets (ConDense part 2, issue 11).

The repository is a set of scenes, some of which are captures of the same room (the embedded
generator's rescans, ScanNet's ``sceneXXXX_00/_01``); ``room_key`` names the room of a scene id.

* **Image -> scene**: each query is an RGB frame of a repository scene that has another capture of its
  room in the repository. Its own scene is left out of the ranking (its frames built it), so the right
  answer is another capture: a frame the indexed scene never saw, with moved objects and a new camera
  path. Recall@1/@5 over queries; chance@1 = (other captures) / (scenes - 1). The pose is estimated in
  the right scene (2D-3D mutual matches, ``search.estimate_pose``) and compared with the frame's
  pose when captures share a world frame (``shared_frame``: true for the embedded rescans; ScanNet's
  rescans are registered separately, so there it is skipped and says so).
* **Duplicates**: the symmetric set similarity of every unordered scene pair, average precision of
  "same room" over all pairs; chance = the fraction of positive pairs.
* **Language**: for each class present in some but not all scenes (``relevance``), the text query's
  scores over the repository (``language.text_scores``) and its average precision; mAP over classes.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from pretrain3d.retrieval import metrics as rm
from pretrain3d.retrieval import search as rs

__all__ = ["room_key", "pose_summary", "image_benchmark", "duplicate_benchmark", "language_benchmark"]

_RESCAN = re.compile(r"^(?P<room>.+)_r\d+$")          # embedded generator: synth_val_0003_r1
_SCANNET = re.compile(r"^(?P<room>scene\d{4})_\d{2}$")  # ScanNet: scene0011_01


def room_key(scene_id: str) -> str:
    """The room a scene id captures: ``synth_val_0003_r1`` -> ``synth_val_0003``, ``scene0011_01`` ->
    ``scene0011``; any other id is a room of its own."""
    for pat in (_SCANNET, _RESCAN):
        m = pat.match(scene_id)
        if m:
            return m.group("room")
    return scene_id


def pose_summary(errors: list[tuple[float, float] | None]) -> dict:
    """Medians of (rotation deg, translation m) pose errors; None entries are queries with no pose found."""
    found = [e for e in errors if e is not None]
    med = (lambda v: float(np.median(v)) if v else None)
    return {"evaluated": len(found), "failed": len(errors) - len(found),
            "rotation_deg_median": med([r for r, _ in found]), "translation_m_median": med([t for _, t in found])}


def image_benchmark(scene_ids: list[str], xyz: np.ndarray, bank: np.ndarray, queries: Iterable[dict], cells_fn,
                    *, shared_frame: bool, reproj_px: float = 12.0, examples: int = 1) -> dict:
    """``queries``: dicts with ``scene`` (its id), ``image`` (H, W, 3) uint8, ``intrinsics`` (3, 3), ``pose``
    (4, 4) camera-to-world, ``frame`` (a label). ``cells_fn(image) -> (desc, uv)``. ``xyz`` (S, K, 3) and
    ``bank`` (S, K, D) are the repository's keypoints. Queries whose room has no other capture are counted
    as skipped."""
    rooms = [room_key(s) for s in scene_ids]
    pos = {s: i for i, s in enumerate(scene_ids)}
    ranks, poses, skipped, shown = [], [], 0, []
    chance = []
    for q in queries:
        own = pos[q["scene"]]
        right = [i for i, r in enumerate(rooms) if r == rooms[own] and i != own]
        if not right:
            skipped += 1
            continue
        desc, uv = cells_fn(q["image"])
        scores = rs.scores_against(desc, bank)
        scores[own] = -np.inf  # its own capture is not an answer
        rank = min(rm.rank_of(scores, i) for i in right)
        ranks.append(rank)
        chance.append(len(right) / (len(scene_ids) - 1))
        if shared_frame:
            est = rs.localise(desc, uv, xyz[right[0]], bank[right[0]], q["intrinsics"], reproj_px=reproj_px)
            poses.append(None if est is None else rs.pose_errors(est["pose"], q["pose"]))
        if len(shown) < examples:
            order = [int(k) for k in np.argsort(-scores, kind="stable")[:3]]
            shown.append({"query": q["scene"], "frame": q.get("frame"), "right": [scene_ids[i] for i in right],
                          "top": [(scene_ids[k], float(scores[k])) for k in order]})
    return {"queries": len(ranks), "skipped": skipped, "recall@1": rm.recall_at(ranks, 1),
            "recall@5": rm.recall_at(ranks, 5), "chance@1": float(np.mean(chance)) if chance else float("nan"),
            "mean_rank": float(np.mean(ranks)) if ranks else float("nan"),
            "pose": (pose_summary(poses) if shared_frame else
                     {"skipped": "the repository's captures of a room do not share a world frame"}),
            "examples": shown}


def duplicate_benchmark(scene_ids: list[str], bank: np.ndarray, examples: int = 1) -> dict:
    """Average precision of "same room" over every unordered pair of the repository (S, K, D)."""
    rooms = [room_key(s) for s in scene_ids]
    S = len(scene_ids)
    sim = np.stack([rs.scores_against(bank[a], bank, symmetric=True) for a in range(S)])
    a, b = np.triu_indices(S, 1)
    rel = np.array([rooms[i] == rooms[j] for i, j in zip(a, b)], bool)
    shown = []
    for q in [i for i in range(S) if any(rooms[j] == rooms[i] for j in range(S) if j != i)][:examples]:
        s = sim[q].copy()
        s[q] = -np.inf
        order = [int(k) for k in np.argsort(-s, kind="stable")[:3]]
        shown.append({"query": scene_ids[q], "right": [scene_ids[j] for j in range(S) if j != q and rooms[j] == rooms[q]],
                      "top": [(scene_ids[k], float(s[k])) for k in order]})
    return {"pairs": int(len(rel)), "positives": int(rel.sum()), "ap": rm.average_precision(sim[a, b], rel),
            "chance": float(rel.mean()) if len(rel) else float("nan"), "examples": shown}


def language_benchmark(scene_ids: list[str], bank: np.ndarray, head: np.ndarray, text: np.ndarray,
                       relevance: np.ndarray, names: list[str], queries: list[str], examples: int = 1) -> dict:
    """``text`` (C, T) query embeddings, ``relevance`` (S, C) bool: scene s contains class c. Classes that
    every or no scene contains have no ranking to score and are left out (listed)."""
    from pretrain3d.retrieval.language import text_scores

    aps, chance, per_class, left_out, shown = [], [], {}, [], []
    for c, name in enumerate(names):
        rel = relevance[:, c]
        if not rel.any() or rel.all():
            left_out.append(name)
            continue
        scores = text_scores(text[c], bank, head)
        per_class[name] = rm.average_precision(scores, rel)
        aps.append(per_class[name])
        chance.append(float(rel.mean()))
        if len(shown) < examples:
            order = [int(k) for k in np.argsort(-scores, kind="stable")[:3]]
            shown.append({"query": queries[c], "right": [scene_ids[i] for i in np.flatnonzero(rel)],
                          "top": [(scene_ids[k], float(scores[k])) for k in order]})
    return {"classes": len(aps), "map": float(np.mean(aps)) if aps else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan"), "per_class_ap": per_class,
            "left_out": left_out, "examples": shown}
