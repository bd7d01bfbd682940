"""Rooms of the scannet domain: the room types (``THEMES``) and what each holds (``_room_recipe``),
the placement of objects along walls and in free space without overlap (``_Layout``), the room's
floor and walls (``_structure``), and the objects a rescan moves (``MOVABLE``, ``_move_objects``).
The other domains (``domains``) reuse ``_Layout`` with recipes of their own."""

from __future__ import annotations

import math

import numpy as np

from pretrain3d.data.synthetic.fixtures import (
    build_bathtub,
    build_counter,
    build_door,
    build_picture,
    build_refrigerator,
    build_sink,
    build_toilet,
    build_window,
)
from pretrain3d.data.synthetic.furniture import (
    build_bed,
    build_bookshelf,
    build_cabinet,
    build_chair,
    build_desk,
    build_otherfurniture,
    build_sofa,
    build_table,
)
from pretrain3d.data.synthetic.materials import _material
from pretrain3d.data.synthetic.objects import NYU40, SceneObject, _clutter, _fronts, _pick, _Proto
from pretrain3d.data.synthetic.primitives import B, _rz


THEMES = ("bedroom", "living", "office", "kitchen", "bathroom")
_THEME_P = (0.21, 0.21, 0.2, 0.19, 0.19)  # how often generate_scene draws each when no theme is given


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
