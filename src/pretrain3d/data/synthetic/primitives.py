"""Geometric primitives: boxes and z-axis cylinders placed by a centre and a rotation, and the
triangle meshes they become. Every object of a scene is a list of them (``B``, ``C``, ``CA``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


_BOX_FACES = {"+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0), "+z": (2, 1.0), "-z": (2, -1.0)}
_ALL_BOX = ("+x", "-x", "+y", "-y", "+z", "-z")
_ALL_CYL = ("side", "+z", "-z")


@dataclass
class Prim:
    """A box or a z-axis cylinder in its own frame, placed by ``center`` and ``R``.

    ``half`` = box half extents, or ``(r, r, half_height)`` for a cylinder. ``faces`` says
    which faces become triangles; ``solid`` says whether the full volume hides other
    surfaces that lie inside it.
    """

    kind: str
    center: np.ndarray
    R: np.ndarray
    half: np.ndarray
    mat: int = 0
    faces: tuple = _ALL_BOX
    solid: bool = True

    def moved(self, Rw: np.ndarray, t: np.ndarray) -> "Prim":
        return Prim(self.kind, Rw @ self.center + t, Rw @ self.R, self.half.copy(), self.mat, self.faces, self.solid)

    def corners(self) -> np.ndarray:
        s = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        return (s * self.half) @ self.R.T + self.center

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.corners()
        return c.min(0), c.max(0)

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "box":
            v, f = _box_mesh(self.half, self.faces)
        else:
            v, f = _cyl_mesh(self.half[0], self.half[2], self.faces)
        return v @ self.R.T + self.center, f


def _rz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _box_mesh(h, faces):
    verts, tris = [], []
    for name in faces:
        a, s = _BOX_FACES[name]
        b, c = (a + 1) % 3, (a + 2) % 3
        q = np.zeros((4, 3))
        q[:, a] = s * h[a]
        q[:, b] = [-h[b], h[b], h[b], -h[b]]
        q[:, c] = [-h[c], -h[c], h[c], h[c]]
        if s < 0:
            q = q[::-1]
        k = len(verts) * 4
        verts.append(q)
        tris += [[k, k + 1, k + 2], [k, k + 2, k + 3]]
    return np.concatenate(verts), np.array(tris, dtype=np.int64)


def _cyl_mesh(r, hz, faces):
    n = 8 if r < 0.03 else (12 if r < 0.1 else 20)
    th = 2 * np.pi * np.arange(n) / n
    ring = np.stack([r * np.cos(th), r * np.sin(th)], 1)
    bot = np.concatenate([ring, np.full((n, 1), -hz)], 1)
    top = np.concatenate([ring, np.full((n, 1), hz)], 1)
    verts = [bot, top, np.array([[0, 0, -hz], [0, 0, hz]])]
    k = np.arange(n)
    k1 = (k + 1) % n
    tris = []
    if "side" in faces:
        tris.append(np.stack([k, k1, n + k1], 1))
        tris.append(np.stack([k, n + k1, n + k], 1))
    if "+z" in faces:
        tris.append(np.stack([np.full(n, 2 * n + 1), n + k, n + k1], 1))
    if "-z" in faces:
        tris.append(np.stack([np.full(n, 2 * n), k1, k], 1))
    return np.concatenate(verts), np.concatenate(tris).astype(np.int64)


def B(cx, cy, z0, sx, sy, sz, m=0, faces=_ALL_BOX, yaw=0.0, solid=True) -> Prim:
    """Box with full sizes, centred at (cx, cy) and resting on z0 (object frame)."""
    return Prim("box", np.array([cx, cy, z0 + sz / 2.0]), _rz(yaw), np.array([sx, sy, sz]) / 2.0, m, faces, solid)


def C(cx, cy, z0, z1, r, m=0, faces=_ALL_CYL) -> Prim:
    """Vertical cylinder from z0 to z1."""
    return Prim("cyl", np.array([cx, cy, (z0 + z1) / 2.0]), np.eye(3), np.array([r, r, (z1 - z0) / 2.0]), m, faces)


def CA(p0, p1, r, m=0) -> Prim:
    """Cylinder along an arbitrary axis from p0 to p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    ax = p1 - p0
    L = float(np.linalg.norm(ax))
    z = ax / L
    x = np.cross(z, [0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return Prim("cyl", (p0 + p1) / 2.0, np.stack([x, y, z], 1), np.array([r, r, L / 2.0]), m)


def _open_box(cy, z0, w, d, h, t, tb, m=0) -> list[Prim]:
    """A basin/tub: bottom slab plus four walls (open top)."""
    return [
        B(0, cy, z0, w - 2 * t, d - 2 * t, tb, m),
        B(0, cy - d / 2 + t / 2, z0, w, t, h, m),
        B(0, cy + d / 2 - t / 2, z0, w, t, h, m),
        B(-w / 2 + t / 2, cy, z0, t, d - 2 * t, h, m),
        B(w / 2 - t / 2, cy, z0, t, d - 2 * t, h, m),
    ]
