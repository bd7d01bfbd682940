"""Builders of the fittings of a room: sinks, counters, refrigerators, toilets, bathtubs (with shower
curtains), doors, windows (with curtains) and pictures. Like the furniture builders, each returns
its prototypes in the object's own frame."""

from __future__ import annotations

import math

import numpy as np

from pretrain3d.data.synthetic.materials import _material
from pretrain3d.data.synthetic.objects import _clutter, _fronts, _pick, _Proto
from pretrain3d.data.synthetic.primitives import B, C, CA, Prim, _open_box


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
