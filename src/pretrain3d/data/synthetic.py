"""Deterministic procedural indoor scenes with RGB-D frames, written in a ScanNet-like layout.

A scene is a room (floor + four walls, no ceiling, like a ScanNet scan) furnished with
objects built from boxes and cylinders, each labelled with an NYU40 id that maps onto the
ScanNet-20 benchmark classes (see ``pretrain3d.data.labels``), plus a few "ignore" classes
(otherprop clutter, pillows, books) so that the ``-1`` path is exercised as with real data.

Everything is a triangle mesh with per-triangle object/material/normal; from it we take
* a point cloud: area-uniform samples on the visible surfaces (samples that fall inside
  another solid -- the underside of a cabinet, the back of a picture, a chair leg's top --
  are dropped), exact normals, colours, NYU40 labels and instance ids, then sensor noise;
* RGB-D frames: Open3D ray casting from a camera path inside the room.

Colours are a deterministic function ``colour(p, n, material)`` of the 3D position ``p``
(procedural wood grain, planks, tiles, fabric speckle, "art" for pictures) times a fixed
Lambert-like term of the surface normal ``n``. The point cloud and the images evaluate the
same function, so a pixel and a point at the same 3D location agree exactly (before the
point cloud's colour noise and JPEG compression).

Randomness: one ``numpy.random.SeedSequence`` per scene, split into independent streams
for layout, surface sampling, sensor noise and cameras, so e.g. changing the number of
frames never changes the point cloud. ``generate_dataset`` seeds scene *i* of split *s*
from ``(seed, s, i)`` so results do not depend on the number of workers.

``domain`` (``scannet`` default | ``s3dis`` | ``structured3d``) chooses which dataset the rooms
imitate; the S3DIS-like and Structured3D-like recipes, label maps and colour/noise character live
in ``pretrain3d.data.synthetic_domains``. This module only hooks them in: the ``scannet`` path is
the original generator, byte for byte.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pretrain3d.atomic import atomic_dir, write_json, write_text
from pretrain3d.data.labels import SCANNET20_NAMES, SCANNET20_NYU40_IDS, nyu40_to_scannet20
from pretrain3d.geometry.camera import pixel_rays

__all__ = [
    "NYU40",
    "THEMES",
    "DEFAULT_POINTS_PER_M2",
    "SyntheticScene",
    "scene_seed",
    "generate_scene",
    "render_view",
    "write_raw_scene",
    "generate_dataset",
]

GENERATOR_VERSION = 1

# NYU40 ids used by the generator (the 20 benchmark classes plus three ignored ones).
NYU40 = {
    "wall": 1,
    "floor": 2,
    "cabinet": 3,
    "bed": 4,
    "chair": 5,
    "sofa": 6,
    "table": 7,
    "door": 8,
    "window": 9,
    "bookshelf": 10,
    "picture": 11,
    "counter": 12,
    "desk": 14,
    "curtain": 16,
    "pillow": 18,
    "books": 23,
    "refrigerator": 24,
    "shower curtain": 28,
    "toilet": 33,
    "sink": 34,
    "bathtub": 36,
    "otherfurniture": 39,
    "otherprop": 40,
}

THEMES = ("bedroom", "living", "office", "kitchen", "bathroom")
_THEME_P = (0.21, 0.21, 0.2, 0.19, 0.19)

# ~40-80k points for the default room-size range after hidden-surface culling.
DEFAULT_POINTS_PER_M2 = 650.0
MAX_DEPTH_M = 10.0
_CULL_EPS = 1e-3
_LIGHT = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])

# ============================================================================ primitives

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


# ============================================================================ materials

_K_TERMS = 4
_SINE, _STEP, _LINES, _CELL = 0, 1, 2, 3


@dataclass
class Material:
    base: np.ndarray  # (3,) RGB 0..255
    kinds: np.ndarray  # (K,) int
    freqs: np.ndarray  # (K, 3) cycles per metre (cell: cells per metre per axis)
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K, 3) relative amplitude per channel


def _hsv(h, s, v) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _unit(rng, horizontal=False) -> np.ndarray:
    v = rng.normal(size=3)
    if horizontal:
        v[2] *= 0.1
    return v / np.linalg.norm(v)


def _material(rng: np.random.Generator, family: str) -> Material:
    kinds = np.zeros(_K_TERMS, np.int64)
    freqs = np.zeros((_K_TERMS, 3))
    phases = rng.uniform(0, 1, _K_TERMS)
    amps = np.zeros((_K_TERMS, 3))
    U = rng.uniform

    def term(k, kind, f, a):
        kinds[k] = kind
        freqs[k] = f
        amps[k] = a

    axis = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0])][int(rng.integers(2))]
    if family == "paint":
        base = _hsv(U(0, 1), U(0.0, 0.22), U(0.72, 0.95))
        term(0, _SINE, _unit(rng) * U(0.2, 0.6), U(0.015, 0.04))
        term(1, _CELL, np.full(3, 30.0), U(0.01, 0.025))
    elif family == "wood":
        base = _hsv(U(0.04, 0.11), U(0.35, 0.75), U(0.28, 0.85))
        term(0, _SINE, _unit(rng, True) * U(15, 40), U(0.06, 0.14))
        term(1, _SINE, _unit(rng) * U(3, 8), U(0.03, 0.07))
        term(2, _CELL, np.full(3, 80.0), U(0.02, 0.04))
    elif family == "laminate":
        base = _hsv(U(0, 1), U(0.0, 0.5), U(0.3, 0.95))
        term(0, _SINE, _unit(rng) * U(0.5, 2.0), U(0.02, 0.05))
        term(1, _CELL, np.full(3, 60.0), U(0.01, 0.03))
    elif family == "fabric":
        base = _hsv(U(0, 1), U(0.15, 0.7), U(0.25, 0.85))
        term(0, _CELL, np.full(3, U(90, 150)), U(0.04, 0.09))
        term(1, _SINE, _unit(rng) * U(25, 60), U(0.02, 0.06))
        if rng.random() < 0.3:  # striped fabric
            term(2, _SINE, _unit(rng) * U(4, 9), U(0.1, 0.25) * np.array([1.0, U(0.5, 1.5), U(0.5, 1.5)]))
    elif family == "ceramic":
        base = _hsv(U(0, 1), U(0.0, 0.06), U(0.84, 0.97))
        term(0, _CELL, np.full(3, 50.0), U(0.01, 0.02))
        term(1, _SINE, _unit(rng) * U(0.5, 2), U(0.01, 0.03))
    elif family == "metal":
        base = _hsv(U(0, 1), U(0.0, 0.08), U(0.45, 0.9))
        term(0, _SINE, _unit(rng) * U(60, 120), U(0.02, 0.04))
        term(1, _SINE, _unit(rng) * U(1, 3), U(0.03, 0.06))
    elif family == "planks":
        base = _hsv(U(0.05, 0.11), U(0.3, 0.7), U(0.3, 0.8))
        pw = U(0.1, 0.22)
        other = np.array([axis[1], axis[0], 0.0])
        term(0, _STEP, axis / pw, U(0.08, 0.16))
        term(1, _LINES, axis / pw, U(0.2, 0.4))
        term(2, _SINE, other * U(8, 20) + axis * U(0, 3), U(0.04, 0.08))
        term(3, _STEP, other / U(0.8, 1.6), U(0.03, 0.06))
    elif family == "tile":
        base = _hsv(U(0, 1), U(0.0, 0.35), U(0.45, 0.95))
        ts = U(0.25, 0.6)
        term(0, _LINES, np.array([1 / ts, 0, 0]), U(0.25, 0.45))
        term(1, _LINES, np.array([0, 1 / ts, 0]), U(0.25, 0.45))
        term(2, _CELL, np.full(3, 1 / ts), U(0.02, 0.06))
        term(3, _CELL, np.full(3, 70.0), U(0.01, 0.03))
        phases[2] = phases[0]
    elif family == "carpet":
        base = _hsv(U(0, 1), U(0.1, 0.6), U(0.2, 0.7))
        term(0, _CELL, np.full(3, U(120, 200)), U(0.08, 0.14))
        term(1, _SINE, _unit(rng) * U(0.3, 1.5), U(0.03, 0.08))
    elif family == "art":
        base = _hsv(U(0, 1), U(0.2, 0.7), U(0.35, 0.8))
        for k in range(3):
            term(k, _SINE, _unit(rng) * U(2, 14), rng.uniform(-0.55, 0.55, 3))
        term(3, _CELL, np.full(3, U(5, 20)), rng.uniform(-0.3, 0.3, 3))
    elif family == "glass":
        base = _hsv(U(0.5, 0.62), U(0.05, 0.25), U(0.6, 0.9))
        term(0, _SINE, _unit(rng) * U(0.5, 3), U(0.05, 0.12))
        term(1, _SINE, _unit(rng) * U(3, 8), U(0.02, 0.05))
    elif family == "books":
        base = _hsv(U(0, 1), U(0.2, 0.6), U(0.3, 0.75))
        bw = U(0.02, 0.05)
        term(0, _STEP, axis / bw, rng.uniform(-0.6, 0.6, 3))
        term(1, _LINES, axis / bw, U(0.15, 0.35))
        term(2, _CELL, np.full(3, 40.0), U(0.02, 0.05))
    else:  # pragma: no cover - programming error
        raise ValueError(family)
    return Material(np.asarray(base, float), kinds, freqs, phases, np.asarray(amps, float))


def _hash_u01(cols: Sequence[np.ndarray]) -> np.ndarray:
    """Integer hash of one or more int64 arrays -> floats in [0, 1). Platform independent."""
    primes = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)
    h = np.full(cols[0].shape, 0x27D4EB2F165667C5, dtype=np.uint64)
    for i, c in enumerate(cols):
        h ^= c.astype(np.int64).view(np.uint64) * np.uint64(primes[i % 3])
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(40)).astype(np.float64) / float(1 << 24)


@dataclass
class MaterialTable:
    """All materials of a scene packed into arrays (index = global material id)."""

    base: np.ndarray  # (M, 3)
    kinds: np.ndarray  # (M, K)
    freqs: np.ndarray  # (M, K, 3)
    phases: np.ndarray  # (M, K)
    amps: np.ndarray  # (M, K, 3)

    @staticmethod
    def pack(mats: list[Material]) -> "MaterialTable":
        return MaterialTable(
            np.stack([m.base for m in mats]),
            np.stack([m.kinds for m in mats]),
            np.stack([m.freqs for m in mats]),
            np.stack([m.phases for m in mats]),
            np.stack([m.amps for m in mats]),
        )

    def color(self, points: np.ndarray, normals: np.ndarray, mat_ids: np.ndarray) -> np.ndarray:
        """uint8 (N, 3) colour of surface points (the one colour function of a scene)."""
        p = np.asarray(points, dtype=np.float64)
        n = np.asarray(normals, dtype=np.float64)
        out = np.empty((len(p), 3), dtype=np.uint8)
        step = 65536
        for s in range(0, len(p), step):
            out[s : s + step] = self._color(p[s : s + step], n[s : s + step], mat_ids[s : s + step])
        return out

    def _color(self, p, n, m):
        kinds = self.kinds[m]  # (N, K)
        F = self.freqs[m]  # (N, K, 3)
        ph = self.phases[m]
        proj = np.einsum("nkc,nc->nk", F, p) + ph
        g = np.zeros_like(proj)
        sel = kinds == _SINE
        g[sel] = np.sin(2 * np.pi * proj[sel])
        sel = kinds == _STEP
        if sel.any():
            g[sel] = 2.0 * _hash_u01([np.floor(proj[sel]).astype(np.int64)]) - 1.0
        sel = kinds == _LINES
        if sel.any():
            fr = proj[sel] - np.floor(proj[sel])
            g[sel] = np.where(fr < 0.07, -1.0, 0.0)
        sel = kinds == _CELL
        if sel.any():
            cell = np.floor(p[:, None, :] * F + ph[..., None])[sel].astype(np.int64)
            g[sel] = 2.0 * _hash_u01([cell[:, 0], cell[:, 1], cell[:, 2]]) - 1.0
        factor = 1.0 + np.einsum("nk,nkc->nc", g, self.amps[m])
        shade = 0.78 + 0.22 * (n @ _LIGHT)
        c = self.base[m] * factor * shade[:, None]
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)


# ============================================================================ objects


@dataclass
class _Proto:
    """An object in its own frame: front faces -y, back at max y, resting on z = 0."""

    cls: str
    prims: list[Prim]
    mats: list[Material]
    occ: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # extra keep-out boxes

    def aabb(self):
        lo = np.min([p.aabb()[0] for p in self.prims], 0)
        hi = np.max([p.aabb()[1] for p in self.prims], 0)
        return lo, hi

    def shifted(self, d) -> "_Proto":
        d = np.asarray(d, float)
        return _Proto(
            self.cls,
            [p.moved(np.eye(3), d) for p in self.prims],
            self.mats,
            [(lo + d, hi + d) for lo, hi in self.occ],
        )


@dataclass
class SceneObject:
    cls: str
    nyu40: int  # raw label id: NYU40 (scannet, structured3d domains) or S3DIS index + 1 (s3dis)
    instance: int
    prims: list[Prim]  # world frame
    mats: list[Material]

    def aabb(self):
        lo = np.min([p.aabb()[0] for p in self.prims], 0)
        hi = np.max([p.aabb()[1] for p in self.prims], 0)
        return lo, hi


def _pick(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _clutter(rng, x0, x1, y0, y1, z, n) -> list[_Proto]:
    """Small otherprop items (boxes, bottles, a monitor) on a surface rectangle."""
    out = []
    U = rng.uniform
    for _ in range(n):
        kind = rng.random()
        mat = _material(rng, _pick(rng, ("laminate", "metal", "fabric", "art", "ceramic")))
        if kind < 0.45:
            w, d, h = U(0.08, 0.35), U(0.08, 0.28), U(0.04, 0.3)
            if x1 - x0 < w or y1 - y0 < d:
                continue
            cx, cy = U(x0 + w / 2, x1 - w / 2), U(y0 + d / 2, y1 - d / 2)
            out.append(_Proto("otherprop", [B(cx, cy, z, w, d, h, yaw=U(-0.5, 0.5))], [mat]))
        elif kind < 0.8:
            r, h = U(0.03, 0.07), U(0.08, 0.3)
            if x1 - x0 < 2 * r or y1 - y0 < 2 * r:
                continue
            cx, cy = U(x0 + r, x1 - r), U(y0 + r, y1 - r)
            out.append(_Proto("otherprop", [C(cx, cy, z, z + h, r)], [mat]))
        else:  # monitor / lamp-ish: stand + thin panel
            w, h = U(0.4, 0.6), U(0.28, 0.38)
            if x1 - x0 < w or y1 - y0 < 0.2:
                continue
            cx, cy = U(x0 + w / 2, x1 - w / 2), U(y0 + 0.1, y1 - 0.1)
            out.append(
                _Proto(
                    "otherprop",
                    [
                        B(cx, cy, z, 0.2, 0.16, 0.015),
                        B(cx, cy + 0.02, z + 0.015, 0.04, 0.03, 0.1),
                        B(cx, cy, z + 0.1, w, 0.025, h),
                    ],
                    [mat],
                )
            )
    return out


def _fronts(rng, x0, x1, y_front, z0, z1, mh, rows=1, cols=1) -> list[Prim]:
    """Door/drawer fronts (thin boxes proud of the body) with handles (material mh)."""
    out = []
    gap, t = 0.004, 0.018
    wcol = (x1 - x0) / cols
    hrow = (z1 - z0) / rows
    for i in range(cols):
        for j in range(rows):
            fx0, fx1 = x0 + i * wcol + gap, x0 + (i + 1) * wcol - gap
            fz0, fz1 = z0 + j * hrow + gap, z0 + (j + 1) * hrow - gap
            out.append(B((fx0 + fx1) / 2, y_front - t / 2, fz0, fx1 - fx0, t, fz1 - fz0, 0))
            if rows > 1:  # drawer: horizontal handle at the centre
                hw = min(0.12, 0.5 * (fx1 - fx0))
                out.append(B((fx0 + fx1) / 2, y_front - t - 0.01, (fz0 + fz1) / 2 - 0.01, hw, 0.02, 0.02, mh))
            else:  # door: vertical handle near the meeting edge
                hx = fx1 - 0.04 if (cols == 1 or i == 0) else fx0 + 0.04
                hl = min(0.14, 0.4 * (fz1 - fz0))
                out.append(B(hx, y_front - t - 0.01, (fz0 + fz1) / 2 - hl / 2, 0.02, 0.02, hl, mh))
    return out


def build_table(rng, kind=None) -> list[_Proto]:
    U = rng.uniform
    kind = kind or _pick(rng, ("rect", "round", "coffee"), p=(0.6, 0.2, 0.2))
    top_m = _material(rng, _pick(rng, ("wood", "laminate")))
    leg_m = _material(rng, _pick(rng, ("wood", "metal")))
    if kind == "round":
        r, h, t = U(0.4, 0.6), U(0.72, 0.77), U(0.03, 0.05)
        prims = [C(0, 0, h - t, h, r, 0), C(0, 0, 0.03, h - t, U(0.04, 0.06), 1), C(0, 0, 0, 0.03, U(0.2, 0.3), 1)]
        top = (-r * 0.6, r * 0.6, -r * 0.6, r * 0.6, h)
    else:
        if kind == "coffee":
            w, d, h = U(0.8, 1.3), U(0.45, 0.7), U(0.38, 0.48)
        else:
            w, d, h = U(0.9, 1.8), U(0.6, 1.0), U(0.72, 0.78)
        t = U(0.03, 0.05)
        prims = [B(0, 0, h - t, w, d, t, 0)]
        s, ins = U(0.04, 0.07), U(0.02, 0.08)
        round_legs = rng.random() < 0.4
        for sx in (-1, 1):
            for sy in (-1, 1):
                x, y = sx * (w / 2 - ins - s / 2), sy * (d / 2 - ins - s / 2)
                prims.append(C(x, y, 0, h - t, s / 2, 1) if round_legs else B(x, y, 0, s, s, h - t, 1))
        if kind == "coffee" and rng.random() < 0.5:
            prims.append(B(0, 0, 0.1, w - 2 * ins - 2 * s, d - 2 * ins - 2 * s, 0.02, 0))
        elif kind == "rect" and rng.random() < 0.4:  # apron
            a = 0.08
            prims += [
                B(0, d / 2 - ins - s / 2, h - t - a, w - 2 * ins - 2 * s, 0.02, a, 0),
                B(0, -(d / 2 - ins - s / 2), h - t - a, w - 2 * ins - 2 * s, 0.02, a, 0),
            ]
        top = (-w / 2 + 0.05, w / 2 - 0.05, -d / 2 + 0.05, d / 2 - 0.05, h)
    main = _Proto("table", prims, [top_m, leg_m])
    out = [main]
    if rng.random() < 0.6:
        out += _clutter(rng, top[0], top[1], top[2], top[3], top[4], int(rng.integers(1, 4)))
    return out


def build_desk(rng) -> list[_Proto]:
    U = rng.uniform
    w, d, h, t = U(1.0, 1.8), U(0.55, 0.8), U(0.72, 0.77), U(0.025, 0.04)
    m0 = _material(rng, _pick(rng, ("wood", "laminate")))
    mh = _material(rng, "metal")
    side = 1.0 if rng.random() < 0.5 else -1.0
    pw = U(0.35, 0.45)
    px = side * (w / 2 - pw / 2)
    prims = [B(0, 0, h - t, w, d, t, 0), B(px, 0.01, 0, pw, d - 0.02, h - t, 0)]
    prims += _fronts(rng, px - pw / 2, px + pw / 2, -d / 2 + 0.02, 0.02, h - t - 0.01, 1, rows=3)
    prims.append(B(-side * (w / 2 - 0.015), 0.01, 0, 0.03, d - 0.02, h - t, 0))  # panel leg
    mw = w - pw - 0.03
    prims.append(B(-side * (w / 2 - 0.03 - mw / 2), d / 2 - 0.03, h - t - 0.4, mw - 0.01, 0.015, 0.4, 0))
    out = [_Proto("desk", prims, [m0, mh])]
    if rng.random() < 0.7:
        out += _clutter(rng, -w / 2 + 0.05, w / 2 - 0.05, -d / 2 + 0.05, d / 2 - 0.22, h, int(rng.integers(1, 4)))
    return out


def build_chair(rng, kind=None) -> list[_Proto]:
    U = rng.uniform
    kind = kind or _pick(rng, ("standard", "office"), p=(0.65, 0.35))
    seat_m = _material(rng, _pick(rng, ("wood", "fabric", "laminate")))
    frame_m = _material(rng, _pick(rng, ("wood", "metal")))
    if kind == "standard":
        sw, sd, sh, st = U(0.4, 0.5), U(0.4, 0.5), U(0.42, 0.48), U(0.03, 0.07)
        s = U(0.025, 0.04)
        prims = [B(0, 0, sh - st, sw, sd, st, 0)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                prims.append(B(sx * (sw / 2 - s / 2 - 0.01), sy * (sd / 2 - s / 2 - 0.01), 0, s, s, sh - st, 1))
        bt, bh, gap = U(0.02, 0.05), U(0.3, 0.45), U(0.0, 0.15)
        yb = sd / 2 - bt / 2
        prims.append(B(0, yb, sh + gap, sw, bt, bh, 0))
        if gap > 0.02:
            for sx in (-1, 1):
                prims.append(B(sx * (sw / 2 - s / 2 - 0.01), yb, sh, s, bt, gap + 0.01, 1))
        if rng.random() < 0.25:  # armrests
            for sx in (-1, 1):
                prims.append(B(sx * (sw / 2 - 0.02), 0.0, sh + 0.2, 0.04, sd * 0.8, 0.03, 1))
                prims.append(B(sx * (sw / 2 - 0.02), -sd * 0.3, sh, 0.03, 0.03, 0.2, 1))
    else:
        sw, sd, sh, st = U(0.45, 0.52), U(0.44, 0.5), U(0.45, 0.52), U(0.06, 0.09)
        prims = [B(0, 0, sh - st, sw, sd, st, 0)]
        bh = U(0.4, 0.6)
        prims.append(B(0, sd / 2 + 0.01, sh + 0.05, sw * U(0.85, 1.0), U(0.05, 0.08), bh, 0))
        prims.append(B(0, sd / 2 - 0.03, sh - st - 0.02, 0.05, 0.08, 0.12, 1))
        prims.append(C(0, 0, 0.08, sh - st, U(0.022, 0.03), 1))
        arm = U(0.26, 0.32)
        yaw0 = U(0, 2 * np.pi / 5)
        for k in range(5):
            a = yaw0 + 2 * np.pi * k / 5
            prims.append(B(math.cos(a) * arm / 2, math.sin(a) * arm / 2, 0.05, arm, 0.04, 0.03, 1, yaw=a))
            prims.append(C(math.cos(a) * (arm - 0.02), math.sin(a) * (arm - 0.02), 0.0, 0.05, 0.025, 1))
        if rng.random() < 0.5:
            for sx in (-1, 1):
                prims.append(B(sx * (sw / 2 + 0.03), 0.0, sh + 0.18, 0.05, sd * 0.6, 0.03, 1))
                prims.append(B(sx * (sw / 2 + 0.03), 0.0, sh - 0.02, 0.03, 0.04, 0.2, 1))
    return [_Proto("chair", prims, [seat_m, frame_m])]


def build_sofa(rng) -> list[_Proto]:
    U = rng.uniform
    w, d = U(1.5, 2.4), U(0.8, 0.95)
    sh, aw, ah = U(0.4, 0.46), U(0.12, 0.25), U(0.55, 0.68)
    bt, bh, ct = U(0.15, 0.25), U(0.75, 0.92), U(0.1, 0.14)
    fh = U(0.05, 0.1) if rng.random() < 0.6 else 0.0
    fab, feet = _material(rng, _pick(rng, ("fabric", "fabric", "laminate"))), _material(rng, "wood")
    iw = w - 2 * aw
    prims = [
        B(0, -bt / 2, fh, iw, d - bt, sh - ct - fh, 0),
        B(0, d / 2 - bt / 2, fh, iw, bt, bh - fh, 0),
        B(-(w / 2 - aw / 2), 0, fh, aw, d, ah - fh, 0),
        B(w / 2 - aw / 2, 0, fh, aw, d, ah - fh, 0),
    ]
    n = 2 if iw < 1.5 else 3
    cw = iw / n
    for i in range(n):
        prims.append(B(-iw / 2 + cw * (i + 0.5), -bt / 2, sh - ct, cw - 0.01, d - bt, ct, 0))
    if rng.random() < 0.5:
        for i in range(n):
            prims.append(B(-iw / 2 + cw * (i + 0.5), d / 2 - bt - 0.06, sh, cw - 0.02, 0.12, min(0.4, bh - sh - 0.05), 0))
    if fh > 0:
        for sx in (-1, 1):
            for sy in (-1, 1):
                prims.append(C(sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), 0, fh, 0.025, 1))
    out = [_Proto("sofa", prims, [fab, feet])]
    if rng.random() < 0.5:
        pm = _material(rng, "fabric")
        pills = [B(-iw / 2 + 0.3 + i * 0.5, d / 2 - bt - 0.1, sh, 0.4, 0.12, 0.38, 0, yaw=U(-0.2, 0.2)) for i in range(int(rng.integers(1, 3)))]
        out.append(_Proto("pillow", pills, [pm]))
    return out


def build_bed(rng, nightstands=False) -> list[_Proto]:
    U = rng.uniform
    w = U(0.9, 1.05) if rng.random() < 0.4 else U(1.4, 1.8)
    L, fh, mt = U(1.95, 2.1), U(0.2, 0.35), U(0.18, 0.28)
    hbt, hbh = U(0.04, 0.08), U(0.85, 1.2)
    frame, mattress = _material(rng, _pick(rng, ("wood", "laminate", "fabric"))), _material(rng, "fabric")
    blanket = _material(rng, "fabric")
    yc = -hbt - L / 2
    top = fh + mt
    prims = [
        B(0, -hbt / 2, 0, w + 0.04, hbt, hbh, 0),
        B(0, yc, 0, w, L, fh, 0),
        B(0, yc, fh, w - 0.04, L - 0.04, mt, 1),
    ]
    if rng.random() < 0.3:
        prims.append(B(0, -hbt - L - 0.03, 0, w + 0.04, 0.05, top + U(0.05, 0.25), 0))
    if rng.random() < 0.7:  # blanket over the foot end, draping down the sides
        bl = L * U(0.55, 0.75)
        by = -hbt - L + bl / 2 + 0.01
        prims.append(B(0, by, top, w, bl, 0.03, 2))
        dh = U(0.15, 0.3)
        for sx in (-1, 1):
            prims.append(B(sx * (w / 2 + 0.01), by, top + 0.03 - dh, 0.02, bl, dh, 2))
    out = [_Proto("bed", prims, [frame, mattress, blanket])]
    pm = _material(rng, "fabric")
    n = 1 if w < 1.2 else 2
    pills = [B(-w / 2 + (i + 0.5) * w / n, -hbt - 0.25, top, w / n - 0.1, 0.35, 0.12, 0) for i in range(n)]
    out.append(_Proto("pillow", pills, [pm]))
    if nightstands:
        for side in (-1, 1):
            if rng.random() < 0.7:
                ns = build_cabinet(rng, "nightstand")
                lo, hi = ns[0].aabb()
                dx = side * (w / 2 + 0.02 + 0.03 + (hi[0] - lo[0]) / 2)
                out += [p.shifted([dx, -hi[1], 0.0]) for p in ns]
    return out


def build_cabinet(rng, kind=None) -> list[_Proto]:
    U = rng.uniform
    kind = kind or _pick(rng, ("low", "tall", "file"), p=(0.5, 0.3, 0.2))
    body = _material(rng, _pick(rng, ("wood", "laminate", "laminate", "metal")))
    mh = _material(rng, "metal")
    if kind == "low":
        w, d, h = U(0.5, 1.2), U(0.4, 0.6), U(0.6, 0.95)
        rows, cols = (1, 2) if w > 0.7 else (1, 1)
    elif kind == "tall":
        w, d, h = U(0.5, 1.0), U(0.4, 0.6), U(1.6, 2.1)
        rows, cols = (1, 2) if w > 0.6 else (1, 1)
    elif kind == "file":
        w, d, h = U(0.4, 0.5), U(0.5, 0.6), U(0.7, 1.3)
        rows, cols = int(round(h / 0.3)), 1
    elif kind == "nightstand":
        w, d, h = U(0.4, 0.55), U(0.35, 0.45), U(0.45, 0.65)
        rows, cols = 2, 1
    elif kind == "upper":
        w, d, h = U(0.6, 1.6), U(0.3, 0.38), U(0.6, 0.75)
        rows, cols = 1, max(1, int(round(w / 0.45)))
    else:  # pragma: no cover
        raise ValueError(kind)
    plinth = 0.06 if kind in ("low", "tall") and rng.random() < 0.5 else 0.0
    prims = [B(0, 0.01, plinth, w, d - 0.02, h - plinth, 0)]
    if plinth:
        prims.append(B(0, 0.03, 0, w - 0.04, d - 0.06, plinth, 0))
    prims += _fronts(rng, -w / 2, w / 2, -d / 2 + 0.02, plinth, h, 1, rows=rows, cols=cols)
    out = [_Proto("cabinet", prims, [body, mh])]
    if kind in ("low", "nightstand", "file") and rng.random() < 0.5:
        out += _clutter(rng, -w / 2 + 0.03, w / 2 - 0.03, -d / 2 + 0.03, d / 2 - 0.03, h, int(rng.integers(1, 3)))
    return out


def build_bookshelf(rng) -> list[_Proto]:
    U = rng.uniform
    w, d, h, bt = U(0.6, 1.2), U(0.28, 0.4), U(1.0, 2.0), U(0.018, 0.03)
    m = _material(rng, _pick(rng, ("wood", "laminate")))
    bk = U(0.05, 0.1)
    iw = w - 2 * bt
    prims = [
        B(-(w / 2 - bt / 2), 0, 0, bt, d, h, 0),
        B(w / 2 - bt / 2, 0, 0, bt, d, h, 0),
        B(0, 0, h - bt, iw, d, bt, 0),
        B(0, 0, 0, iw, d, bk, 0),
        B(0, d / 2 - 0.005, bk, iw, 0.01, h - bt - bk, 0),
    ]
    n = max(2, int(round((h - bk - bt) / U(0.28, 0.38))))
    gap = (h - bk - bt - (n - 1) * bt) / n
    books, bmats = [], []
    for i in range(n):
        z = bk + i * (gap + bt)
        if i > 0:
            prims.append(B(0, -0.005, z - bt, iw, d - 0.01, bt, 0))
        if rng.random() < 0.75 and gap > 0.18:
            x = -iw / 2 + U(0.0, 0.1)
            for _ in range(int(rng.integers(1, 4))):
                bw = U(0.08, 0.35)
                if x + bw > iw / 2 - 0.01:
                    break
                bh = U(0.15, min(0.3, gap - 0.03))
                bd = U(0.15, min(0.25, d - 0.04))
                bmats.append(_material(rng, "books"))
                books.append(B(x + bw / 2, d / 2 - 0.01 - bd / 2, z, bw, bd, bh, len(bmats) - 1))
                x += bw + U(0.02, 0.2)
    out = [_Proto("bookshelf", prims, [m])]
    if books:
        out.append(_Proto("books", books, bmats))
    return out


def _sink_basin(rng, z0, yc, m, mh, kind) -> list[Prim]:
    U = rng.uniform
    if kind == "vessel":
        w, d, h = U(0.35, 0.5), U(0.3, 0.4), U(0.12, 0.17)
    else:
        w, d, h = U(0.45, 0.6), U(0.38, 0.48), U(0.14, 0.2)
    prims = _open_box(yc, z0, w, d, h, 0.025, 0.03, m)
    # faucet behind the basin
    fy = yc + d / 2 - 0.0125 if kind != "vessel" else yc + d / 2 + 0.04
    fz = z0 + h if kind != "vessel" else z0
    prims.append(C(0, fy, fz, fz + U(0.18, 0.28), 0.014, mh))
    top = prims[-1].center[2] + prims[-1].half[2]
    sl = U(0.1, 0.16)
    prims.append(B(0, fy - sl / 2, top - 0.025, 0.025, sl, 0.025, mh))
    return prims


def build_sink(rng) -> list[_Proto]:
    """Bathroom sink against a wall: basin on a pedestal or wall-hung."""
    U = rng.uniform
    m, mh = _material(rng, "ceramic"), _material(rng, "metal")
    z0 = U(0.66, 0.72)
    prims = _sink_basin(rng, z0, -0.25, 0, 1, "wall")
    d = 2 * abs(prims[1].center[1] - (-0.25)) + 0.025
    prims = [p.moved(np.eye(3), np.array([0, 0.25 - d / 2, 0])) for p in prims]
    if rng.random() < 0.65:
        prims.append(C(0, -d / 2, 0, z0, U(0.07, 0.1), 0))
    return [_Proto("sink", prims, [m, mh])]


def build_counter(rng, with_sink=None, w=None) -> list[_Proto]:
    U = rng.uniform
    w = w or U(1.2, 2.6)
    d, h, t = U(0.58, 0.66), U(0.86, 0.92), U(0.03, 0.045)
    body = _material(rng, _pick(rng, ("wood", "laminate")))
    topm = _material(rng, _pick(rng, ("tile", "laminate", "metal", "ceramic")))
    mh = _material(rng, "metal")
    kick = 0.08
    prims = [
        B(0, 0.01, kick, w, d - 0.02, h - t - kick, 0),
        B(0, 0.04, 0, w, d - 0.08, kick, 0),
        B(0, 0, h - t, w + 0.02, d, t, 1),
    ]
    prims += _fronts(rng, -w / 2, w / 2, -d / 2 + 0.02, kick, h - t, 2, rows=1, cols=max(1, int(round(w / 0.5))))
    out = [_Proto("counter", prims, [body, topm, mh])]
    with_sink = rng.random() < 0.7 if with_sink is None else with_sink
    x_free = (-w / 2 + 0.05, w / 2 - 0.05)
    if with_sink:
        sm, smh = _material(rng, _pick(rng, ("ceramic", "metal"))), _material(rng, "metal")
        sp = _sink_basin(rng, h, -0.02, 0, 1, "vessel")
        sx = U(-w / 2 + 0.35, w / 2 - 0.35) if w > 0.8 else 0.0
        sp = [p.moved(np.eye(3), np.array([sx, 0, 0])) for p in sp]
        out.append(_Proto("sink", sp, [sm, smh]))
        x_free = (sx + 0.35, w / 2 - 0.05) if sx < 0 else (-w / 2 + 0.05, sx - 0.35)
    if rng.random() < 0.6 and x_free[1] - x_free[0] > 0.3:
        out += _clutter(rng, x_free[0], x_free[1], -d / 2 + 0.05, d / 2 - 0.05, h, int(rng.integers(1, 3)))
    return out


def build_refrigerator(rng) -> list[_Proto]:
    U = rng.uniform
    w, d, h = U(0.6, 0.9), U(0.62, 0.75), U(1.65, 1.95)
    m = _material(rng, _pick(rng, ("metal", "laminate", "ceramic")))
    mh = _material(rng, "metal")
    zs = h * (U(0.62, 0.72) if rng.random() < 0.6 else U(0.3, 0.4))
    yf = -d / 2 + 0.02
    prims = [
        B(0, 0.01, 0, w, d - 0.02, h, 0),
        B(0, yf - 0.015, 0.02, w - 0.01, 0.03, zs - 0.025, 0),
        B(0, yf - 0.015, zs + 0.005, w - 0.01, 0.03, h - zs - 0.015, 0),
    ]
    hx = (w / 2 - 0.07) * (1 if rng.random() < 0.5 else -1)
    for z0, z1 in ((0.02, zs - 0.005), (zs + 0.005, h - 0.01)):
        hl = min(0.5, 0.6 * (z1 - z0))
        zc = (z0 + z1) / 2
        prims.append(B(hx, yf - 0.06, zc - hl / 2, 0.025, 0.03, hl, 1))
        for dz in (-hl / 2 + 0.03, hl / 2 - 0.03):
            prims.append(B(hx, yf - 0.0375, zc + dz - 0.01, 0.02, 0.015, 0.02, 1))
    return [_Proto("refrigerator", prims, [m, mh])]


def build_toilet(rng) -> list[_Proto]:
    U = rng.uniform
    m = _material(rng, "ceramic")
    tw, td, tz, th = U(0.36, 0.45), U(0.15, 0.2), U(0.38, 0.45), U(0.3, 0.38)
    yb = -td - U(0.16, 0.22)
    rb = U(0.17, 0.2)
    prims = [
        B(0, -td / 2, tz, tw, td, th, 0),  # tank
        B(0, -td / 2, tz + th, tw + 0.02, td + 0.02, 0.03, 0),  # tank lid
        B(0, -td / 2 - 0.04, 0, 0.22, td + 0.08 - 0.02, tz, 0),  # rear pedestal
        C(0, yb + 0.04, 0, 0.2, U(0.1, 0.13), 0),
        C(0, yb, 0.18, 0.38, rb, 0),
        C(0, yb, 0.38, 0.405, rb + 0.01, 0),  # seat
    ]
    return [_Proto("toilet", prims, [m])]


def build_bathtub(rng, curtain=None) -> list[_Proto]:
    U = rng.uniform
    w, d, h, t = U(1.5, 1.8), U(0.7, 0.8), U(0.5, 0.6), U(0.06, 0.1)
    m = _material(rng, "ceramic")
    prims = _open_box(-d / 2, 0, w, d, h, t, 0.08, 0)
    out = [_Proto("bathtub", prims, [m])]
    curtain = rng.random() < 0.85 if curtain is None else curtain
    if curtain:
        cm = _material(rng, _pick(rng, ("fabric", "laminate", "art")))
        zt = U(1.85, 2.0)
        cover = w * U(0.45, 1.0)
        panels = _zigzag(rng, w / 2 - 0.02, w / 2 - 0.02 - cover, -d + t / 2, h + 0.03, zt, 0)
        out.append(_Proto("shower curtain", panels, [cm]))
        out.append(_Proto("otherprop", [CA([-w / 2, -d + t / 2, zt + 0.02], [w / 2, -d + t / 2, zt + 0.02], 0.012)], [_material(rng, "metal")]))
    return out


def _zigzag(rng, x_start, x_end, y0, z0, z1, m) -> list[Prim]:
    """Folded curtain: thin panels zig-zagging from x_start to x_end at depth ~y0 (-y = out)."""
    U = rng.uniform
    fw, ang = U(0.07, 0.12), U(0.35, 0.6)
    step = fw * math.cos(ang)
    n = max(1, int(math.ceil(abs(x_end - x_start) / step)))
    dirx = 1.0 if x_end > x_start else -1.0
    prims = []
    for i in range(n):
        xa = x_start + dirx * i * step
        xb = xa + dirx * step
        ya = y0 - (fw * math.sin(ang) if i % 2 else 0.0)
        yb = y0 - (0.0 if i % 2 else fw * math.sin(ang))
        yaw = math.atan2(yb - ya, xb - xa)
        prims.append(B((xa + xb) / 2, (ya + yb) / 2, z0, fw + 0.006, 0.008, z1 - z0, m, yaw=yaw))
    return prims


def build_door(rng) -> list[_Proto]:
    U = rng.uniform
    w, h, t = U(0.8, 0.95), U(1.98, 2.1), U(0.035, 0.05)
    fw, ft = U(0.05, 0.08), U(0.015, 0.025)
    m = _material(rng, _pick(rng, ("wood", "paint", "laminate")))
    mh = _material(rng, "metal")
    hx = (w / 2 - 0.07) * (1 if rng.random() < 0.5 else -1)
    prims = [
        B(0, -t / 2, 0, w, t, h, 0),
        B(-(w / 2 + fw / 2), -ft / 2, 0, fw, ft, h + fw, 0),
        B(w / 2 + fw / 2, -ft / 2, 0, fw, ft, h + fw, 0),
        B(0, -ft / 2, h, w, ft, fw, 0),
        B(hx, -t - 0.0125, 0.99, 0.025, 0.025, 0.025, 1),
        B(hx - 0.05 * np.sign(hx), -t - 0.03, 0.99, 0.13, 0.02, 0.022, 1),
    ]
    occ = [(np.array([-w / 2, -0.9, 0.0]), np.array([w / 2, 0.0, h]))]  # keep the swing free
    return [_Proto("door", prims, [m, mh], occ)]


def build_window(rng, room_h, curtain_p) -> list[_Proto]:
    U = rng.uniform
    w, wh = U(0.7, 1.6), U(0.9, 1.4)
    z0 = U(0.75, 1.05)
    wh = min(wh, room_h - 0.15 - z0)
    fw, ft, sd = U(0.04, 0.07), U(0.04, 0.07), U(0.1, 0.18)
    glass, frame = _material(rng, "glass"), _material(rng, _pick(rng, ("paint", "metal", "wood")))
    prims = [
        B(0, -0.01, z0, w, 0.02, wh, 0),
        B(-(w / 2 - fw / 2), -ft / 2, z0, fw, ft, wh, 1),
        B(w / 2 - fw / 2, -ft / 2, z0, fw, ft, wh, 1),
        B(0, -ft / 2, z0 + wh - fw, w - 2 * fw, ft, fw, 1),
        B(0, -ft / 2, z0, w - 2 * fw, ft, fw, 1),
        B(0, -sd / 2, z0 - 0.03, w + 0.1, sd, 0.03, 1),
    ]
    if rng.random() < 0.6:
        prims.append(B(0, -ft / 2, z0 + fw, fw * 0.7, ft, wh - 2 * fw, 1))
    if rng.random() < 0.3:
        prims.append(B(0, -ft / 2, z0 + wh * 0.65, w - 2 * fw, ft, fw * 0.7, 1))
    out = [_Proto("window", prims, [glass, frame], [(np.array([-w / 2, -0.2, z0 - 0.05]), np.array([w / 2, 0.0, z0 + wh]))])]
    if rng.random() < curtain_p:
        cm = _material(rng, _pick(rng, ("fabric", "fabric", "laminate", "art")))
        zt = min(z0 + wh + U(0.08, 0.2), room_h - 0.05)
        zb = 0.02 if rng.random() < 0.6 else z0 - 0.12
        y0 = -max(ft, sd) - U(0.03, 0.08)
        for side in (-1, 1):
            outer = side * (w / 2 + U(0.05, 0.2))
            cw = U(0.3, 0.6)
            out.append(_Proto("curtain", _zigzag(rng, outer, outer - side * cw, y0, zb, zt, 0), [cm]))
        out.append(_Proto("otherprop", [CA([-w / 2 - 0.3, y0 - 0.03, zt + 0.03], [w / 2 + 0.3, y0 - 0.03, zt + 0.03], 0.013)], [_material(rng, "metal")]))
    return out


def build_picture(rng) -> list[_Proto]:
    U = rng.uniform
    w, h, t = U(0.3, 1.1), U(0.25, 0.85), U(0.015, 0.035)
    zc = U(1.25, 1.7)
    art = _material(rng, "art")
    prims = [B(0, -t / 2, zc - h / 2, w, t, h, 0)]
    mats = [art]
    if rng.random() < 0.6:
        mats.append(_material(rng, _pick(rng, ("wood", "metal", "paint"))))
        fw = U(0.02, 0.05)
        ft = t + 0.01
        prims += [
            B(-(w / 2 + fw / 2), -ft / 2, zc - h / 2 - fw, fw, ft, h + 2 * fw, 1),
            B(w / 2 + fw / 2, -ft / 2, zc - h / 2 - fw, fw, ft, h + 2 * fw, 1),
            B(0, -ft / 2, zc + h / 2, w, ft, fw, 1),
            B(0, -ft / 2, zc - h / 2 - fw, w, ft, fw, 1),
        ]
    return [_Proto("picture", prims, mats)]


def build_otherfurniture(rng) -> list[_Proto]:
    U = rng.uniform
    kind = _pick(rng, ("stool", "ottoman", "side_table", "bin", "rack"))
    m = _material(rng, _pick(rng, ("wood", "fabric", "laminate", "metal")))
    if kind == "stool":
        r, h = U(0.15, 0.2), U(0.45, 0.75)
        prims = [C(0, 0, h - 0.04, h, r, 0)]
        for k in range(int(rng.integers(3, 5))):
            a = 2 * np.pi * k / 4 + 0.3
            prims.append(C(math.cos(a) * (r - 0.04), math.sin(a) * (r - 0.04), 0, h - 0.04, 0.017, 0))
        prims.append(C(0, 0, h * 0.3, h * 0.3 + 0.02, r - 0.03, 0, ("side",)))
    elif kind == "ottoman":
        prims = [B(0, 0, 0, U(0.4, 0.7), U(0.4, 0.7), U(0.35, 0.45), 0)]
    elif kind == "side_table":
        r, h = U(0.2, 0.3), U(0.45, 0.6)
        prims = [C(0, 0, h - 0.03, h, r, 0), C(0, 0, 0.02, h - 0.03, 0.03, 0), C(0, 0, 0, 0.02, r * 0.7, 0)]
    elif kind == "bin":
        prims = [C(0, 0, 0, U(0.3, 0.5), U(0.12, 0.18), 0)]
    else:  # rack / coat stand-ish open frame
        w, d, h = U(0.5, 0.9), U(0.3, 0.45), U(0.8, 1.4)
        prims = []
        for sx in (-1, 1):
            for sy in (-1, 1):
                prims.append(B(sx * (w / 2 - 0.015), sy * (d / 2 - 0.015), 0, 0.03, 0.03, h, 0))
        for z in np.linspace(0.1, h - 0.02, int(rng.integers(2, 4))):
            prims.append(B(0, 0, z, w - 0.06, d - 0.06, 0.02, 0))
    return [_Proto("otherfurniture", prims, [m])]


# ============================================================================ layout


class _Layout:
    def __init__(self, rng, Lx, Ly, H, label_ids=None):
        self.rng = rng
        self.L = np.array([Lx, Ly, H])
        self.label_ids = NYU40 if label_ids is None else label_ids  # generator class -> raw label id
        self.occ: list[tuple[np.ndarray, np.ndarray]] = []
        self.objects: list[SceneObject] = []
        # walls: origin, tangent, inward normal, length
        self.walls = [
            (np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), Lx),
            (np.array([Lx, 0.0]), np.array([0.0, 1.0]), np.array([-1.0, 0.0]), Ly),
            (np.array([Lx, Ly]), np.array([-1.0, 0.0]), np.array([0.0, -1.0]), Lx),
            (np.array([0.0, Ly]), np.array([0.0, -1.0]), np.array([1.0, 0.0]), Ly),
        ]

    # -- occupancy
    def _free(self, lo, hi, pad) -> bool:
        if np.any(lo[:2] < -1e-6) or np.any(hi[:2] > self.L[:2] + 1e-6) or hi[2] > self.L[2]:
            return False
        lo_p = lo - np.array([pad, pad, 0.0])
        hi_p = hi + np.array([pad, pad, 0.0])
        for a, b in self.occ:
            if np.all(lo_p < b - 1e-6) and np.all(a < hi_p - 1e-6):
                return False
        return True

    @staticmethod
    def _world_boxes(proto: _Proto, Rw, t):
        lo, hi = proto.aabb()
        boxes = [(lo, hi)] + list(proto.occ)
        out = []
        for a, b in boxes:
            c = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])]) @ Rw.T + t
            out.append((c.min(0), c.max(0)))
        return out

    def try_place(self, protos: list[_Proto], candidates, pad=0.05, n_required=1) -> bool:
        """Place ``protos[:n_required]`` at the first free candidate pose; add the optional
        rest where they fit. ``candidates`` yields ``(yaw, translation)``."""
        for yaw, t in candidates:
            Rw = _rz(yaw)
            boxes = [self._world_boxes(p, Rw, t) for p in protos]
            if not all(self._free(lo, hi, pad) for bx in boxes[:n_required] for lo, hi in bx):
                continue
            # optional children: only checked against what existed before this group
            ok = list(range(n_required))
            for i in range(n_required, len(protos)):
                if all(self._free(lo, hi, 0.0) for lo, hi in boxes[i]):
                    ok.append(i)
            for i in ok:
                self._add(protos[i], Rw, t)
                self.occ += boxes[i]
            return True
        return False

    def _add(self, proto: _Proto, Rw, t):
        prims = [p.moved(Rw, t) for p in proto.prims]
        self.objects.append(SceneObject(proto.cls, self.label_ids[proto.cls], len(self.objects), prims, proto.mats))

    # -- candidate generators
    def wall_candidates(self, protos, tries=30, corner=False, gap=0.0, z=0.0, walls=None):
        lo, hi = protos[0].aabb()
        w = hi[0] - lo[0]
        xc = (lo[0] + hi[0]) / 2
        lens = np.array([self.walls[i][3] for i in range(4)])
        allowed = list(range(4)) if walls is None else list(walls)
        p = lens[allowed] / lens[allowed].sum()
        for _ in range(tries):
            wi = allowed[int(self.rng.choice(len(allowed), p=p))]
            o, tng, n, L = self.walls[wi]
            if L < w + 0.04:
                continue
            if corner:
                s = w / 2 if self.rng.random() < 0.5 else L - w / 2
            else:
                s = self.rng.uniform(w / 2 + 0.02, L - w / 2 - 0.02)
            yaw = math.atan2(n[0], -n[1])
            Rw = _rz(yaw)
            # local +y -> -n ; local x -> along the wall; shift so the footprint centre sits at s
            base = o + s * tng + n * (hi[1] + gap)
            t = np.array([base[0], base[1], z]) - Rw @ np.array([xc, 0.0, 0.0])
            yield yaw, t

    def free_candidates(self, protos, tries=30, margin=0.3, jitter=0.0):
        lo, hi = protos[0].aabb()
        r = 0.7 * float(np.hypot(*(np.maximum(np.abs(lo[:2]), np.abs(hi[:2])))))
        x0, x1 = margin + r, self.L[0] - margin - r
        y0, y1 = margin + r, self.L[1] - margin - r
        if x1 <= x0 or y1 <= y0:
            return
        for _ in range(tries):
            yaw = self.rng.integers(4) * np.pi / 2 + self.rng.uniform(-jitter, jitter)
            yield yaw, np.array([self.rng.uniform(x0, x1), self.rng.uniform(y0, y1), 0.0])


def _with_chairs(rng, table: list[_Proto], n_max: int) -> list[_Proto]:
    """Chairs facing the table from its sides (optional children of the group)."""
    lo, hi = table[0].aabb()
    out = list(table)
    sides = [(0, -1), (0, 1), (-1, 0), (1, 0)]
    order = rng.permutation(4)
    n = 0
    for k in order:
        if n >= n_max:
            break
        sx, sy = sides[k]
        ch = build_chair(rng, "standard")[0]
        clo, chi = ch.aabb()
        pull = rng.uniform(-0.08, 0.2)
        # chair front faces -y in its own frame; turn it towards the table
        yaw = {(0, -1): np.pi, (0, 1): 0.0, (-1, 0): np.pi / 2, (1, 0): -np.pi / 2}[(sx, sy)]
        depth_half = (chi[1] - clo[1]) / 2
        if sy != 0:
            pos = np.array([rng.uniform(-0.15, 0.15) * (hi[0] - lo[0]), sy * (hi[1] + depth_half + pull), 0.0])
        else:
            pos = np.array([sx * (hi[0] + depth_half + pull), rng.uniform(-0.15, 0.15) * (hi[1] - lo[1]), 0.0])
        yaw += rng.uniform(-0.25, 0.25)
        out.append(_Proto("chair", [p.moved(_rz(yaw), pos) for p in ch.prims], ch.mats))
        n += 1
    return out


def _room_recipe(rng, theme: str):
    """List of (probability, placement, builder, options) for a theme."""
    recipe = []

    def add(p, kind, fn, **kw):
        recipe.append((p, kind, fn, kw))

    if theme == "bedroom":
        add(1.0, "wall", lambda r: build_bed(r, nightstands=True))
        add(0.6, "wall", lambda r: build_desk(r) + _desk_chair(r))
        add(0.5, "wall", lambda r: build_cabinet(r, "tall"))
        add(0.45, "wall", build_bookshelf)
        add(0.3, "wall", lambda r: build_cabinet(r, "low"))
        add(0.5, "free", build_otherfurniture)
        add(0.15, "wall", build_sofa)
    elif theme == "living":
        add(1.0, "wall", build_sofa)
        add(0.9, "free", lambda r: build_table(r, "coffee"))
        add(0.6, "free", lambda r: _with_chairs(r, build_table(r, _pick(r, ("rect", "round"))), int(r.integers(2, 5))), n_required=1)
        add(0.6, "wall", build_bookshelf)
        add(0.6, "wall", lambda r: build_cabinet(r, "low"))
        add(0.5, "free", build_otherfurniture)
        add(0.4, "free", build_otherfurniture)
        add(0.25, "free", lambda r: build_chair(r))
        add(0.15, "wall", build_desk)
    elif theme == "office":
        for p in (1.0, 0.75, 0.4):
            add(p, "wall", lambda r: build_desk(r) + _desk_chair(r))
        add(0.55, "free", lambda r: _with_chairs(r, build_table(r, "rect"), int(r.integers(2, 5))))
        add(0.65, "wall", build_bookshelf)
        add(0.7, "wall", lambda r: build_cabinet(r, _pick(r, ("file", "tall", "low"))))
        add(0.4, "wall", lambda r: build_cabinet(r, _pick(r, ("file", "low"))))
        add(0.35, "free", build_otherfurniture)
        add(0.2, "wall", build_sofa)
        add(0.15, "wall", build_refrigerator)
    elif theme == "kitchen":
        add(1.0, "wall", lambda r: _kitchen_run(r))
        add(0.85, "wall", build_refrigerator)
        add(0.4, "wall", lambda r: build_counter(r, with_sink=False))
        add(0.75, "free", lambda r: _with_chairs(r, build_table(r, _pick(r, ("rect", "round"), p=(0.7, 0.3))), int(r.integers(2, 5))))
        add(0.5, "wall", lambda r: build_cabinet(r, _pick(r, ("low", "tall"))))
        add(0.35, "free", build_otherfurniture)
        add(0.15, "wall", build_bookshelf)
    elif theme == "bathroom":
        add(0.9, "corner", lambda r: build_bathtub(r))
        add(1.0, "wall", build_toilet)
        add(0.6, "wall", build_sink)
        add(0.6, "wall", lambda r: build_counter(r, with_sink=True, w=r.uniform(0.8, 1.5)))
        add(0.5, "wall", lambda r: build_cabinet(r, _pick(r, ("low", "tall"))))
        add(0.35, "free", build_otherfurniture)
        add(0.2, "wall", build_toilet)
        add(0.15, "wall", build_bookshelf)
    else:
        raise ValueError(f"unknown theme {theme!r}; expected one of {THEMES}")
    # a little of everything everywhere, so classes are not fully determined by the theme
    extras = [
        ("wall", build_bookshelf), ("wall", lambda r: build_cabinet(r)), ("free", build_otherfurniture),
        ("free", lambda r: build_chair(r)), ("free", lambda r: build_table(r)), ("wall", build_desk),
        ("wall", build_sofa), ("wall", build_refrigerator), ("wall", lambda r: build_counter(r)),
        ("wall", build_sink), ("wall", build_toilet), ("corner", lambda r: build_bathtub(r)),
        ("wall", build_bed),
    ]
    for _ in range(int(rng.integers(2, 6))):
        kind, fn = extras[int(rng.integers(len(extras)))]
        add(1.0, kind, fn)
    return recipe


def _desk_chair(rng) -> list[_Proto]:
    ch = build_chair(rng)[0]
    y = -rng.uniform(0.55, 0.8)
    yaw = np.pi + rng.uniform(-0.4, 0.4)  # face the desk (+y)
    return [_Proto("chair", [p.moved(_rz(yaw), np.array([rng.uniform(-0.2, 0.2), y, 0.0])) for p in ch.prims], ch.mats)]


def _kitchen_run(rng) -> list[_Proto]:
    """Counter (with sink) plus wall cabinets hung above it."""
    base = build_counter(rng, with_sink=rng.random() < 0.85)
    lo, hi = base[0].aabb()
    w = hi[0] - lo[0] - 0.02
    out = list(base)
    if rng.random() < 0.75:
        up = build_cabinet(rng, "upper")[0]
        ulo, uhi = up.aabb()
        uw = uhi[0] - ulo[0]
        if uw > w:
            up = _Proto("cabinet", [B(0, 0.01, 0, w, 0.33, 0.7, 0)] + _fronts(rng, -w / 2, w / 2, -0.155, 0, 0.7, 1, cols=max(1, int(round(w / 0.45)))), up.mats)
            ulo, uhi = up.aabb()
        z = rng.uniform(1.4, 1.5)
        dy = hi[1] - uhi[1]
        out.append(up.shifted([rng.uniform(-(w - (uhi[0] - ulo[0])) / 2, (w - (uhi[0] - ulo[0])) / 2), dy, z]))
    return out


def _build_layout(rng, theme: str, room_size=None) -> _Layout:
    U = rng.uniform
    if room_size is None:
        Lx, Ly, H = U(3.5, 6.0), U(3.0, 5.0), U(2.5, 2.8)
    else:
        Lx, Ly, H = room_size
    lay = _Layout(rng, Lx, Ly, H)
    curtain_p = {"bedroom": 0.8, "living": 0.7, "office": 0.35, "kitchen": 0.3, "bathroom": 0.15}[theme]
    # doors first (they reserve their swing), then windows (+ curtains)
    for p in (0.97, 0.25):
        if rng.random() < p:
            protos = build_door(rng)
            lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    n_win = int(rng.choice(4, p=(0.1, 0.45, 0.35, 0.1)))
    for _ in range(n_win):
        protos = build_window(rng, H, curtain_p)
        lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    for p, kind, fn, kw in _room_recipe(rng, theme):
        if rng.random() >= p:
            continue
        protos = fn(rng)
        if kind == "free":
            cands = lay.free_candidates(protos, jitter=0.3)
            pad = 0.25
        else:
            cands = lay.wall_candidates(protos, corner=(kind == "corner"))
            pad = 0.05
        lay.try_place(protos, cands, pad=pad, n_required=kw.get("n_required", 1))
    n_pic = int(rng.integers(0, 2 if theme == "bathroom" else 4))
    for _ in range(n_pic):
        protos = build_picture(rng)
        lay.try_place(protos, lay.wall_candidates(protos, tries=20), pad=0.1)
    if rng.random() < 0.5:  # floor clutter (otherprop)
        c = _clutter(rng, -0.3, 0.3, -0.3, 0.3, 0.0, 1)
        if c:
            lay.try_place(c[:1], lay.free_candidates(c[:1], tries=10), pad=0.2)
    return lay


# ============================================================================ scene


@dataclass
class SyntheticScene:
    """A generated scene: point cloud, mesh with per-triangle attributes, RGB-D frames."""

    scene_id: str
    theme: str
    room_size: np.ndarray  # (3,) Lx, Ly, H (room spans [0, Lx] x [0, Ly], floor at z = 0)
    # point cloud
    coord: np.ndarray  # (N, 3) float32, with sensor noise
    coord_clean: np.ndarray  # (N, 3) float32, exactly on the surfaces
    normal: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) uint8, with colour noise
    label: np.ndarray  # (N,) int64 NYU40 id
    instance: np.ndarray  # (N,) int64 object index
    point_tri: np.ndarray  # (N,) int64 triangle each point was sampled on
    # mesh
    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (T, 3) int32
    tri_normal: np.ndarray  # (T, 3) float64
    tri_label: np.ndarray  # (T,) int64 NYU40
    tri_instance: np.ndarray  # (T,) int64
    tri_material: np.ndarray  # (T,) int64
    materials: MaterialTable
    objects: list[dict]
    # frames
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    poses: np.ndarray  # (F, 4, 4) camera-to-world, OpenCV axes
    frame_color: np.ndarray  # (F, H, W, 3) uint8
    frame_depth: np.ndarray  # (F, H, W) float32 metres, z-depth, 0 = no hit
    frame_label: np.ndarray  # (F, H, W) uint16 NYU40 (0 = no hit)
    frame_instance: np.ndarray  # (F, H, W) int32 (-1 = no hit)
    params: dict = field(default_factory=dict)
    _raycaster: Any = field(default=None, repr=False, compare=False)
    domain: str = "scannet"  # ``label`` holds raw ids of label_space(domain) (NYU40 for scannet)

    @property
    def segment20(self) -> np.ndarray:
        return nyu40_to_scannet20(self.label)

    @property
    def segment(self) -> np.ndarray:
        """Class indices 0..K-1 of the domain's label space (-1 = ignore)."""
        from pretrain3d.data.labels import label_space

        return label_space(self.domain).to_segment(self.label)

    def surface_color(self, points, tri_ids) -> np.ndarray:
        """The scene's colour function at surface points lying on triangles ``tri_ids``."""
        tri_ids = np.asarray(tri_ids, dtype=np.int64)
        return self.materials.color(points, self.tri_normal[tri_ids], self.tri_material[tri_ids])

    def raycaster(self):
        if self._raycaster is None:
            self._raycaster = _make_raycaster(self.vertices, self.triangles)
        return self._raycaster

    def render(self, K, pose_c2w, width, height, nthreads=0) -> dict:
        """Ray-cast an arbitrary view (see ``render_view``)."""
        return render_view(self, K, pose_c2w, width, height, nthreads=nthreads)

    def __getstate__(self):  # the Open3D ray caster does not pickle; rebuild it lazily
        state = self.__dict__.copy()
        state["_raycaster"] = None
        return state


def _stable_code(text: str) -> int:
    return sum((i + 1) * b for i, b in enumerate(text.encode()))  # stable, unlike hash()


def scene_seed(seed: int, split: str, index: int, domain: str = "scannet") -> np.random.SeedSequence:
    """SeedSequence of scene ``index`` of ``split``: independent of worker count/order. Another
    ``domain`` than scannet adds its own entropy word (scannet's seeds are those of version 1)."""
    words = [int(seed), _stable_code(split), int(index), GENERATOR_VERSION]
    if domain != "scannet":
        words.append(_stable_code(domain))
    return np.random.SeedSequence(words)


def _mesh_from_objects(objects: list[SceneObject]):
    """Concatenate all primitives; return mesh arrays plus primitive list for culling."""
    verts, tris, tri_obj, tri_mat, prims, tri_prim = [], [], [], [], [], []
    mats: list[Material] = []
    nv = 0
    for obj in objects:
        moff = len(mats)
        mats += obj.mats
        for p in obj.prims:
            v, f = p.mesh()
            verts.append(v)
            tris.append(f + nv)
            nv += len(v)
            tri_obj.append(np.full(len(f), obj.instance))
            tri_mat.append(np.full(len(f), moff + p.mat))
            tri_prim.append(np.full(len(f), len(prims)))
            prims.append(p)
    V = np.concatenate(verts)
    T = np.concatenate(tris)
    return V, T, np.concatenate(tri_obj), np.concatenate(tri_mat), np.concatenate(tri_prim), prims, mats


def _structure(rng, Lx, Ly, H) -> list[_Proto]:
    """Floor and walls as slabs outside the room whose inner face alone is meshed."""
    th = 0.1
    floor_m = _material(rng, _pick(rng, ("planks", "tile", "carpet"), p=(0.4, 0.35, 0.25)))
    paint = _material(rng, "paint")
    out = [_Proto("floor", [B(Lx / 2, Ly / 2, -th, Lx, Ly, th, 0, faces=("+z",))], [floor_m])]
    walls = [
        B(Lx / 2, -th / 2, 0, Lx, th, H, 0, faces=("+y",)),
        B(Lx + th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("-x",)),
        B(Lx / 2, Ly + th / 2, 0, Lx, th, H, 0, faces=("-y",)),
        B(-th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("+x",)),
    ]
    for w in walls:
        m = paint if rng.random() < 0.85 else _material(rng, "paint")
        out.append(_Proto("wall", [w], [m]))
    return out


def _sample_surface(rng, V, T, tri_prim, prims, density):
    a, b, c = V[T[:, 0]], V[T[:, 1]], V[T[:, 2]]
    cr = np.cross(b - a, c - a)
    area2 = np.linalg.norm(cr, axis=1)
    normals = cr / np.maximum(area2, 1e-20)[:, None]
    total = float(area2.sum() / 2)
    n = int(round(total * density))
    tid = rng.choice(len(T), size=n, p=area2 / area2.sum())
    tid.sort()  # deterministic order, cache friendly
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    pts = a[tid] * (1 - s)[:, None] + b[tid] * (s * (1 - r2))[:, None] + c[tid] * (s * r2)[:, None]
    keep = _visible_surface_mask(pts, tri_prim[tid], prims)
    return pts[keep], tid[keep], normals, total


def _visible_surface_mask(pts, src, prims, eps=_CULL_EPS):
    """Drop samples inside (or within eps of) any other solid primitive."""
    keep = np.ones(len(pts), bool)
    order = np.argsort(pts[:, 0], kind="stable")
    xs = pts[order, 0]
    for j, p in enumerate(prims):
        if not p.solid:
            continue
        lo, hi = p.aabb()
        lo, hi = lo - eps, hi + eps
        i0, i1 = np.searchsorted(xs, lo[0], "left"), np.searchsorted(xs, hi[0], "right")
        if i1 <= i0:
            continue
        idx = order[i0:i1]
        q = pts[idx]
        m = (q[:, 1] >= lo[1]) & (q[:, 1] <= hi[1]) & (q[:, 2] >= lo[2]) & (q[:, 2] <= hi[2]) & (src[idx] != j)
        idx = idx[m]
        if not len(idx):
            continue
        loc = (pts[idx] - p.center) @ p.R
        if p.kind == "box":
            inside = np.all(np.abs(loc) <= p.half + eps, axis=1)
        else:
            inside = (loc[:, 0] ** 2 + loc[:, 1] ** 2 <= (p.half[0] + eps) ** 2) & (np.abs(loc[:, 2]) <= p.half[2] + eps)
        keep[idx[inside]] = False
    return keep


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


_RESCAN_KEY = 0x5CA7  # spawn-key element of a rescan's random streams (disjoint from scene_seed's)
# what a person moves between two captures of a room
MOVABLE = ("chair", "pillow", "books", "otherprop", "otherfurniture")


def _move_objects(rng, lay: "_Layout", n: int, movable=MOVABLE) -> list[int]:
    """Shift and turn up to ``n`` movable objects of ``lay`` in place; returns the indices of those moved."""
    idx = [i for i, o in enumerate(lay.objects) if o.cls in movable]
    if not idx or n <= 0:
        return []
    pick = sorted(int(i) for i in rng.choice(idx, size=min(n, len(idx)), replace=False))
    L = lay.L
    moved = []
    for i in pick:
        o = lay.objects[i]
        lo, hi = o.aabb()
        c = (lo + hi) / 2
        for _ in range(20):  # a shift and turn that keep the footprint inside the room
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5)
            Rw = _rz(rng.uniform(-np.pi / 6, np.pi / 6))
            t = c + np.array([dist * math.cos(ang), dist * math.sin(ang), 0.0]) - Rw @ c  # turn about the centre
            prims = [p.moved(Rw, t) for p in o.prims]
            a = np.min([p.aabb()[0] for p in prims], 0)
            b = np.max([p.aabb()[1] for p in prims], 0)
            if np.all(a[:2] > 0.02) and np.all(b[:2] < L[:2] - 0.02):
                o.prims = prims
                moved.append(i)
                break
    return moved


def default_intrinsics(width: int, height: int) -> np.ndarray:
    f = 0.9 * width
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def generate_scene(
    seed: int | np.random.SeedSequence = 0,
    *,
    scene_id: str = "synth",
    num_frames: int = 8,
    width: int = 160,
    height: int = 120,
    points_per_m2: float = DEFAULT_POINTS_PER_M2,
    theme: str | None = None,
    room_size: tuple[float, float, float] | None = None,
    pos_noise: float | None = None,
    color_noise: float | None = None,
    nthreads: int = 0,
    rescan: int = 0,
    moved_objects: int = 3,
    domain: str = "scannet",
) -> SyntheticScene:
    """Generate one scene; bit-identical for the same arguments.

    ``seed`` may be an int or a SeedSequence (see ``scene_seed``). ``theme`` picks the room
    type (one of ``THEMES``; random when None). ``nthreads`` is passed to Open3D's ray caster
    (0 = all cores).

    ``rescan`` k > 0 re-captures the same room (as ScanNet's ``sceneXXXX_01``, ``_02``): the layout
    comes from the same seed, but the surface sampling, the sensor noise and the camera path are
    drawn anew, and ``moved_objects`` movable objects (chairs, pillows, props, ...) are shifted by
    0.15-0.5 m and turned by up to 30 degrees (kept inside the room; they may touch a neighbour).

    ``domain`` picks the dataset imitated (see ``pretrain3d.data.synthetic_domains``): its room
    types (``theme``), recipes, label space (``label`` then holds that space's raw ids), colour
    character, sampling density (``points_per_m2`` times the domain's factor; scannet: 1) and, when
    ``pos_noise`` / ``color_noise`` are None, its sensor noise (scannet: 0.005 m, 3.0).
    """
    spec = None
    if domain != "scannet":
        from pretrain3d.data.synthetic_domains import domain_spec

        spec = domain_spec(domain)
    pos_noise = (0.005 if spec is None else spec.pos_noise) if pos_noise is None else pos_noise
    color_noise = (3.0 if spec is None else spec.color_noise) if color_noise is None else color_noise
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    r_layout, r_sample, r_noise, r_cam = (np.random.default_rng(s) for s in ss.spawn(4))
    if spec is None:
        if theme is None:
            theme = THEMES[int(r_layout.choice(len(THEMES), p=_THEME_P))]
        lay = _build_layout(r_layout, theme, room_size)
    else:
        theme = spec.pick_theme(r_layout) if theme is None else spec.check_theme(theme)
        lay = spec.build_layout(r_layout, theme, room_size)
    if rescan:
        rs = np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (_RESCAN_KEY, int(rescan)))
        r_sample, r_noise, r_cam, r_move = (np.random.default_rng(s) for s in rs.spawn(4))
        _move_objects(r_move, lay, moved_objects, MOVABLE if spec is None else spec.movable)
    Lx, Ly, H = lay.L
    struct = _structure(r_layout, Lx, Ly, H) if spec is None else spec.structure(r_layout, lay)
    objects: list[SceneObject] = []
    for proto in struct:
        objects.append(SceneObject(proto.cls, lay.label_ids[proto.cls], len(objects), proto.prims, proto.mats))
    for o in lay.objects:
        objects.append(SceneObject(o.cls, o.nyu40, len(objects), o.prims, o.mats))

    V, T, tri_obj, tri_mat, tri_prim, prims, mats = _mesh_from_objects(objects)
    mtab = MaterialTable.pack(mats)
    tri_label = np.array([objects[i].nyu40 for i in range(len(objects))], np.int64)[tri_obj]

    density = points_per_m2 if spec is None else points_per_m2 * spec.density_factor
    pts, tid, tri_normal, _ = _sample_surface(r_sample, V, T, tri_prim, prims, density)
    if spec is not None:
        mtab.base = spec.recolor(mtab.base)  # the domain's colour character (points and frames alike)
        keep = spec.holes(r_noise, pts, tri_label[tid])
        pts, tid = pts[keep], tid[keep]
    nrm = tri_normal[tid]
    col_clean = mtab.color(pts, nrm, tri_mat[tid])
    noisy = pts + nrm * r_noise.normal(0.0, pos_noise, size=(len(pts), 1))
    col = np.clip(np.rint(col_clean + r_noise.normal(0.0, color_noise, size=col_clean.shape)), 0, 255).astype(np.uint8)

    scene = SyntheticScene(
        scene_id=scene_id,
        theme=theme,
        room_size=lay.L.copy(),
        coord=noisy.astype(np.float32),
        coord_clean=pts.astype(np.float32),
        normal=nrm.astype(np.float32),
        color=col,
        label=tri_label[tid],
        instance=tri_obj[tid].astype(np.int64),
        point_tri=tid.astype(np.int64),
        vertices=V.astype(np.float32),
        triangles=T.astype(np.int32),
        tri_normal=tri_normal,
        tri_label=tri_label,
        tri_instance=tri_obj.astype(np.int64),
        tri_material=tri_mat.astype(np.int64),
        materials=mtab,
        objects=[
            {
                "instance": o.instance,
                "class": o.cls,
                ("nyu40" if spec is None else "label"): o.nyu40,
                "aabb": [a.round(4).tolist() for a in o.aabb()],
            }
            for o in objects
        ],
        K=default_intrinsics(width, height),
        width=width,
        height=height,
        poses=_camera_path(r_cam, lay.L, objects, num_frames),
        frame_color=np.zeros((0, height, width, 3), np.uint8),
        frame_depth=np.zeros((0, height, width), np.float32),
        frame_label=np.zeros((0, height, width), np.uint16),
        frame_instance=np.zeros((0, height, width), np.int32),
        params={
            "num_frames": num_frames,
            "width": width,
            "height": height,
            "points_per_m2": points_per_m2,
            "pos_noise": pos_noise,
            "color_noise": color_noise,
            **({} if spec is None else {"domain": domain, "density_factor": spec.density_factor}),
        },
        domain=domain,
    )
    if num_frames:
        views = [render_view(scene, scene.K, P, width, height, nthreads=nthreads) for P in scene.poses]
        scene.frame_color = np.stack([v["color"] for v in views])
        scene.frame_depth = np.stack([v["depth"] for v in views])
        scene.frame_label = np.stack([v["label"] for v in views])
        scene.frame_instance = np.stack([v["instance"] for v in views])
    return scene


# ============================================================================ writing


def _write_ply(path: Path, elements: list) -> None:
    from plyfile import PlyData

    PlyData(elements, text=False, byte_order="<").write(str(path))


def _matrix_text(M) -> str:
    return "\n".join(" ".join(f"{v:.9f}" for v in row) for row in np.asarray(M, dtype=np.float64)) + "\n"


def write_raw_scene(out_dir_root, scene_id: str, scene: SyntheticScene, write_frame_labels: bool = True) -> Path:
    """Write ``scene`` under ``<root>/scans/<scene_id>/`` in a ScanNet-like raw layout.

    The folder appears atomically (complete or not at all). Layout::

        <id>_vh_clean_2.ply          vertex: float x,y,z,nx,ny,nz; uchar red,green,blue,alpha
                                     (+ an empty ``face`` element, as ScanNet meshes have one)
        <id>_vh_clean_2.labels.ply   vertex: float x,y,z; uchar red,green,blue,alpha; ushort label (NYU40)
        <id>_instance.npy            int64 instance id per vertex (-1 = none)
        frames/intrinsic/intrinsic_depth.txt, intrinsic_color.txt   4x4, K top-left
        frames/color/<i>.jpg         JPEG quality 95
        frames/depth/<i>.png         uint16 millimetres, 0 = invalid
        frames/pose/<i>.txt          4x4 camera-to-world
        frames/label/<i>.png         uint16 NYU40 per pixel, 0 = none (only if write_frame_labels)
        generator.json               generator parameters of this scene

    Another domain than scannet writes its label space's raw ids where NYU40 ids stand above
    (``label_space(domain).raw_set``: NYU40 for structured3d, S3DIS index + 1 for s3dis) and
    records ``domain``, ``label_space`` and ``label_set`` in generator.json.
    """
    from PIL import Image
    from plyfile import PlyElement

    root = Path(out_dir_root)
    final = root / "scans" / scene_id
    N = len(scene.coord)
    with atomic_dir(final) as tmp:
        v = np.empty(
            N,
            dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                   ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")],
        )
        for i, k in enumerate("xyz"):
            v[k] = scene.coord[:, i]
            v["n" + k] = scene.normal[:, i]
        for i, k in enumerate(("red", "green", "blue")):
            v[k] = scene.color[:, i]
        v["alpha"] = 255
        faces = np.empty(0, dtype=[("vertex_indices", "i4", (3,))])
        _write_ply(
            tmp / f"{scene_id}_vh_clean_2.ply",
            [PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face", len_types={"vertex_indices": "u1"})],
        )
        lv = np.empty(
            N,
            dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                   ("alpha", "u1"), ("label", "<u2")],
        )
        for k in ("x", "y", "z", "red", "green", "blue", "alpha"):
            lv[k] = v[k]
        lv["label"] = scene.label.astype(np.uint16)
        _write_ply(tmp / f"{scene_id}_vh_clean_2.labels.ply", [PlyElement.describe(lv, "vertex")])
        np.save(tmp / f"{scene_id}_instance.npy", scene.instance.astype(np.int64))

        fr = tmp / "frames"
        for sub in ("intrinsic", "color", "depth", "pose") + (("label",) if write_frame_labels else ()):
            (fr / sub).mkdir(parents=True)
        K4 = np.eye(4)
        K4[:3, :3] = scene.K
        (fr / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_text(K4))
        (fr / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_text(K4))
        for i in range(len(scene.poses)):
            Image.fromarray(scene.frame_color[i]).save(fr / "color" / f"{i}.jpg", quality=95)
            mm = np.clip(np.rint(scene.frame_depth[i].astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
            Image.fromarray(mm).save(fr / "depth" / f"{i}.png")
            (fr / "pose" / f"{i}.txt").write_text(_matrix_text(scene.poses[i]))
            if write_frame_labels:
                Image.fromarray(scene.frame_label[i].astype(np.uint16)).save(fr / "label" / f"{i}.png")
        info = {
            "generator": "pretrain3d.data.synthetic",
            "version": GENERATOR_VERSION,
            "scene_id": scene_id,
            "theme": scene.theme,
            "room_size": [round(float(x), 6) for x in scene.room_size],
            "num_points": int(N),
            "num_frames": int(len(scene.poses)),
            "params": scene.params,
            "objects": [{k: o[k] for k in ("instance", "class", "nyu40", "label") if k in o} for o in scene.objects],
        }
        if scene.domain != "scannet":
            from pretrain3d.data.labels import label_space

            space = label_space(scene.domain)
            info.update(domain=scene.domain, label_space=space.name, label_set=space.raw_set)
        (tmp / "generator.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return final


def rescan_id(split: str, index: int, rescan: int, prefix: str = "synth") -> str:
    """Scene id of scene ``index`` of ``split``; rescans k > 0 get a suffix (``synth_val_0003_r1``).
    ``prefix`` is the domain's (``synth`` scannet, ``s3dis`` s3dis, ``st3d`` structured3d)."""
    return f"{prefix}_{split}_{index:04d}" + (f"_r{rescan}" if rescan else "")


def _domain_prefix(domain: str) -> str:
    if domain == "scannet":
        return "synth"
    from pretrain3d.data.synthetic_domains import domain_spec

    return domain_spec(domain).prefix


def _generate_one(job: tuple) -> dict:
    root, split, index, seed, kw, resume = job
    domain = kw.get("domain", "scannet")
    scene_id = rescan_id(split, index, kw.get("rescan", 0), _domain_prefix(domain))
    params = _scene_params(kw, [seed, split, index])
    gpath = Path(root) / "scans" / scene_id / "generator.json"
    if resume and gpath.exists():
        try:
            info = json.loads(gpath.read_text())
            if info.get("version") == GENERATOR_VERSION and info.get("params") == params:
                return {"scene_id": scene_id, "skipped": True, "num_points": info["num_points"], "theme": info["theme"]}
        except (OSError, ValueError, KeyError):
            pass
    t0 = time.perf_counter()
    scene = generate_scene(scene_seed(seed, split, index, domain), scene_id=scene_id, **kw)
    scene.params = params
    t1 = time.perf_counter()
    write_raw_scene(root, scene_id, scene)
    return {
        "scene_id": scene_id,
        "skipped": False,
        "num_points": int(len(scene.coord)),
        "theme": scene.theme,
        "gen_s": t1 - t0,
        "total_s": time.perf_counter() - t0,
    }


def _scene_params(kw: dict, seed_triple) -> dict:
    domain = kw.get("domain", "scannet")
    spec = None
    if domain != "scannet":
        from pretrain3d.data.synthetic_domains import domain_spec

        spec = domain_spec(domain)
    return {
        "seed": list(seed_triple),
        "num_frames": kw["num_frames"],
        "width": kw["width"],
        "height": kw["height"],
        "points_per_m2": kw["points_per_m2"],
        "pos_noise": kw.get("pos_noise", 0.005 if spec is None else spec.pos_noise),
        "color_noise": kw.get("color_noise", 3.0 if spec is None else spec.color_noise),
        "theme": kw.get("theme"),
        **({"rescan": kw["rescan"], "moved_objects": kw.get("moved_objects", 3)} if kw.get("rescan") else {}),
        **({} if spec is None else {"domain": domain, "density_factor": spec.density_factor}),
    }


def generate_dataset(
    root,
    num_train: int,
    num_val: int,
    seed: int = 0,
    frames_per_scene: int = 8,
    width: int = 160,
    height: int = 120,
    points_per_m2: float = DEFAULT_POINTS_PER_M2,
    workers: int = 1,
    progress: bool = True,
    resume: bool = True,
    themes: str = "cycle",
    rescans: int = 0,
    domain: str = "scannet",
) -> dict:
    """Write ``num_train`` + ``num_val`` scenes under ``root`` (see ``write_raw_scene``).

    Also writes ``<root>/splits/{train,val}.txt`` and ``<root>/meta.json`` (last, so its
    presence means the dataset is complete). Scene ``i`` of split ``s`` is seeded from
    ``(seed, s, i)``: output does not depend on ``workers``. With ``resume``, scenes whose
    ``generator.json`` records the same seed and parameters are kept rather than rebuilt.
    ``themes="cycle"`` gives scene ``i`` the room type ``THEMES[i % 5]`` (so any 5
    consecutive scenes cover every class family); ``"random"`` draws it from the seed.
    ``rescans`` k > 0 adds k re-captures of every val scene (``generate_scene(rescan=...)``) as the
    split ``rescan`` (``splits/rescan.txt``, ids ``synth_val_<i>_r<k>``), for duplicate-scene and
    image-to-scene queries; train and val are unchanged by it.
    ``domain`` (see ``generate_scene``) sets the room types that ``themes`` cycles through, the scene
    ids' prefix (``synth`` / ``s3dis`` / ``st3d``, so domains can share a folder of scans) and the
    label space, which meta.json records (``domain``, ``label_space``, ``label_set``, ``class_names``,
    ``class_raw_ids``; the scannet meta.json is unchanged) for preprocessing to map.
    Returns the meta dict.
    """
    from tqdm import tqdm

    root = Path(root)
    (root / "scans").mkdir(parents=True, exist_ok=True)
    if themes not in ("cycle", "random"):
        raise ValueError(f"themes must be 'cycle' or 'random', got {themes!r}")
    kw = dict(num_frames=frames_per_scene, width=width, height=height, points_per_m2=points_per_m2)
    theme_list, prefix = THEMES, "synth"
    if domain != "scannet":
        from pretrain3d.data.synthetic_domains import domain_spec

        spec = domain_spec(domain)
        kw["domain"] = domain
        theme_list, prefix = spec.themes, spec.prefix

    def job(split, i):
        theme = theme_list[i % len(theme_list)] if themes == "cycle" else None
        return (str(root), split, i, int(seed), dict(kw, theme=theme), resume)

    jobs = [job("train", i) for i in range(num_train)] + [job("val", i) for i in range(num_val)]
    jobs += [(r, sp, i, sd, dict(k, rescan=j), rs) for j in range(1, rescans + 1)
             for (r, sp, i, sd, k, rs) in (job("val", i) for i in range(num_val))]
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="synthetic scenes", unit="scene", disable=not progress)
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            jobs = [(r, s, i, sd, dict(k, nthreads=1), rs) for (r, s, i, sd, k, rs) in jobs]
            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for res in pool.imap_unordered(_generate_one, jobs):
                    results[res["scene_id"]] = res
                    bar.update(1)
        else:
            for job in jobs:
                res = _generate_one(job)
                results[res["scene_id"]] = res
                bar.update(1)
    finally:
        bar.close()
    train_ids = [rescan_id("train", i, 0, prefix) for i in range(num_train)]
    val_ids = [rescan_id("val", i, 0, prefix) for i in range(num_val)]
    (root / "splits").mkdir(exist_ok=True)
    write_text(root / "splits" / "train.txt", "".join(s + "\n" for s in train_ids))
    write_text(root / "splits" / "val.txt", "".join(s + "\n" for s in val_ids))
    rescan_ids = [rescan_id("val", i, j, prefix) for i in range(num_val) for j in range(1, rescans + 1)]
    if rescans:
        write_text(root / "splits" / "rescan.txt", "".join(s + "\n" for s in rescan_ids))
    elif (root / "splits" / "rescan.txt").exists():  # a former run's rescans are not part of this dataset
        (root / "splits" / "rescan.txt").unlink()
    meta = {
        "generator": "pretrain3d.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": num_train,
        "num_val": num_val,
        "frames_per_scene": frames_per_scene,
        "width": width,
        "height": height,
        "points_per_m2": points_per_m2,
        "themes": themes,
        "depth_scale": 1000.0,
        "label_set": "nyu40",
        "class_names": list(SCANNET20_NAMES),
        "class_nyu40_ids": list(SCANNET20_NYU40_IDS),
        "generator_nyu40": dict(NYU40),
        "scenes": {
            sid: {"theme": results[sid]["theme"], "num_points": results[sid]["num_points"]}
            for sid in train_ids + val_ids
        },
    }
    if domain != "scannet":  # only then, so that the scannet meta.json stays byte for byte
        from pretrain3d.data.labels import label_space

        space = label_space(domain)
        meta.update(domain=domain, label_space=space.name, label_set=space.raw_set,
                    class_names=list(space.names), class_raw_ids=list(space.raw_ids),
                    generator_labels=dict(spec.label_ids), density_factor=spec.density_factor)
        for k in ("class_nyu40_ids", "generator_nyu40"):
            del meta[k]
    if rescans:  # only then, so that a dataset without rescans keeps its meta.json byte for byte
        meta["rescans"] = rescans
        meta["rescan_of"] = {rescan_id("val", i, j, prefix): rescan_id("val", i, 0, prefix)
                             for i in range(num_val) for j in range(1, rescans + 1)}
        for sid in rescan_ids:
            meta["scenes"][sid] = {"theme": results[sid]["theme"], "num_points": results[sid]["num_points"]}
    write_json(root / "meta.json", meta)
    return meta
