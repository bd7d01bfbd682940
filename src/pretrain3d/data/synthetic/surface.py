"""From placed objects to a triangle mesh (with per-triangle object, material and primitive) and an
area-uniform point sample of its visible surfaces: samples inside another solid (the underside of
a cabinet, a chair leg's top) are dropped, as a scanner would never see them."""

from __future__ import annotations

import numpy as np

from pretrain3d.data.synthetic.materials import Material
from pretrain3d.data.synthetic.objects import SceneObject


_CULL_EPS = 1e-3  # metres: a sample this close to another solid counts as inside it


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
