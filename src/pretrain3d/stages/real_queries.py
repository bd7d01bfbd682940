"""Image -> scene on real data (issue 11, item 7): the 7-Scenes fixture (``data.sevenscenes.root``) fused
into one scene from every ``frame_step``-th frame and added to the synthetic val repository; the frames
that were *not* fused are the image queries. The right answer is the real scene (its RGB images look
nothing like the procedural rooms, so finding it is the easy half); the pose from PnP + RANSAC on the
query's matches with the real scene's keypoints is compared with the sequence's real poses (metres).
A missing fixture is a recorded skip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_QUERIES = 16  # evenly spaced over the held-out frames: enough for a median, seconds on CPU


def real_image_queries(cfg, source, scene_ids: list[str], bank: np.ndarray, k: int, rule: str,
                       reproj_px: float) -> dict:
    """``scene_ids`` / ``bank`` (S, K, D): the synthetic repository the real scene joins."""
    from pretrain3d.data.frames import read_color, read_pose
    from pretrain3d.data.sevenscenes import fuse_sevenscenes, list_sevenscenes_frames, read_sevenscenes_intrinsics
    from pretrain3d.retrieval import metrics as rm
    from pretrain3d.retrieval.benchmark import pose_summary
    from pretrain3d.retrieval import search as rs
    from pretrain3d.retrieval.keypoints import select_keypoints

    sc = cfg.data.sevenscenes
    root = Path(sc.root)
    if not root.is_dir():
        reason = f"real RGB-D sequence not found at {root} (data.sevenscenes.root)"
        log.warning("real-data image queries skipped: %s", reason)
        return {"status": "skipped", "reason": reason}
    scene = fuse_sevenscenes(root, frame_step=sc.frame_step, voxel_size=sc.voxel_size)
    fused = {f.id for f in scene.frames}
    held = [f for f in list_sevenscenes_frames(root) if f.id not in fused]
    if not held:
        return {"status": "skipped", "reason": f"every frame of {root} is fused (data.sevenscenes.frame_step 1)"}
    held = [held[i] for i in np.unique(np.linspace(0, len(held) - 1, min(MAX_QUERIES, len(held))).astype(int))]
    ks = select_keypoints(f"real:{root.name}", np.asarray(scene.coord), source.point_features(scene), k, rule)
    all_ids = [*scene_ids, ks.scene_id]
    all_bank = np.concatenate([bank, rs.normalise(ks.desc)[None]])
    right = len(all_ids) - 1
    K = read_sevenscenes_intrinsics(root)
    ranks, poses = [], []
    for f in held:
        desc, uv = source.image_cells(read_color(f.color))
        ranks.append(rm.rank_of(rs.scores_against(desc, all_bank), right))
        est = rs.localise(desc, uv, ks.xyz, all_bank[right], K, reproj_px=reproj_px)
        poses.append(None if est is None else rs.pose_errors(est["pose"], read_pose(f.pose)))
    return {"status": "ok", "sequence": str(root), "repository_scenes": len(all_ids), "fused_frames": len(fused),
            "queries": len(ranks), "recall@1": rm.recall_at(ranks, 1), "mean_rank": float(np.mean(ranks)),
            "pose": pose_summary(poses)}
