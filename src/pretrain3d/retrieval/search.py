"""Queries against a repository of scenes condensed to keypoints (``retrieval.keypoints``).

Everything here reads keypoints only -- K positions and unit descriptors per scene -- never dense
per-point features, so a query costs O(query rows x scenes x K x D) multiply-adds, chunked over scenes.

* **Set similarity** (``set_similarity``): for two descriptor sets A and B, the mean over A's rows of
  the best cosine in B (a one-sided Chamfer similarity). An image's query rows are its 2D feature cells;
  a scene's are its keypoints. Image -> scene uses image-to-scene (every cell must find itself in the
  scene); scene <-> scene averages both directions (symmetric: a rescan vs its original and back).
* **Pose** (``estimate_pose``): mutual nearest neighbours between the image's cells and the best
  scene's keypoints give 2D-3D matches; OpenCV's ``solvePnPRansac`` (EPnP inside RANSAC, then refined on
  the inliers) gives the camera pose. No RANSAC is written here.
* **Errors** (``pose_errors``): rotation angle of R_est^T R_true in degrees, camera-centre distance.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_query_image", "map_cells", "normalise", "set_similarity", "best_cosines", "scores_against", "mutual_matches", "estimate_pose", "localise", "pose_errors"]


def check_query_image(image) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array; anything else is a ValueError saying what it is."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 8:
        raise ValueError(f"a query image must be an RGB uint8 array (H, W, 3) of at least 8 x 8 pixels, "
                         f"got {img.dtype} {img.shape}")
    return img


def map_cells(fmap, width: int, height: int, geometry: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """A feature map (D, h, w) of a ``width`` x ``height`` image as query rows: ``(desc (h*w, D) float32,
    uv (h*w, 2) the pixel of each cell centre)`` (``teachers.cache.cell_to_pixel``)."""
    from pretrain3d.teachers.cache import cell_to_pixel

    f = np.asarray(fmap, np.float32)
    D, h, w = f.shape
    rows, cols = np.mgrid[0:h, 0:w]
    uv = cell_to_pixel(np.stack([cols.ravel(), rows.ravel()], axis=1), width, height, geometry)
    return f.reshape(D, -1).T.copy(), uv


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def set_similarity(a: np.ndarray, b: np.ndarray, symmetric: bool = False) -> float:
    """Mean over rows of ``a`` (n, D) of the best cosine among rows of ``b`` (m, D); ``symmetric``: the mean
    of both directions. Rows are normalised here."""
    s = normalise(a) @ normalise(b).T
    one = float(s.max(1).mean())
    return 0.5 * (one + float(s.max(0).mean())) if symmetric else one


def best_cosines(query: np.ndarray, bank: np.ndarray, max_floats: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """For every scene s of ``bank`` (S, K, D): each query row's best cosine among the scene's keypoints
    (S, n), and each keypoint's best cosine among the query rows (S, K). Chunked over scenes so that no
    intermediate holds more than ``max_floats`` similarities."""
    q = normalise(query)
    S, K, _ = bank.shape
    rows, keys = np.empty((S, len(q)), np.float32), np.empty((S, K), np.float32)
    step = max(1, int(max_floats // max(1, len(q) * K)))
    for s0 in range(0, S, step):
        b = bank[s0:s0 + step].astype(np.float32)
        sim = np.einsum("nd,skd->snk", q, b, optimize=True)  # (s, n, K)
        rows[s0:s0 + len(b)] = sim.max(2)
        keys[s0:s0 + len(b)] = sim.max(1)
    return rows, keys


def scores_against(query: np.ndarray, bank: np.ndarray, symmetric: bool = False,
                   max_floats: int = 1 << 24) -> np.ndarray:
    """``set_similarity(query, bank[s])`` for every scene s of ``bank`` (S, K, D). Returns (S,) float64."""
    rows, keys = best_cosines(query, bank, max_floats)
    one = rows.mean(1).astype(np.float64)
    return 0.5 * (one + keys.mean(1)) if symmetric else one


def mutual_matches(a: np.ndarray, b: np.ndarray, min_cos: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i into ``a``, j into ``b``) that are each other's nearest neighbour by cosine, with
    cosine >= ``min_cos``; and their cosines. Sorted by descending cosine."""
    s = normalise(a) @ normalise(b).T
    if s.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    j_of_i = s.argmax(1)
    i_of_j = s.argmax(0)
    i = np.flatnonzero(i_of_j[j_of_i] == np.arange(len(a)))
    j = j_of_i[i]
    c = s[i, j]
    keep = c >= min_cos
    i, j, c = i[keep], j[keep], c[keep]
    order = np.argsort(-c, kind="stable")
    return i[order].astype(np.int64), j[order].astype(np.int64), c[order].astype(np.float32)


def estimate_pose(uv: np.ndarray, xyz: np.ndarray, K: np.ndarray, *, reproj_px: float = 8.0,
                  iterations: int = 1000, confidence: float = 0.999, seed: int = 0) -> dict | None:
    """Camera-to-world pose (4, 4) from 2D pixels ``uv`` (n, 2) matched to world points ``xyz`` (n, 3) with
    intrinsics ``K`` (3, 3), by ``cv2.solvePnPRansac``. None when fewer than 4 matches or no pose is found.
    Returns ``{"pose", "inliers" (indices), "matches"}``."""
    import cv2

    uv = np.ascontiguousarray(uv, np.float64).reshape(-1, 2)
    xyz = np.ascontiguousarray(xyz, np.float64).reshape(-1, 3)
    if len(uv) != len(xyz):
        raise ValueError(f"{len(uv)} pixels but {len(xyz)} points")
    if len(uv) < 4:
        return None
    cv2.setRNGSeed(int(seed))
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        xyz, uv, np.asarray(K, np.float64), None, iterationsCount=int(iterations), reprojectionError=float(reproj_px),
        confidence=float(confidence), flags=cv2.SOLVEPNP_EPNP)
    if not ok or inliers is None or len(inliers) < 4:
        return None
    inl = inliers.reshape(-1)
    # refine on the inliers (Levenberg-Marquardt from the RANSAC estimate)
    rvec, tvec = cv2.solvePnPRefineLM(xyz[inl], uv[inl], np.asarray(K, np.float64), None, rvec, tvec)
    if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):  # degenerate inliers (e.g. collinear)
        return None
    R, _ = cv2.Rodrigues(rvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return {"pose": np.linalg.inv(w2c), "inliers": inl.astype(np.int64), "matches": int(len(uv))}


def localise(desc: np.ndarray, uv: np.ndarray, scene_xyz: np.ndarray, scene_desc: np.ndarray, K: np.ndarray,
             **pnp) -> dict | None:
    """Camera pose of an image (its cells ``desc`` (n, D) at pixels ``uv`` (n, 2)) in a scene (its keypoints
    ``scene_xyz`` (K, 3), ``scene_desc`` (K, D)): mutual nearest neighbours, then ``estimate_pose``."""
    i, j, _ = mutual_matches(desc, np.asarray(scene_desc, np.float32))
    return estimate_pose(uv[i], np.asarray(scene_xyz)[j], K, **pnp)


def pose_errors(pose_est: np.ndarray, pose_true: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, camera-centre error in the poses' units) of two camera-to-world poses."""
    Ra, Rb = np.asarray(pose_est)[:3, :3], np.asarray(pose_true)[:3, :3]
    cos = (np.trace(Ra.T @ Rb) - 1.0) / 2.0
    rot = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return rot, float(np.linalg.norm(np.asarray(pose_est)[:3, 3] - np.asarray(pose_true)[:3, 3]))
