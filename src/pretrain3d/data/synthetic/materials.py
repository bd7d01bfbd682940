"""Procedural materials: a base colour modulated by a few sine / step / line / cell terms of the 3D
position, times a fixed Lambert-like shade of the normal. ``MaterialTable.color`` is the one colour
function of a scene, shared by its point cloud and its rendered frames (so they agree exactly)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


_LIGHT = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])  # direction of the fixed shade
_K_TERMS = 4  # pattern terms per material
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
