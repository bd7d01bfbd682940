"""The generator's other domains: S3DIS-like offices and Structured3D-like houses.

``data.synthetic.domain`` picks which dataset the procedural rooms imitate. ``scannet`` is the
original generator (``layouts``, untouched); this module adds two more, so that an offline
multi-dataset benchmark (PPT) sees the kind of gap that separates real datasets:

=====================  ==================  ======================  ==========================
                       scannet             s3dis                   structured3d
=====================  ==================  ======================  ==========================
scene ids              synth_<split>_<i>   s3dis_<split>_<i>       st3d_<split>_<i>
label space            ScanNet-20          S3DIS-13 (label order)  Structured3D-25 (Pointcept)
raw label ids          NYU40               S3DIS index + 1         NYU40
room types             bedroom, living,    office, conferenceRoom, bedroom, living, kitchen,
                       office, kitchen,    hallway, lobby,         bathroom
                       bathroom            storage, copyRoom
ceiling                not scanned         scanned, labelled       rendered, labelled
structure              4 walls + floor     + beams, columns        + fireplaces / pillars
density (x ppm2)       1                   2                       0.75
position noise         5 mm                8 mm                    0 (synthetic-perfect)
colour noise           3                   5                       0
holes                  none                3-8 spheres per room    none
colour character       as generated        grey/white, warm light  saturated, bright, clean
=====================  ==================  ======================  ==========================

Design choices, and why:

* **One raw layout for all domains** (the ScanNet-like ``scans/<id>/`` folders with PLYs and
  posed RGB-D frames), not the real Stanford3dDataset text layout for s3dis: the real S3DIS layout
  has no RGB-D frames (those live in 2D-3D-S), and multi-dataset pre-training (PonderV2, PPT)
  needs frames for every domain; one reader keeps preprocessing to a label-space switch, and the
  existing ``data/s3dis.py`` reader stays tested on its own fixtures. The label PLYs hold each
  domain's *raw* ids; meta.json (and every generator.json) names the domain and its label space
  (``label_space``, ``label_set``), and ``labels.label_space(domain)`` — the one mapping table —
  turns them into 0..K-1 when preprocessing.
* **Raw ids as the real data has them**: Structured3D annotates with NYU40 ids and Pointcept keeps
  25 of them, so structured3d writes NYU40 and counters (12), toilets (33), bathtubs (36) and
  shower curtains (28) become ignore, as they do there. S3DIS has no NYU40 ids; its raw id is the
  class index + 1 (0 stays "unannotated").
* **Label disagreement on purpose**, as between the real datasets: the same bookshelf is
  ``bookshelf`` (ScanNet), ``bookcase`` (S3DIS) and ``shelves`` (Structured3D); desks are ``desk``
  in ScanNet and Structured3D but ``table`` in S3DIS; small things are ignored in ScanNet,
  ``clutter`` in S3DIS and ``otherprop`` in Structured3D; cabinets, pictures, curtains and sofas'
  pillows are S3DIS ``clutter``; the ceiling is a class in two domains and absent in ScanNet.
* **Colour character through the materials' base colours** (``recolor``), so points and rendered
  frames keep one colour function and stay pixel-consistent, as in the scannet domain.
* **The furniture builders are shared** with the scannet domain (``furniture``, ``fixtures``: tables,
  chairs, desks, shelves, ...) and relabelled per domain; only what the other domains add (boards,
  columns, dressers, nightstands, lamps, mirrors, televisions, fireplaces) is built apart, in
  ``domain_objects``; beams and ceilings are part of the rooms' structure, here.
* **Determinism**: everything draws from the streams ``generate_scene`` hands over (layout, sampling,
  noise, cameras), seeded per scene from ``(seed, split, index, domain)``; nothing depends on the
  worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from pretrain3d.data.labels import SYNTHETIC_DOMAINS, label_space
from pretrain3d.data.synthetic.domain_objects import (
    _boxes,
    _conference_table,
    _copier,
    build_bed_st3d,
    build_board,
    build_column,
    build_dresser,
    build_fireplace,
    build_lamp,
    build_mirror,
    build_nightstand,
    build_pillar,
    build_television,
)
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
from pretrain3d.data.synthetic.layouts import _desk_chair, _kitchen_run, _Layout, _with_chairs
from pretrain3d.data.synthetic.materials import _material
from pretrain3d.data.synthetic.objects import NYU40, _clutter, _pick, _Proto
from pretrain3d.data.synthetic.primitives import B


__all__ = ["DomainSpec", "domain_spec", "S3DIS_THEMES", "STRUCTURED3D_THEMES", "GENERATOR_CLASSES"]

# Every class name a builder can give an object (the scannet generator's plus the ones added here).
GENERATOR_CLASSES: tuple[str, ...] = tuple(NYU40) + (
    "ceiling", "beam", "column", "board", "dresser", "nightstand", "mirror", "television", "lamp",
    "otherstructure",
)

S3DIS_THEMES = ("office", "conferenceRoom", "hallway", "lobby", "storage", "copyRoom")
STRUCTURED3D_THEMES = ("bedroom", "living", "kitchen", "bathroom")

# S3DIS: generator class -> S3DIS class (anything not listed is clutter).
_S3DIS_OF = {
    "ceiling": "ceiling", "floor": "floor", "wall": "wall", "beam": "beam", "column": "column",
    "window": "window", "door": "door", "table": "table", "desk": "table", "chair": "chair",
    "sofa": "sofa", "bookshelf": "bookcase", "board": "board",
}
# Structured3D: generator class -> NYU40 id, as Structured3D annotates (the 25-class space keeps 25 ids).
_ST3D_NYU40 = dict(NYU40, bookshelf=15, shelves=15, books=40, ceiling=22, dresser=17, mirror=19, television=25,
                   nightstand=32, lamp=35, otherstructure=38, beam=38, column=38, board=40)


def _s3dis_label_ids() -> dict[str, int]:
    names = label_space("s3dis").names
    return {c: names.index(_S3DIS_OF.get(c, "clutter")) + 1 for c in GENERATOR_CLASSES}


# ============================================================================ the domains


@dataclass(frozen=True)
class DomainSpec:
    """Everything that differs between domains; ``generate_scene`` calls its hooks in order:
    ``pick_theme`` / ``build_layout`` (layout stream), ``structure`` (layout stream),
    ``recolor`` (materials' base colours), ``holes`` (noise stream, before the sensor noise)."""

    name: str
    prefix: str
    themes: tuple[str, ...]
    density_factor: float
    pos_noise: float
    color_noise: float
    movable: tuple[str, ...]
    label_ids: Mapping[str, int]
    _layout: Callable
    _structure: Callable
    _recolor: Callable
    _holes: Callable | None = None

    def pick_theme(self, rng) -> str:
        return self.themes[int(rng.integers(len(self.themes)))]

    def check_theme(self, theme: str) -> str:
        if theme not in self.themes:
            raise ValueError(f"unknown room type {theme!r} for domain {self.name!r}; expected one of {self.themes}")
        return theme

    def build_layout(self, rng, theme: str, room_size=None) -> _Layout:
        return self._layout(rng, theme, room_size, self.label_ids)

    def structure(self, rng, lay: _Layout) -> list[_Proto]:
        return self._structure(rng, lay)

    def recolor(self, base: np.ndarray) -> np.ndarray:
        return np.clip(self._recolor(np.asarray(base, dtype=np.float64)), 0.0, 255.0)

    def holes(self, rng, pts: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self._holes is None:
            return np.ones(len(pts), bool)
        return self._holes(rng, pts, labels)


def _place(lay: _Layout, rng, kind: str, protos, n_required=1) -> bool:
    if kind == "free":
        return lay.try_place(protos, lay.free_candidates(protos, jitter=0.3), pad=0.25, n_required=n_required)
    return lay.try_place(protos, lay.wall_candidates(protos, corner=(kind == "corner")), pad=0.05, n_required=n_required)


def _furnish(lay: _Layout, rng, recipe) -> None:
    for p, kind, fn in recipe:
        if rng.random() < p:
            _place(lay, rng, kind, fn(rng))


# ----------------------------------------------------------------------------- S3DIS-like

_S3DIS_ROOMS = {  # (Lx range, Ly range); height 2.9-3.4 m everywhere (offices with suspended ceilings)
    "office": ((4.0, 7.0), (3.5, 6.0)),
    "conferenceRoom": ((5.0, 8.0), (4.0, 6.0)),
    "hallway": ((8.0, 14.0), (1.8, 2.6)),
    "lobby": ((6.0, 9.0), (5.0, 7.0)),
    "storage": ((3.0, 5.0), (2.5, 4.0)),
    "copyRoom": ((3.0, 5.0), (3.0, 4.5)),
}


def _s3dis_recipe(rng, theme: str):
    desk = lambda r: build_desk(r) + _desk_chair(r)  # noqa: E731
    shelf, board = build_bookshelf, build_board
    cab = lambda r: build_cabinet(r, _pick(r, ("file", "low", "tall")))  # noqa: E731
    table_chairs = lambda r: _with_chairs(r, build_table(r, "rect"), int(r.integers(1, 4)))  # noqa: E731
    floor_boxes = lambda r: _boxes(r, int(r.integers(1, 4)))  # noqa: E731
    R = {
        "office": [(1.0, "wall", desk), (0.8, "wall", desk), (0.5, "wall", desk), (0.3, "wall", desk),
                   (0.8, "wall", shelf), (0.4, "wall", shelf), (0.6, "wall", cab), (0.7, "wall", board),
                   (0.3, "free", table_chairs), (0.15, "wall", build_sofa), (0.4, "free", build_otherfurniture),
                   (0.5, "wall", floor_boxes)],
        "conferenceRoom": [(1.0, "free", _conference_table), (0.95, "wall", board), (0.3, "wall", board),
                           (0.3, "wall", shelf), (0.5, "wall", lambda r: build_cabinet(r, "low")),
                           (0.3, "wall", lambda r: build_chair(r)), (0.1, "wall", build_sofa)],
        "hallway": [(0.5, "wall", board), (0.3, "wall", shelf), (0.3, "wall", lambda r: build_chair(r)),
                    (0.15, "wall", build_sofa), (0.3, "wall", cab), (0.6, "wall", build_otherfurniture),
                    (0.2, "wall", lambda r: build_table(r, "rect")), (0.4, "wall", floor_boxes)],
        "lobby": [(1.0, "wall", build_sofa), (0.7, "wall", build_sofa), (0.9, "free", lambda r: build_table(r, "coffee")),
                  (0.5, "free", table_chairs), (0.6, "free", lambda r: build_chair(r)), (0.4, "wall", board),
                  (0.3, "wall", shelf), (0.5, "free", build_otherfurniture)],
        "storage": [(1.0, "wall", shelf), (0.8, "wall", shelf), (0.6, "wall", shelf),
                    (0.8, "wall", lambda r: build_cabinet(r, "tall")), (0.5, "wall", cab),
                    (0.5, "wall", lambda r: build_table(r, "rect")), (0.4, "free", lambda r: build_chair(r)),
                    (1.0, "wall", floor_boxes), (0.7, "wall", floor_boxes), (0.2, "wall", board)],
        "copyRoom": [(1.0, "wall", _copier), (0.9, "wall", cab), (0.6, "wall", cab),
                     (0.6, "wall", lambda r: build_table(r, "rect")), (0.5, "wall", shelf), (0.4, "wall", board),
                     (0.3, "free", lambda r: build_chair(r)), (0.6, "wall", floor_boxes)],
    }[theme]
    extras = [("wall", desk), ("wall", shelf), ("wall", board), ("free", lambda r: build_chair(r)),
              ("wall", build_sofa), ("free", lambda r: build_table(r)), ("wall", cab), ("wall", build_picture)]
    for _ in range(int(rng.integers(1, 4))):
        kind, fn = extras[int(rng.integers(len(extras)))]
        R.append((1.0, kind, fn))
    return R


def _s3dis_layout(rng, theme: str, room_size, label_ids) -> _Layout:
    U = rng.uniform
    if room_size is None:
        (x0, x1), (y0, y1) = _S3DIS_ROOMS[theme]
        room_size = (U(x0, x1), U(y0, y1), U(2.9, 3.4))
    Lx, Ly, H = room_size
    lay = _Layout(rng, Lx, Ly, H, label_ids=label_ids)
    n_doors = int(rng.integers(2, 5)) if theme == "hallway" else 1 + int(rng.random() < 0.35)
    for _ in range(n_doors):
        protos = build_door(rng)
        lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    # columns: the building's structure, before any furniture
    n_col = int(rng.choice(4, p=(0.35, 0.3, 0.25, 0.1)))
    for _ in range(n_col):
        protos = build_column(rng, H)
        lay.try_place(protos, lay.wall_candidates(protos, corner=rng.random() < 0.5), pad=0.0)
    n_win = 0 if theme in ("hallway", "storage") and rng.random() < 0.6 else int(rng.integers(1, 4))
    for _ in range(n_win):
        protos = build_window(rng, H, 0.1)
        lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    _furnish(lay, rng, _s3dis_recipe(rng, theme))
    if rng.random() < 0.4:
        protos = build_picture(rng)
        lay.try_place(protos, lay.wall_candidates(protos, tries=20), pad=0.1)
    return lay


def _s3dis_structure(rng, lay: _Layout) -> list[_Proto]:
    """Floor (grey carpet / vinyl tile), walls, a suspended tile ceiling and 0-3 beams across it."""
    Lx, Ly, H = lay.L
    th = 0.1
    floor_m = _material(rng, _pick(rng, ("carpet", "tile"), p=(0.6, 0.4)))
    paint = _material(rng, "paint")
    ceil = _material(rng, "tile")
    out = [
        _Proto("floor", [B(Lx / 2, Ly / 2, -th, Lx, Ly, th, 0, faces=("+z",))], [floor_m]),
        _Proto("ceiling", [B(Lx / 2, Ly / 2, H, Lx, Ly, th, 0, faces=("-z",))], [ceil]),
    ]
    for w in (
        B(Lx / 2, -th / 2, 0, Lx, th, H, 0, faces=("+y",)),
        B(Lx + th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("-x",)),
        B(Lx / 2, Ly + th / 2, 0, Lx, th, H, 0, faces=("-y",)),
        B(-th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("+x",)),
    ):
        out.append(_Proto("wall", [w], [paint if rng.random() < 0.9 else _material(rng, "paint")]))
    n_beams = int(rng.choice(4, p=(0.3, 0.35, 0.25, 0.1)))
    along_x = Lx < Ly  # beams span the short side
    span = Ly if along_x else Lx
    for i in range(n_beams):
        bw, bh = rng.uniform(0.25, 0.45), rng.uniform(0.25, 0.45)
        pos = (i + 1) * span / (n_beams + 1) + rng.uniform(-0.3, 0.3)
        if along_x:
            prim = B(Lx / 2, pos, H - bh, Lx, bw, bh, 0, faces=("-z", "+y", "-y"))
        else:
            prim = B(pos, Ly / 2, H - bh, bw, Ly, bh, 0, faces=("-z", "+x", "-x"))
        out.append(_Proto("beam", [prim], [paint]))
    return out


def _s3dis_recolor(base: np.ndarray) -> np.ndarray:
    grey = base.mean(axis=1, keepdims=True)
    b = grey + 0.4 * (base - grey)  # desaturated
    b = 0.7 * b + 0.3 * 205.0  # towards office white-grey
    return b * np.array([1.08, 1.0, 0.82])  # warm (incandescent-ish) light


def _s3dis_holes(rng, pts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """3-8 spherical gaps (occlusion / scanner shadow), 0.2-0.5 m, centred on surface points."""
    keep = np.ones(len(pts), bool)
    if not len(pts):
        return keep
    for _ in range(int(rng.integers(3, 9))):
        c = pts[int(rng.integers(len(pts)))]
        r = rng.uniform(0.2, 0.5)
        keep &= np.einsum("ij,ij->i", pts - c, pts - c) > r * r
    return keep


# ----------------------------------------------------------------------------- Structured3D-like

_ST3D_ROOMS = {
    "bedroom": ((3.2, 5.0), (3.0, 4.5), (2.6, 3.0)),
    "living": ((4.5, 7.5), (3.8, 6.0), (2.7, 3.1)),
    "kitchen": ((3.0, 5.0), (2.5, 4.0), (2.6, 3.0)),
    "bathroom": ((2.2, 3.5), (1.9, 3.0), (2.5, 2.8)),
}


def _st3d_recipe(rng, theme: str, H: float):
    table_chairs = lambda r: _with_chairs(r, build_table(r, _pick(r, ("rect", "round"))), int(r.integers(2, 5)))  # noqa: E731
    R = {
        "bedroom": [(1.0, "wall", build_bed_st3d), (0.7, "wall", build_dresser), (0.5, "wall", build_mirror),
                    (0.6, "wall", lambda r: build_cabinet(r, "tall")), (0.4, "wall", lambda r: build_desk(r) + _desk_chair(r)),
                    (0.4, "corner", lambda r: build_lamp(r, "floor")), (0.35, "wall", build_television),
                    (0.3, "wall", build_bookshelf), (0.5, "wall", build_otherfurniture), (0.2, "corner", lambda r: build_pillar(r, H))],
        "living": [(1.0, "wall", build_sofa), (0.9, "free", lambda r: build_table(r, "coffee")),
                   (0.85, "wall", lambda r: build_television(r, stand=True)), (0.7, "corner", lambda r: build_lamp(r, "floor")),
                   (0.6, "wall", build_bookshelf), (0.4, "free", table_chairs), (0.8, "wall", build_otherfurniture),
                   (0.3, "free", lambda r: build_chair(r)), (0.5, "wall", build_fireplace), (0.15, "wall", build_desk),
                   (0.2, "wall", build_mirror)],
        "kitchen": [(1.0, "wall", _kitchen_run), (0.9, "wall", build_refrigerator), (0.7, "free", table_chairs),
                    (0.5, "wall", lambda r: build_cabinet(r, _pick(r, ("low", "tall")))), (0.2, "wall", build_bookshelf),
                    (0.2, "corner", lambda r: build_lamp(r, "floor")), (0.2, "wall", lambda r: build_pillar(r, H)),
                    (0.1, "wall", build_television)],
        "bathroom": [(1.0, "wall", build_toilet), (1.0, "wall", build_sink), (0.8, "wall", build_mirror),
                     (0.7, "corner", lambda r: build_bathtub(r)), (0.5, "wall", lambda r: build_cabinet(r, "low")),
                     (0.3, "wall", build_bookshelf), (0.3, "free", build_otherfurniture), (0.2, "wall", build_dresser)],
    }[theme]
    extras = [("wall", build_dresser), ("wall", build_nightstand), ("corner", lambda r: build_lamp(r, "floor")),
              ("wall", build_television), ("wall", build_mirror), ("wall", build_fireplace), ("wall", build_desk),
              ("wall", build_bookshelf), ("free", lambda r: build_chair(r)), ("wall", build_sofa),
              ("wall", lambda r: build_counter(r)), ("wall", build_refrigerator), ("wall", build_bed),
              ("free", build_otherfurniture)]
    for _ in range(int(rng.integers(1, 4))):
        kind, fn = extras[int(rng.integers(len(extras)))]
        R.append((1.0, kind, fn))
    return R


def _st3d_layout(rng, theme: str, room_size, label_ids) -> _Layout:
    U = rng.uniform
    if room_size is None:
        (x0, x1), (y0, y1), (h0, h1) = _ST3D_ROOMS[theme]
        room_size = (U(x0, x1), U(y0, y1), U(h0, h1))
    Lx, Ly, H = room_size
    lay = _Layout(rng, Lx, Ly, H, label_ids=label_ids)
    for p in (1.0, 0.3):
        if rng.random() < p:
            protos = build_door(rng)
            lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    curtain_p = {"bedroom": 0.9, "living": 0.85, "kitchen": 0.4, "bathroom": 0.3}[theme]
    for _ in range(int(rng.choice(4, p=(0.05, 0.45, 0.35, 0.15)))):
        protos = build_window(rng, H, curtain_p)
        lay.try_place(protos, lay.wall_candidates(protos), pad=0.1)
    _furnish(lay, rng, _st3d_recipe(rng, theme, H))
    for _ in range(int(rng.integers(0, 2 if theme == "bathroom" else 4))):
        protos = build_picture(rng)
        lay.try_place(protos, lay.wall_candidates(protos, tries=20), pad=0.1)
    if rng.random() < 0.6:
        c = _clutter(rng, -0.3, 0.3, -0.3, 0.3, 0.0, 1)
        if c:
            lay.try_place(c[:1], lay.free_candidates(c[:1], tries=10), pad=0.2)
    return lay


def _st3d_structure(rng, lay: _Layout) -> list[_Proto]:
    """Floor, walls (one accent wall now and then) and a flat painted ceiling."""
    Lx, Ly, H = lay.L
    th = 0.1
    floor_m = _material(rng, _pick(rng, ("planks", "tile", "carpet"), p=(0.5, 0.35, 0.15)))
    paint = _material(rng, "paint")
    out = [
        _Proto("floor", [B(Lx / 2, Ly / 2, -th, Lx, Ly, th, 0, faces=("+z",))], [floor_m]),
        _Proto("ceiling", [B(Lx / 2, Ly / 2, H, Lx, Ly, th, 0, faces=("-z",))], [_material(rng, "paint")]),
    ]
    for w in (
        B(Lx / 2, -th / 2, 0, Lx, th, H, 0, faces=("+y",)),
        B(Lx + th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("-x",)),
        B(Lx / 2, Ly + th / 2, 0, Lx, th, H, 0, faces=("-y",)),
        B(-th / 2, Ly / 2, 0, th, Ly, H, 0, faces=("+x",)),
    ):
        out.append(_Proto("wall", [w], [paint if rng.random() < 0.75 else _material(rng, "paint")]))
    return out


def _st3d_recolor(base: np.ndarray) -> np.ndarray:
    grey = base.mean(axis=1, keepdims=True)
    b = grey + 1.35 * (base - grey)  # more saturated
    return b * 1.12 + 12.0  # brighter: evenly lit renders


# ----------------------------------------------------------------------------- registry

_SPECS: dict[str, DomainSpec] = {}


def domain_spec(domain: str) -> DomainSpec:
    """The spec of a generator domain other than ``scannet`` (which is the generator's own rooms, ``layouts``)."""
    if domain not in _SPECS:
        if domain == "s3dis":
            _SPECS[domain] = DomainSpec(
                "s3dis", "s3dis", S3DIS_THEMES, density_factor=2.0, pos_noise=0.008, color_noise=5.0,
                movable=("chair", "otherprop", "books", "pillow", "otherfurniture"), label_ids=_s3dis_label_ids(),
                _layout=_s3dis_layout, _structure=_s3dis_structure, _recolor=_s3dis_recolor, _holes=_s3dis_holes)
        elif domain == "structured3d":
            _SPECS[domain] = DomainSpec(
                "structured3d", "st3d", STRUCTURED3D_THEMES, density_factor=0.75, pos_noise=0.0, color_noise=0.0,
                movable=("chair", "pillow", "books", "otherprop", "otherfurniture", "lamp"),
                label_ids={c: _ST3D_NYU40[c] for c in GENERATOR_CLASSES},
                _layout=_st3d_layout, _structure=_st3d_structure, _recolor=_st3d_recolor)
        elif domain == "scannet":
            raise ValueError("the scannet domain is data.synthetic itself; it has no DomainSpec")
        else:
            raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {', '.join(SYNTHETIC_DOMAINS)}")
    return _SPECS[domain]
