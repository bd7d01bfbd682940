"""Furniture builders (tables, desks, chairs, sofas, beds, cabinets, bookshelves, other furniture):
each draws one randomised object, plus what comes with it (pillows, books, props on top), from a
random generator and returns its prototypes in the object's own frame."""

from __future__ import annotations

import math

import numpy as np

from pretrain3d.data.synthetic.materials import _material
from pretrain3d.data.synthetic.objects import _clutter, _fronts, _pick, _Proto
from pretrain3d.data.synthetic.primitives import B, C


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
