"""RGB-D frames: the camera path through a room, the default pinhole intrinsics and Open3D ray
casting of one view (colour, z-depth, labels, instances), with colours from the scene's material
table so that pixels and points agree."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from pretrain3d.data.synthetic.objects import SceneObject
from pretrain3d.geometry.camera import pixel_rays

if TYPE_CHECKING:  # annotations only: generator imports this module
    from pretrain3d.data.synthetic.generator import SyntheticScene


MAX_DEPTH_M = 10.0  # metres: farther hits are written as no hit (depth 0)


def _make_raycaster(vertices, triangles):
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.uint32)),
    )
    return rc


def render_view(scene: SyntheticScene, K, pose_c2w, width: int, height: int, nthreads: int = 0) -> dict:
    """Ray-cast one pinhole view of ``scene``.

    Returns ``color`` (H, W, 3) uint8 (black = no hit), ``depth`` (H, W) float32 z-depth in
    metres (0 = no hit or beyond 10 m), ``label`` (H, W) uint16 NYU40 (0 = no hit),
    ``instance`` (H, W) int32 (-1 = no hit) and ``tri`` (H, W) int64 triangle id (-1).
    """
    import open3d as o3d

    K = np.asarray(K, dtype=np.float64)
    pose = np.asarray(pose_c2w, dtype=np.float64)
    dirs_c, _ = pixel_rays(K, width, height)  # z = 1, so t_hit is the z-depth
    dirs = dirs_c @ pose[:3, :3].T
    origin = np.broadcast_to(pose[:3, 3], dirs.shape)
    rays = np.concatenate([origin, dirs], axis=1).astype(np.float32)
    ans = scene.raycaster().cast_rays(o3d.core.Tensor(rays), nthreads=nthreads)
    t = ans["t_hit"].numpy().astype(np.float64)
    prim = ans["primitive_ids"].numpy().astype(np.int64)
    hit = np.isfinite(t) & (prim != o3d.t.geometry.RaycastingScene.INVALID_ID) & (t > 0)
    # z-depth = t * (camera-frame z of the (float32) direction), which is 1 up to rounding
    dz = (rays[:, 3:6].astype(np.float64) @ pose[:3, :3])[:, 2]
    depth = np.where(hit, t * dz, 0.0)
    hit &= depth <= MAX_DEPTH_M
    depth = np.where(hit, depth, 0.0)
    tri = np.where(hit, prim, -1)
    color = np.zeros((len(t), 3), np.uint8)
    idx = np.flatnonzero(hit)
    if len(idx):
        pts = rays[idx, :3].astype(np.float64) + t[idx, None] * rays[idx, 3:6].astype(np.float64)
        color[idx] = scene.surface_color(pts, tri[idx])
    label = np.zeros(len(t), np.uint16)
    label[idx] = scene.tri_label[tri[idx]]
    inst = np.full(len(t), -1, np.int32)
    inst[idx] = scene.tri_instance[tri[idx]]
    return {
        "color": color.reshape(height, width, 3),
        "depth": depth.astype(np.float32).reshape(height, width),
        "label": label.reshape(height, width),
        "instance": inst.reshape(height, width),
        "tri": tri.reshape(height, width),
    }


def _look_at(pos, target, roll) -> np.ndarray:
    z = target - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)  # columns: camera axes in world (x right, y down, z fwd)
    c, s = math.cos(roll), math.sin(roll)
    Rroll = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = R @ Rroll
    T[:3, 3] = pos
    return T


def _camera_path(rng, room, objects: list[SceneObject], n: int) -> np.ndarray:
    Lx, Ly, H = room
    c = np.array([Lx / 2, Ly / 2])
    boxes = [o.aabb() for o in objects if o.cls not in ("wall", "floor")]
    theta0 = rng.uniform(0, 2 * np.pi)
    frac = rng.uniform(0.2, 0.32)
    poses = []

    def clear(p):
        for lo, hi in boxes:
            if np.all(p > lo - 0.25) and np.all(p < hi + 0.25):
                return False
        return True

    for i in range(n):
        th = theta0 + 2 * np.pi * i / max(n, 1) + rng.uniform(-0.2, 0.2)
        z = rng.uniform(1.3, 1.6)
        pos = None
        for shrink in (1.0, 0.75, 0.5, 0.25, 0.0):
            cand = np.array([c[0] + shrink * frac * Lx * math.cos(th), c[1] + shrink * frac * Ly * math.sin(th), z])
            if clear(cand):
                pos = cand
                break
        if pos is None:
            pos = np.array([c[0], c[1], min(z, H - 0.3)])
        phi = math.atan2(c[1] - pos[1], c[0] - pos[0]) if np.linalg.norm(c - pos[:2]) > 0.05 else th + np.pi
        phi += rng.uniform(-0.6, 0.6)
        dist = rng.uniform(1.5, 3.0)
        tgt = np.array([pos[0] + dist * math.cos(phi), pos[1] + dist * math.sin(phi), rng.uniform(0.3, 1.1)])
        tgt[0] = np.clip(tgt[0], 0.3, Lx - 0.3)
        tgt[1] = np.clip(tgt[1], 0.3, Ly - 0.3)
        if np.linalg.norm(tgt[:2] - pos[:2]) < 0.5:
            tgt[:2] = c + 0.5 * (c - pos[:2]) if np.linalg.norm(c - pos[:2]) > 0.05 else c + [0.8, 0.0]
        poses.append(_look_at(pos, tgt, rng.uniform(-0.09, 0.09)))
    return np.stack(poses) if poses else np.zeros((0, 4, 4))


def default_intrinsics(width: int, height: int) -> np.ndarray:
    f = 0.9 * width
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
