"""Object prototypes (``_Proto``: an object in its own frame), placed objects (``SceneObject``), the
generator's class names with their NYU40 ids, and the small parts several builders share (props,
door and drawer fronts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pretrain3d.data.synthetic.materials import Material, _material
from pretrain3d.data.synthetic.primitives import B, C, Prim


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
