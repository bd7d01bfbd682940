"""Builders of the objects only the S3DIS-like and Structured3D-like domains have: boards, columns,
conference tables, copiers, boxes, lamps, nightstands, dressers, mirrors, televisions, fireplaces
and pillars (relabelled scannet-domain builders where the object is the same)."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from pretrain3d.data.synthetic.furniture import build_bed, build_cabinet, build_chair
from pretrain3d.data.synthetic.materials import _material
from pretrain3d.data.synthetic.objects import _clutter, _fronts, _pick, _Proto
from pretrain3d.data.synthetic.primitives import B, C, _rz


def _relabel(protos: list[_Proto], mapping: Mapping[str, str]) -> list[_Proto]:
    return [replace(p, cls=mapping.get(p.cls, p.cls)) for p in protos]


def _dark(rng):
    m = _material(rng, "metal")
    m.base = m.base * rng.uniform(0.08, 0.2)
    return m


def build_board(rng) -> list[_Proto]:
    """A whiteboard (or a dark chalk/bulletin board) on a wall: panel, frame, pen tray."""
    U = rng.uniform
    w, h = U(1.2, 3.0), U(0.9, 1.3)
    z0 = U(0.8, 1.0)
    face = _material(rng, "ceramic") if rng.random() < 0.8 else _dark(rng)
    frame = _material(rng, "metal")
    fw, t = U(0.02, 0.04), 0.02
    prims = [
        B(0, -t / 2, z0, w, t, h, 0),
        B(-(w / 2 + fw / 2), -t / 2 - 0.005, z0 - fw, fw, t + 0.01, h + 2 * fw, 1),
        B(w / 2 + fw / 2, -t / 2 - 0.005, z0 - fw, fw, t + 0.01, h + 2 * fw, 1),
        B(0, -t / 2 - 0.005, z0 + h, w, t + 0.01, fw, 1),
        B(0, -t / 2 - 0.005, z0 - fw, w, t + 0.01, fw, 1),
        B(0, -t - 0.04, z0 - fw - 0.02, w * 0.6, 0.08, 0.02, 1),  # pen tray
    ]
    return [_Proto("board", prims, [face, frame])]


def build_column(rng, H, paint=None) -> list[_Proto]:
    """A rectangular column against a wall, floor to ceiling (only its room-side faces meshed)."""
    U = rng.uniform
    w, d = U(0.35, 0.7), U(0.25, 0.55)
    m = paint if paint is not None else _material(rng, "paint")
    return [_Proto("column", [B(0, 0, 0, w, d, H, 0, faces=("-y", "+x", "-x"))], [m])]


def _conference_table(rng) -> list[_Proto]:
    """A long table with chairs down both long sides (optional children of the group)."""
    U = rng.uniform
    w, d, h, t = U(2.2, 4.0), U(1.0, 1.4), U(0.72, 0.77), U(0.03, 0.05)
    top, leg = _material(rng, _pick(rng, ("wood", "laminate"))), _material(rng, "metal")
    prims = [B(0, 0, h - t, w, d, t, 0)]
    for sx in (-1, 1):
        prims.append(B(sx * (w / 2 - 0.25), 0, 0, 0.08, d * 0.6, h - t, 1))  # panel legs
    out = [_Proto("table", prims, [top, leg])]
    out += _clutter(rng, -w / 2 + 0.1, w / 2 - 0.1, -d / 2 + 0.1, d / 2 - 0.1, h, int(rng.integers(1, 4)))
    n = max(2, int(w / 0.75))
    for sy, yaw in ((-1, np.pi), (1, 0.0)):
        for i in range(n):
            if rng.random() < 0.2:
                continue
            ch = build_chair(rng, "office")[0]
            x = -w / 2 + (i + 0.5) * w / n + U(-0.08, 0.08)
            pos = np.array([x, sy * (d / 2 + U(0.2, 0.4)), 0.0])
            Rw = _rz(yaw + U(-0.3, 0.3))
            out.append(_Proto("chair", [p.moved(Rw, pos) for p in ch.prims], ch.mats))
    return out


def _copier(rng) -> list[_Proto]:
    """A copy machine: a big box with a lid and a paper tray (S3DIS clutter)."""
    U = rng.uniform
    w, d, h = U(0.6, 1.0), U(0.55, 0.7), U(0.9, 1.2)
    body, dark = _material(rng, "laminate"), _dark(rng)
    prims = [B(0, 0, 0, w, d, h, 0), B(0, 0.05, h, w * 0.9, d * 0.8, 0.05, 1), B(w / 2 + 0.12, 0, h * 0.6, 0.24, d * 0.7, 0.02, 0)]
    return [_Proto("otherfurniture", prims, [body, dark])]


def _boxes(rng, n) -> list[_Proto]:
    """Stacked cardboard-ish boxes (otherprop) standing on the floor."""
    U = rng.uniform
    out, z = [], 0.0
    for _ in range(n):
        w, d, h = U(0.3, 0.6), U(0.3, 0.5), U(0.2, 0.45)
        out.append(_Proto("otherprop", [B(U(-0.05, 0.05), 0, z, w, d, h, yaw=U(-0.2, 0.2))], [_material(rng, "laminate")]))
        z += h
    return out


def build_lamp(rng, kind=None) -> list[_Proto]:
    U = rng.uniform
    kind = kind or _pick(rng, ("floor", "table"))
    base, shade = _material(rng, _pick(rng, ("metal", "wood"))), _material(rng, _pick(rng, ("fabric", "paint")))
    if kind == "floor":
        h, r = U(1.4, 1.8), U(0.17, 0.25)
        prims = [C(0, 0, 0, 0.03, U(0.12, 0.16), 0), C(0, 0, 0.03, h - 0.3, 0.015, 0), C(0, 0, h - 0.35, h, r, 1)]
    else:
        h, r = U(0.35, 0.55), U(0.1, 0.16)
        prims = [C(0, 0, 0, 0.03, 0.07, 0), C(0, 0, 0.03, h - 0.2, 0.02, 0), C(0, 0, h - 0.22, h, r, 1)]
    return [_Proto("lamp", prims, [base, shade])]


def build_nightstand(rng) -> list[_Proto]:
    ns = _relabel(build_cabinet(rng, "nightstand")[:1], {"cabinet": "nightstand"})
    if rng.random() < 0.6:  # a table lamp on top
        lo, hi = ns[0].aabb()
        ns += [p.shifted([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2]]) for p in build_lamp(rng, "table")]
    return ns


def build_bed_st3d(rng) -> list[_Proto]:
    """Bed + pillows, with nightstands (Structured3D's own class) on one or both sides."""
    out = build_bed(rng, nightstands=False)
    lo, hi = out[0].aabb()
    w = hi[0] - lo[0]
    for side in (-1, 1):
        if rng.random() < 0.75:
            ns = build_nightstand(rng)
            nlo, nhi = ns[0].aabb()
            dx = side * (w / 2 + 0.05 + (nhi[0] - nlo[0]) / 2)
            out += [p.shifted([dx, -nhi[1], 0.0]) for p in ns]
    return out


def build_dresser(rng) -> list[_Proto]:
    U = rng.uniform
    w, d, h = U(0.9, 1.6), U(0.42, 0.55), U(0.75, 1.0)
    body, mh = _material(rng, _pick(rng, ("wood", "laminate"))), _material(rng, "metal")
    prims = [B(0, 0.01, 0.05, w, d - 0.02, h - 0.05, 0), B(0, 0.03, 0, w - 0.06, d - 0.06, 0.05, 0)]
    prims += _fronts(rng, -w / 2, w / 2, -d / 2 + 0.02, 0.05, h, 1, rows=int(rng.integers(3, 5)), cols=2)
    out = [_Proto("dresser", prims, [body, mh])]
    if rng.random() < 0.6:
        out += _clutter(rng, -w / 2 + 0.05, w / 2 - 0.05, -d / 2 + 0.05, d / 2 - 0.05, h, int(rng.integers(1, 3)))
    return out


def build_mirror(rng) -> list[_Proto]:
    U = rng.uniform
    w, h, t = U(0.4, 0.9), U(0.6, 1.1), U(0.01, 0.02)
    zc = U(1.35, 1.6)
    glass = _material(rng, "metal")
    glass.base = np.clip(glass.base * 1.25, 0, 255)
    prims = [B(0, -t / 2, zc - h / 2, w, t, h, 0)]
    if rng.random() < 0.5:
        fw = U(0.02, 0.05)
        prims += [B(-(w / 2 + fw / 2), -t / 2, zc - h / 2 - fw, fw, t + 0.01, h + 2 * fw, 1),
                  B(w / 2 + fw / 2, -t / 2, zc - h / 2 - fw, fw, t + 0.01, h + 2 * fw, 1)]
    return [_Proto("mirror", prims, [glass, _material(rng, _pick(rng, ("wood", "metal")))])]


def build_television(rng, stand=None) -> list[_Proto]:
    """A flat screen, on a low TV cabinet or hung on the wall."""
    U = rng.uniform
    w = U(0.9, 1.5)
    h, t = w * U(0.56, 0.6), U(0.04, 0.07)
    screen, frame = _dark(rng), _dark(rng)
    stand = rng.random() < 0.6 if stand is None else stand
    if stand:
        cab = build_cabinet(rng, "low")[0]
        lo, hi = cab.aabb()
        z0 = hi[2] + 0.08
        yc = (lo[1] + hi[1]) / 2 + 0.05
        tv = _Proto("television", [B(0, yc, hi[2], 0.3, 0.2, 0.02, 1), B(0, yc, hi[2] + 0.02, 0.06, 0.04, 0.08, 1),
                                   B(0, yc - 0.02, z0, w, t, h, 0)], [screen, frame])
        return [cab, tv]
    z0 = U(0.9, 1.2)
    return [_Proto("television", [B(0, -t / 2, z0, w, t, h, 0)], [screen, frame])]


def build_fireplace(rng) -> list[_Proto]:
    """A fireplace surround with a mantel (otherstructure)."""
    U = rng.uniform
    w, d, h = U(1.2, 1.8), U(0.3, 0.45), U(1.0, 1.3)
    stone, dark = _material(rng, _pick(rng, ("tile", "paint", "ceramic"))), _dark(rng)
    ow, oh = w * U(0.4, 0.55), h * U(0.45, 0.6)
    prims = [
        B(-(w + ow) / 4, 0, 0, (w - ow) / 2, d, h, 0),
        B((w + ow) / 4, 0, 0, (w - ow) / 2, d, h, 0),
        B(0, 0, oh, ow, d, h - oh, 0),
        B(0, d / 2 - 0.03, 0, ow, 0.06, oh, 1),  # back of the opening
        B(0, -0.03, h, w + 0.15, d + 0.06, 0.06, 0),  # mantel
    ]
    return [_Proto("otherstructure", prims, [stone, dark])]


def build_pillar(rng, H) -> list[_Proto]:
    U = rng.uniform
    w = U(0.3, 0.5)
    return [_Proto("otherstructure", [B(0, 0, 0, w, w, H, 0, faces=("-y", "+x", "-x"))], [_material(rng, "paint")])]
