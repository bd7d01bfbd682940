#!/usr/bin/env python
"""Sparse-convolution backends on CPU: per layer type of SpUNet, and the whole SpUNet step.

    PYTHONPATH=src python scripts/bench_sparse_conv.py --voxels 15500 31000 --threads 1 2

For room-like voxel sets (``bench_backbone.room_voxels``, a batch of 2 rooms, ``--voxels`` in
total) and every layer type of the model (SubMConv3d k3 at 16/32/64 channels, the k5 stem 6->16,
SparseConv3d k2 s2 down, SparseInverseConv3d k2 up, the 1x1 head), it prints the forward and
forward+backward time of

* ``spconv``: spconv 2.3 on the CPU as the project runs it (``ensure_spconv_cpu_backward()``):
  gather -> mm -> scatter-add per kernel offset, in a Python loop;
* ``dense-mm``: the GEMM lower bound, one ``torch.mm`` with the layer's multiply-adds
  (active (input, output) pairs x Cin x Cout): 1 mm forward, +1 for the weight gradient, +1 for
  the input gradient when the layer needs it (not the stem: its input is the data);
* ``torch-pairs``: pure PyTorch (``pretrain3d.models.sparse_torch``, its default path): the pairs
  of all offsets in one list grouped by offset, processed in chunks of a few MB (one
  ``index_select``, one ``mm`` per offset, one ``index_add_`` per chunk), maps built by hashing
  the coordinates (a dense int32 table over the bounding box, or sorted keys) and, for
  submanifold maps, looking up only half of the offsets (offset -d is offset d swapped);
  ``torch-pairs-keep`` keeps the gathered inputs for the weight gradient (more memory);
* ``torch-offset``: pure PyTorch, spconv's loop as it is: per offset ``index_select`` -> ``mm``
  -> ``index_add_``;
* ``torch-im2col``: pure PyTorch, every offset at once: gather the (N, K*Cin) neighbourhood matrix
  (a zero row for a missing neighbour) and one GEMM; backward by gathers and GEMMs;
* ``open3d``: ``open3d.ml.torch.ops.sparse_conv`` (open3d-cpu 0.20 is built against torch
  2.13.0+cpu, so its ops load), on CSR neighbour lists made from our maps; its own map search
  (``FixedRadiusSearch``, L-inf) is what the "map ms" column times for it;
* ``minkowski``: MinkowskiEngine 0.5.4 where it imports (not a project dependency, see below; run
  the script with an interpreter that has it), with its own maps; the whole-model row is a
  SpUNet with ME layers (same topology and channels, ME's weight layout);

with the achieved GFLOP/s (2 x multiply-adds / time) and, separately, the time to build the kernel
map (rulebook) of each backend. Then the whole SpUNet (``params.yaml`` model: stem 16, channels
16,32,64,64,64,64,48,48, layers 1,1,2,2,1,1,1,1) forward and forward+backward per backend.

The whole-model table times the variants round robin (``--model-rounds``), each one in turn, and
gives the median over rounds of spconv's time / the variant's in the same round.

Result on the project's 2-core box (AMD EPYC Zen 4, torch 2.13 CPU with MKL, spconv 2.3.8, load
average 3-6 from other jobs; CPU-time round-robin medians, threads=1), SpUNet step at 31k voxels:
spconv ~620-850 ms forward+backward; torch-pairs 1.13-1.26x faster (forward 1.25x: maps 30 vs 75 ms,
no input gradient for the stem, fewer framework calls), torch-pairs-keep ~1.25x (+200 MB peak),
torch-offset ~1.15x, MinkowskiEngine 1.10x, open3d ~0.46x, torch-im2col 0.35x (on these surfaces
~6 of 27 neighbours exist, so 4/5 of its GEMM is zeros). The layers that cost most run at or near
the dense-GEMM bound already (sum over the model's convolutions: dense-mm 303 ms, spconv 460,
torch-pairs 438), and ~250 ms of the step is not convolution (BatchNorm, ReLU, concatenation,
autograd), so no gather-GEMM-scatter backend gains much more than ~1.3x here. None cleared the 1.3x
bar set for switching: the model keeps spconv, except for the k=5 stem on the CPU (later measured alone, a
batch of 25k voxels, one thread: spconv 249 ms forward+backward vs torch-pairs 151 ms, which also skips
the input gradient; the whole training step 913 -> 787 ms under load): spunet._stem_conv_class.

Alternatives from PyPI (Python 3.11, CPU-only torch 2.13), tried in a throwaway venv:

* open3d-cpu 0.20 (a project dependency): usable, see above.
* torchsparse: no distribution on PyPI.
* MinkowskiEngine 0.5.4 (2021): source only. Fails with a current setuptools (numpy.distutils:
  ``Compiler.__init__() takes from 1 to 3 positional arguments``); builds in 22 minutes on the two
  cores with ``setuptools<65``, ``libopenblas-dev`` and ``pip install --no-build-isolation
  MinkowskiEngine --config-settings=--build-option=--cpu_only``, then fails to import on Python
  >= 3.10 (``from collections import Sequence``) unless shimmed (``import_minkowski``). Fastest on
  the k5 stem and the strided layers, on par elsewhere, slowest maps (~150 ms per step).
* warpconvnet 1.8.2: source only; its setup refuses a CPU-only torch ("requires a CUDA-enabled
  PyTorch build").
* fvdb-core 0.6.0: source only; a CMake project with ``LANGUAGES CXX CUDA`` (CUDA torch and toolkit).
* mmcv 2.2.0: source only on PyPI (its prebuilt wheels are on OpenMMLab's own index); the setup needs
  ``pkg_resources`` (old setuptools) and compiles the whole op library; per its sources its CPU sparse
  convolution (``ops/csrc/pytorch/cpu/sparse_*.cpp``) is spconv 1.x's gather -> GEMM -> scatter-add,
  the algorithm timed here as spconv / torch-offset. Not built.
* torch-scatter 2.1.2 (scatter ops, not a convolution): source only; its build did not finish
  within 20 minutes.

Timing: best of ``--repeat`` after a warm-up. The machine may be shared: each figure is given as
CPU time of this process (user+sys, ``time.process_time``), which other processes barely disturb
at 1 thread, and as wall time, which they do; the load average is printed with each table. At 2
threads CPU time adds both threads: compare wall times there, and only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backbone import make_batch  # noqa: E402
from pretrain3d.models import sparse_torch as st  # noqa: E402
from pretrain3d.models.batching import offset2batch  # noqa: E402

MODEL_CFG = dict(stem_channels=16, channels=(16, 32, 64, 64, 64, 64, 48, 48), layers=(1, 1, 2, 2, 1, 1, 1, 1))

BREAKDOWN_BACKENDS = ("spconv", "torch-pairs", "torch-offset")

# name, kind, kernel, Cin, Cout
LAYERS = [
    ("subm k3 16->16", "subm", 3, 16, 16),
    ("subm k3 32->32", "subm", 3, 32, 32),
    ("subm k3 64->64", "subm", 3, 64, 64),
    ("stem k5 6->16", "stem", 5, 6, 16),
    ("down k2s2 16->32", "down", 2, 16, 32),
    ("up k2 32->16", "up", 2, 32, 16),
    ("head 1x1 48->20", "head", 1, 48, 20),
]


# ----------------------------------------------------------------------------- timing
def timeit(fn, repeat: int, warmup: int = 1) -> tuple[float, float]:
    """(best wall ms, best CPU ms) over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return min(walls) * 1e3, min(cpus) * 1e3


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


# ----------------------------------------------------------------------------- data
def voxel_set(total: int, seed: int = 0):
    """Level-0 indices (N, 4) int32 [batch, x, y, z] of a batch of 2 rooms and the spatial shape."""
    d = make_batch(total // 2, 2, seed=seed)
    b = offset2batch(d["offset"])
    idx = torch.cat([b[:, None], d["grid_coord"].long()], 1).int().contiguous()
    shape = (d["grid_coord"].max(0).values + 96).tolist()
    return idx, shape, d


class LayerCase:
    """One layer on the level-0 voxel set: its maps in every backend's format and its inputs."""

    def __init__(self, kind, k, cin, cout, idx, shape, seed=0):
        self.kind, self.k, self.cin, self.cout = kind, k, cin, cout
        self.idx, self.shape = idx, shape
        n = idx.shape[0]
        g = torch.Generator().manual_seed(seed)
        self.weight = (torch.randn(cout, k, k, k, cin, generator=g) * 0.05).requires_grad_()
        if kind in ("subm", "stem"):
            self.smap = st.subm_map(idx, shape, k)
            self.pairs = int((self.smap.nbr < n).sum())
            self.n_in, self.n_out = n, n
        elif kind in ("down", "up"):
            self.cmap = st.conv_map(idx, shape, 2, 2)
            self.pairs = n
            n_coarse = self.cmap.out_indices.shape[0]
            self.n_in, self.n_out = (n, n_coarse) if kind == "down" else (n_coarse, n)
        else:
            self.pairs = n
            self.n_in = self.n_out = n
        self.x = torch.randn(self.n_in, cin, generator=g).requires_grad_(kind != "stem")
        self.grad_out = torch.randn(self.n_out, cout, generator=g)

    @property
    def macs(self) -> int:
        return self.pairs * self.cin * self.cout

    def gemms_fb(self) -> int:
        """GEMMs of forward+backward: fwd, dW, and dX unless the input is the data."""
        return 2 if self.kind == "stem" else 3

    def zero(self):
        self.weight.grad = None
        self.x.grad = None


# ----------------------------------------------------------------------------- backends
class SpconvBackend:
    name = "spconv"

    def __init__(self):
        from pretrain3d.models.spconv_compat import ensure_spconv_cpu_backward

        ensure_spconv_cpu_backward()
        import spconv.pytorch as spconv
        from spconv.core import ConvAlgo
        from spconv.pytorch import functional as Fsp
        from spconv.pytorch import ops

        self.spconv, self.Fsp, self.ops, self.algo = spconv, Fsp, ops, ConvAlgo.Native

    def build_map(self, c: LayerCase):
        one = [1, 1, 1]
        if c.kind in ("subm", "stem"):
            return self.ops.get_indice_pairs(c.idx, 2, c.shape, self.algo, [c.k] * 3, one, one, one, [0] * 3,
                                             True, False)
        if c.kind in ("down", "up"):
            return self.ops.get_indice_pairs(c.idx, 2, c.shape, self.algo, [2] * 3, [2] * 3, [0] * 3, one,
                                             [0] * 3, False, False)
        return None

    def prepare(self, c: LayerCase):
        c.sp_map = self.build_map(c)

    def forward(self, c: LayerCase):
        if c.kind in ("subm", "stem"):
            outids, pairs, num = c.sp_map
            return self.Fsp.indice_subm_conv(c.x, c.weight, pairs, num, c.n_out, self.algo)
        if c.kind == "down":
            outids, pairs, num = c.sp_map
            return self.Fsp.indice_conv(c.x, c.weight, pairs, num, outids.shape[0], self.algo)
        if c.kind == "up":
            outids, pairs, num = c.sp_map
            return self.Fsp.indice_inverse_conv(c.x, c.weight, pairs, num, c.n_out, self.algo)
        return torch.mm(c.x, c.weight.view(c.cin, c.cout))  # spconv's 1x1 path


class TorchBackend:
    def __init__(self, mode: str):
        self.mode = mode
        self.name = f"torch-{mode}"

    def build_map(self, c: LayerCase):
        if c.kind in ("subm", "stem"):
            return st.subm_map(c.idx, c.shape, c.k)
        if c.kind in ("down", "up"):
            return st.conv_map(c.idx, c.shape, 2, 2)
        return None

    def prepare(self, c: LayerCase):
        m = self.build_map(c)
        if m is not None and self.mode == "offset":
            m.pairs()  # the per-offset lists are part of the map
        if m is not None and self.mode.startswith("pairs"):
            m.pair_list()
        c.t_map = m

    def forward(self, c: LayerCase):
        mode = "gemm" if self.mode == "im2col" else self.mode
        if c.kind in ("subm", "stem"):
            return st.submconv(c.x, c.weight, c.t_map, mode)
        if c.kind == "down":
            return st.sparseconv(c.x, c.weight, c.t_map, mode)
        if c.kind == "up":
            return st.inverseconv(c.x, c.weight, c.t_map, mode)
        return c.x @ c.weight.view(c.cin, c.cout)


class Open3dBackend:
    name = "open3d"

    def __init__(self):
        import open3d.ml.torch as ml3d

        self.ml3d = ml3d
        self.empty = torch.empty(0)

    def build_map(self, c: LayerCase):
        """open3d's own neighbour search (spatial hash, L-inf radius) + kernel index, for subm layers."""
        if c.kind not in ("subm", "stem"):
            return None
        idx = c.idx.float()
        pts = idx[:, 1:] + idx[:, :1] * 100000.0  # separate the batches in space
        nns = self.ml3d.layers.FixedRadiusSearch(metric="Linf", return_distances=False)(
            pts, pts, radius=c.k // 2 + 0.5)
        nb = nns.neighbors_index.long()
        rows = torch.repeat_interleave(torch.arange(len(pts)), nns.neighbors_row_splits.diff())
        d = (pts[nb] - pts[rows]).long() + c.k // 2
        kidx = (d[:, 0] * c.k + d[:, 1]) * c.k + d[:, 2]
        return nb, kidx, nns.neighbors_row_splits

    def prepare(self, c: LayerCase):
        """CSR neighbour lists (sorted by output row) from our maps, so that all backends do the same sums."""
        if c.kind in ("subm", "stem"):
            t = c.smap.nbr
            n_src = c.smap.n
        elif c.kind == "down":
            kv = 8
            t = c.cmap.table.view(-1, kv)
            n_src = c.n_in
        elif c.kind == "up":
            kv = 8
            pos = c.cmap.pos
            t = torch.full((c.n_out, kv), c.n_in, dtype=torch.long)
            t[torch.arange(c.n_out), pos % kv] = torch.div(pos, kv, rounding_mode="floor")
            n_src = c.n_in
        else:
            t = torch.arange(c.n_out)[:, None]
            n_src = c.n_in
        valid = t < n_src
        rows, kidx = torch.nonzero(valid, as_tuple=True)
        c.o3d = (t[rows, kidx].int().contiguous(), kidx.to(torch.uint8).contiguous(),
                 torch.cat([torch.zeros(1, dtype=torch.long), valid.sum(1).cumsum(0)]))

    def forward(self, c: LayerCase):
        nb, kidx, splits = c.o3d
        kv = c.weight.shape[1] * c.weight.shape[2] * c.weight.shape[3]
        w = c.weight.view(c.cout, kv, c.cin).permute(1, 2, 0)
        if c.kind == "head":
            w = c.weight.view(1, c.cin, c.cout)  # spconv's 1x1 reinterpretation
        return self.ml3d.ops.sparse_conv(w.contiguous(), c.x, self.empty, nb, kidx, self.empty, splits)


def import_minkowski():
    """MinkowskiEngine 0.5.4 (built from its sdist: see the docstring) with the shim it needs on
    Python >= 3.10 (it imports ``Sequence`` from ``collections``)."""
    import collections
    import collections.abc

    for name in ("Sequence", "Iterable", "Mapping"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    import MinkowskiEngine as ME

    return ME


class MinkowskiBackend:
    """MinkowskiEngine's CPU convolution with its own kernel maps. Its weights are (K, Cin, Cout) in its
    own offset order, so the outputs are not compared with spconv's; the work (pairs) is the same."""

    name = "minkowski"
    comparable = False

    def __init__(self):
        self.ME = import_minkowski()

    def _tensor(self, c: LayerCase, feat=None):
        feat = c.x if feat is None else feat
        if c.kind == "up":   # the coarse input lives at tensor stride 2 of the fine coordinates
            fine = self.ME.SparseTensor(torch.zeros(c.n_out, 1), coordinates=c.idx)
            key = fine.coordinate_manager.stride(fine.coordinate_map_key, [2, 2, 2])
            return self.ME.SparseTensor(feat, coordinate_map_key=key, coordinate_manager=fine.coordinate_manager)
        return self.ME.SparseTensor(feat, coordinates=c.idx)

    def build_map(self, c: LayerCase):
        """Coordinate hashing (SparseTensor) + the layer's kernel map."""
        if c.kind == "head":
            return None
        fine = self.ME.SparseTensor(torch.zeros(c.idx.shape[0], 1), coordinates=c.idx)
        mgr, key = fine.coordinate_manager, fine.coordinate_map_key
        if c.kind in ("subm", "stem"):
            return mgr.kernel_map(key, key, 1, c.k)
        coarse = mgr.stride(key, [2, 2, 2])
        if c.kind == "down":
            return mgr.kernel_map(key, coarse, 2, 2)
        return mgr.kernel_map(coarse, key, 2, 2, is_transpose=True)

    def prepare(self, c: LayerCase):
        ME = self.ME
        torch.manual_seed(0)
        if c.kind in ("subm", "stem"):
            conv = ME.MinkowskiConvolution(c.cin, c.cout, kernel_size=c.k, stride=1, dimension=3)
        elif c.kind == "down":
            conv = ME.MinkowskiConvolution(c.cin, c.cout, kernel_size=2, stride=2, dimension=3)
        elif c.kind == "up":
            conv = ME.MinkowskiConvolutionTranspose(c.cin, c.cout, kernel_size=2, stride=2, dimension=3)
        else:
            conv = ME.MinkowskiConvolution(c.cin, c.cout, kernel_size=1, stride=1, dimension=3)
        c.me_conv = conv
        c.me_x = self._tensor(c)
        with torch.no_grad():
            conv(c.me_x)   # builds and caches the kernel map in the tensor's coordinate manager

    def forward(self, c: LayerCase):
        if c.x.requires_grad != c.me_x.F.requires_grad or c.me_x.F is not c.x:
            c.me_x = self.ME.SparseTensor(c.x, coordinate_map_key=c.me_x.coordinate_map_key,
                                          coordinate_manager=c.me_x.coordinate_manager)
        c.me_conv.zero_grad(set_to_none=True)
        return c.me_conv(c.me_x).F


# ----------------------------------------------------------------------------- layer benchmark
def bench_layer(c: LayerCase, backend, repeat: int) -> dict:
    r = {"backend": backend.name}
    if hasattr(backend, "build_map"):
        if backend.build_map(c) is not None:
            r["map_wall"], r["map_cpu"] = timeit(lambda: backend.build_map(c), repeat)
    backend.prepare(c)

    def fwd():
        with torch.no_grad():
            backend.forward(c)

    def fb():
        c.zero()
        y = backend.forward(c)
        y.backward(c.grad_out)

    r["fwd_wall"], r["fwd_cpu"] = timeit(fwd, repeat)
    r["fb_wall"], r["fb_cpu"] = timeit(fb, repeat)
    return r


def bench_dense(c: LayerCase, repeat: int) -> dict:
    """One GEMM per pass with all the layer's multiply-adds; outputs preallocated (no page faults)."""
    a = torch.randn(c.pairs, c.cin)
    b = torch.randn(c.cin, c.cout)
    g = torch.randn(c.pairs, c.cout)
    y, dw, dx = torch.empty(c.pairs, c.cout), torch.empty(c.cin, c.cout), torch.empty(c.pairs, c.cin)

    def fwd():
        torch.mm(a, b, out=y)

    def fb():
        torch.mm(a, b, out=y)
        torch.mm(a.t(), g, out=dw)          # dW
        if c.gemms_fb() == 3:
            torch.mm(g, b.t(), out=dx)      # dX

    r = {"backend": "dense-mm"}
    r["fwd_wall"], r["fwd_cpu"] = timeit(fwd, repeat)
    r["fb_wall"], r["fb_cpu"] = timeit(fb, repeat)
    return r


def check_same(c: LayerCase, backends) -> dict:
    """Max relative difference of every backend's forward output to spconv's (row order aside)."""
    out = {}
    with torch.no_grad():
        ref = None
        for be in backends:
            if not getattr(be, "comparable", True):
                continue
            y = be.forward(c)
            if be.name == "spconv":
                ref = y
            out[be.name] = y
        if ref is None:
            return {}
        return {k: float((v - ref).abs().max() / ref.abs().max()) for k, v in out.items() if k != "spconv"}


def layer_table(idx, shape, backends, repeat: int, threads: int) -> list[dict]:
    rows = []
    print(f"\n## layers: {idx.shape[0]} voxels (batch of 2), threads={threads}, load average {load()}")
    print(f"{'layer':<18} {'backend':<13} {'pairs/vox':>9} {'map ms':>8} {'fwd ms':>8} {'f+b ms':>8} "
          f"{'fwd GF/s':>8} {'f+b GF/s':>8} {'fwd wall':>8} {'f+b wall':>8}")
    for name, kind, k, cin, cout in LAYERS:
        c = LayerCase(kind, k, cin, cout, idx, shape)
        results = [bench_dense(c, repeat)]
        for be in backends:
            try:
                results.append(bench_layer(c, be, repeat))
            except Exception as e:  # report, keep going
                results.append({"backend": be.name, "error": f"{type(e).__name__}: {e}"[:120]})
        diffs = check_same(c, [be for be in backends])
        for r in results:
            if "error" in r:
                print(f"{name:<18} {r['backend']:<13} error: {r['error']}")
                continue
            fl = 2 * c.macs
            gf = fl / (r["fwd_cpu"] * 1e6)
            gfb = fl * c.gemms_fb() / (r["fb_cpu"] * 1e6)
            mp = f"{r['map_cpu']:8.2f}" if "map_cpu" in r else f"{'-':>8}"
            print(f"{name:<18} {r['backend']:<13} {c.pairs / c.n_out:9.2f} {mp} {r['fwd_cpu']:8.2f} "
                  f"{r['fb_cpu']:8.2f} {gf:8.1f} {gfb:8.1f} {r['fwd_wall']:8.2f} {r['fb_wall']:8.2f}")
            rows.append(dict(layer=name, voxels=int(idx.shape[0]), threads=threads, pairs=c.pairs,
                             macs=c.macs, rel_diff_vs_spconv=diffs.get(r["backend"]), **r))
    return rows


# ----------------------------------------------------------------------------- layers of the model
def model_layers(cfg=MODEL_CFG, in_channels: int = 6, num_classes: int = 20):
    """Every convolution of SpUNet(cfg) as (level, kind, k, Cin, Cout); level = log2(stride) of its input."""
    ch, ly, stem = cfg["channels"], cfg["layers"], cfg["stem_channels"]
    out = [(0, "stem", 5, in_channels, stem)]

    def block(level, cin, cout):
        out.extend([(level, "subm", 3, cin, cout), (level, "subm", 3, cout, cout)])
        if cin != cout:
            out.append((level, "head", 1, cin, cout))

    enc_ch, dec_ch = stem, ch[-1]
    for s in range(4):
        out.append((s, "down", 2, enc_ch, ch[s]))
        for _ in range(ly[s]):
            block(s + 1, ch[s], ch[s])
        below = ch[8 - s - 2]
        out.append((s + 1, "up", 2, below, dec_ch))
        for i in range(ly[8 - s - 1]):
            block(s, dec_ch + enc_ch if i == 0 else dec_ch, dec_ch)
        enc_ch, dec_ch = ch[s], below
    if num_classes:
        out.append((0, "head", 1, ch[-1], num_classes))
    return out


def level_sets(idx, shape, levels: int = 5):
    sets = [(idx, shape)]
    for _ in range(levels - 1):
        cm = st.conv_map(sets[-1][0], sets[-1][1], 2, 2)
        sets.append((cm.out_indices, cm.out_spatial_shape))
    return sets


def breakdown_table(idx, shape, backends, repeat: int, threads: int) -> list[dict]:
    """forward+backward CPU ms of every convolution of the model at its level (same configs merged)."""
    sets = level_sets(idx, shape)
    layers = {}
    for lvl, kind, k, cin, cout in model_layers():
        key = (lvl if kind != "up" else lvl - 1, kind, k, cin, cout)
        layers[key] = layers.get(key, 0) + 1
    print(f"\n## model layers: {idx.shape[0]} voxels at level 0, threads={threads}, load average {load()}")
    print("f+b CPU ms per call; the sum is over every conv of one SpUNet step (x count)")
    names = ["dense-mm"] + [b.name for b in backends]
    print(f"{'level':>5} {'layer':<18} {'n':>2} {'voxels':>7} " + " ".join(f"{n:>13}" for n in names))
    total = {n: 0.0 for n in names}
    rows = []
    for (lvl, kind, k, cin, cout), count in sorted(layers.items()):
        i, sh = sets[lvl]
        c = LayerCase(kind, k, cin, cout, i, sh)
        res = {"dense-mm": bench_dense(c, repeat)["fb_cpu"]}
        for be in backends:
            res[be.name] = bench_layer(c, be, repeat)["fb_cpu"]
        for n in names:
            total[n] += count * res[n]
        label = f"{kind} k{k} {cin}->{cout}"
        print(f"{lvl:>5} {label:<18} {count:>2} {c.n_out:>7} " + " ".join(f"{res[n]:13.2f}" for n in names))
        rows.append(dict(level=lvl, layer=label, count=count, voxels=int(c.n_out), threads=threads,
                         **{f"fb_cpu_{n}": v for n, v in res.items()}))
    print(f"{'':>5} {'sum (x count)':<18} {'':>2} {'':>7} " + " ".join(f"{total[n]:13.1f}" for n in names))
    return rows


# ----------------------------------------------------------------------------- whole model
class Open3dFunctional:
    """sparse_torch's convolution entry points computed by ``open3d.ml.torch.ops.sparse_conv`` on our
    maps (CSR neighbour lists by output row, built once per map), for the whole-model timing."""

    def __init__(self):
        import open3d.ml.torch as ml3d

        self.ml3d = ml3d
        self.empty = torch.empty(0)

    @staticmethod
    def _csr(pl: st.PairList):
        counts = torch.tensor(pl.starts).diff()
        k = torch.repeat_interleave(torch.arange(pl.kvol), counts)
        src, dst = pl.in_rows, pl.out_rows
        if pl.center is not None:   # the identity offset of a submanifold conv is a pair list too here
            ar = torch.arange(pl.n_out)
            src, dst, k = torch.cat([src, ar]), torch.cat([dst, ar]), torch.cat([k, torch.full_like(ar, pl.center)])
        order = torch.sort(dst, stable=True).indices
        splits = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dst, minlength=pl.n_out).cumsum(0)])
        return src[order].int(), k[order].to(torch.uint8), splits

    def _conv(self, x, weight, pl, holder, attr):
        if getattr(holder, attr, None) is None:
            setattr(holder, attr, self._csr(pl))
        nb, kk, splits = getattr(holder, attr)
        cout, cin = weight.shape[0], weight.shape[-1]
        w = weight.reshape(cout, -1, cin).permute(1, 2, 0).contiguous()      # (K, Cin, Cout)
        return self.ml3d.ops.sparse_conv(w, x, self.empty, nb, kk, self.empty, splits)

    def submconv(self, x, weight, smap, mode="pairs", save_cols=False):
        return self._conv(x, weight, smap.pair_list(), smap, "_o3d")

    def sparseconv(self, x, weight, cmap, mode="pairs"):
        return self._conv(x, weight, cmap.pair_list(), cmap, "_o3d")

    def inverseconv(self, f, weight, cmap, mode="pairs"):
        return self._conv(f, weight, cmap.pair_list().transposed(), cmap, "_o3d_t")


def build_minkowski_spunet(cfg=MODEL_CFG, in_channels: int = 6, num_classes: int = 20):
    """SpUNet (same topology, channels and layers as ``pretrain3d.models.spunet.SpUNet``) written with
    MinkowskiEngine layers, for timing only: its weights use ME's layout and offset order."""
    ME = import_minkowski()
    from torch import nn

    def conv(cin, cout, k, stride=1, transpose=False, bias=False):
        cls = ME.MinkowskiConvolutionTranspose if transpose else ME.MinkowskiConvolution
        return cls(cin, cout, kernel_size=k, stride=stride, bias=bias, dimension=3)

    def bn(c):
        return ME.MinkowskiBatchNorm(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.proj = nn.Sequential(conv(cin, cout, 1), bn(cout)) if cin != cout else None
            self.conv1, self.bn1 = conv(cin, cout, 3), bn(cout)
            self.conv2, self.bn2 = conv(cout, cout, 3), bn(cout)
            self.relu = ME.MinkowskiReLU()

        def forward(self, x):
            identity = x if self.proj is None else self.proj(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            ch, ly, stem = cfg["channels"], cfg["layers"], cfg["stem_channels"]
            self.stem = nn.Sequential(conv(in_channels, stem, 5), bn(stem), ME.MinkowskiReLU())
            self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
            enc_ch, dec_ch = stem, ch[-1]
            for s in range(4):
                self.down.append(nn.Sequential(conv(enc_ch, ch[s], 2, 2), bn(ch[s]), ME.MinkowskiReLU()))
                self.enc.append(nn.Sequential(*[Block(ch[s], ch[s]) for _ in range(ly[s])]))
                below = ch[8 - s - 2]
                self.up.append(nn.Sequential(conv(below, dec_ch, 2, 2, transpose=True), bn(dec_ch),
                                             ME.MinkowskiReLU()))
                self.dec.append(nn.Sequential(*[Block(dec_ch + enc_ch if i == 0 else dec_ch, dec_ch)
                                                for i in range(ly[8 - s - 1])]))
                enc_ch, dec_ch = ch[s], below
            self.head = conv(ch[-1], num_classes, 1, bias=True)

        def forward(self, data):
            b = offset2batch(data["offset"])
            coords = torch.cat([b[:, None], data["grid_coord"].long()], 1).int()
            x = self.stem(ME.SparseTensor(data["feat"], coordinates=coords))
            skips = [x]
            for s in range(4):
                x = self.enc[s](self.down[s](x))
                skips.append(x)
            x = skips.pop()
            for s in reversed(range(4)):
                x = ME.cat(self.up[s](x), skips.pop())
                x = self.dec[s](x)
            return self.head(x).F

    torch.manual_seed(0)
    return Net().train()


def build_model(backend: str, mode: str = "pairs"):
    """SpUNet of params.yaml, built with spconv or with ``sparse_torch`` in place of it (the module it
    builds from swapped while building; calls swap it again, see ``model_table``)."""
    from pretrain3d.models import spunet

    torch.manual_seed(0)
    if backend == "spconv":
        return spunet.SpUNet(6, 20, **MODEL_CFG).train()
    if backend == "minkowski":
        return build_minkowski_spunet()
    orig = spunet._spconv
    spunet._spconv = lambda: st
    try:
        model = spunet.SpUNet(6, 20, **MODEL_CFG)
    finally:
        spunet._spconv = orig
    for m in model.modules():
        if isinstance(m, st._SparseConvBase):
            m.mode = "pairs" if backend == "open3d" else mode
    return model.train()


def model_table(total: int, variants, rounds: int, threads: int) -> list[dict]:
    """SpUNet forward and forward+backward per variant, the first variant (spconv) the reference."""
    from pretrain3d.models import spunet

    data = make_batch(total // 2, 2)
    models = {label: (build_model(backend, mode), backend) for label, backend, mode in variants}
    orig = spunet._spconv

    o3d = Open3dFunctional() if any(b == "open3d" for _, b, _ in variants) else None
    names = ("submconv", "sparseconv", "inverseconv")
    originals = {n: getattr(st, n) for n in names}

    def call(label):
        model, backend = models[label]
        if backend not in ("spconv", "minkowski"):
            spunet._spconv = lambda: st
        if backend == "open3d":
            for n in names:
                setattr(st, n, getattr(o3d, n))
        try:
            return model(data)
        finally:
            spunet._spconv = orig
            for n in names:
                setattr(st, n, originals[n])

    def fwd(label):
        with torch.no_grad():
            call(label)

    def fb(label):
        models[label][0].zero_grad(set_to_none=True)
        call(label).square().mean().backward()

    samples = {label: {"fwd": [], "fb": []} for label in models}
    for label in models:  # warm-up
        fwd(label)
        fb(label)
    # round robin, one call of each variant in turn: a change of load hits all variants alike, and
    # the per-round ratio to spconv (paired) is less noisy than a ratio of separate minima
    for _ in range(rounds):
        for kind, fn in (("fwd", fwd), ("fb", fb)):
            for label in models:
                c0, w0 = time.process_time(), time.perf_counter()
                fn(label)
                samples[label][kind].append(((time.process_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3))
    print(f"\n## SpUNet step: {total} voxels (batch of 2), threads={threads}, {rounds} rounds (round robin), "
          f"load average {load()}")
    print("CPU ms (min / median), wall ms (min); speedup: median over rounds of spconv's f+b "
          f"{'CPU' if threads == 1 else 'wall'} time / this one's in the same round")
    print(f"{'backend':<14} {'fwd cpu':>15} {'f+b cpu':>15} {'fwd wall':>9} {'f+b wall':>9} {'maps cpu':>9} "
          f"{'speedup f+b':>11} {'fwd':>6}")
    rows = []
    ref = next(iter(models))
    for label, (model, backend) in models.items():
        r = {}
        for kind in ("fwd", "fb"):
            cpu = sorted(c for c, _ in samples[label][kind])
            r[f"{kind}_cpu_min"], r[f"{kind}_cpu_median"] = cpu[0], float(np.median(cpu))
            r[f"{kind}_wall_min"] = min(w for _, w in samples[label][kind])
            j = 0 if threads == 1 else 1   # CPU time at 1 thread; wall time at more (spin-waits burn CPU)
            r[f"speedup_{kind}"] = float(np.median([a[j] / b[j] for a, b in
                                                    zip(samples[ref][kind], samples[label][kind])]))
        r["maps_cpu"] = map_time(data, backend, 5)
        print(f"{label:<14} {r['fwd_cpu_min']:6.0f} / {r['fwd_cpu_median']:6.0f} {r['fb_cpu_min']:6.0f} / "
              f"{r['fb_cpu_median']:6.0f} {r['fwd_wall_min']:9.0f} {r['fb_wall_min']:9.0f} {r['maps_cpu']:9.1f} "
              f"{r['speedup_fb']:10.2f}x {r['speedup_fwd']:5.2f}x")
        rows.append(dict(model=label, voxels=total, threads=threads, **r))
    return rows


def map_time(data, backend: str, repeat: int) -> float:
    """CPU ms to build every kernel map of one SpUNet step (stem k5, 5 levels of k3, 4 down maps)."""
    b = offset2batch(data["offset"])
    idx0 = torch.cat([b[:, None], data["grid_coord"].long()], 1).int()
    shape0 = (data["grid_coord"].max(0).values + 96).tolist()
    if backend == "minkowski":
        ME = import_minkowski()

        def run():
            x = ME.SparseTensor(torch.zeros(idx0.shape[0], 1), coordinates=idx0)
            mgr, key = x.coordinate_manager, x.coordinate_map_key
            mgr.kernel_map(key, key, 1, 5)
            for lvl in range(5):
                mgr.kernel_map(key, key, 1, 3)
                if lvl < 4:
                    out = mgr.stride(key, [2, 2, 2])
                    mgr.kernel_map(key, out, 2, 2)
                    key = out
        return timeit(run, repeat)[1]
    if backend == "spconv":
        be = SpconvBackend()
        one = [1, 1, 1]

        def run():
            idx, shape = idx0, shape0
            be.ops.get_indice_pairs(idx, 2, shape, be.algo, [5] * 3, one, one, one, [0] * 3, True, False)
            for lvl in range(5):
                be.ops.get_indice_pairs(idx, 2, shape, be.algo, [3] * 3, one, one, one, [0] * 3, True, False)
                if lvl < 4:
                    idx, _, _ = be.ops.get_indice_pairs(idx, 2, shape, be.algo, [2] * 3, [2] * 3, [0] * 3, one,
                                                        [0] * 3, False, False)
                    shape = [(s - 2) // 2 + 1 for s in shape]
    else:
        def run():
            idx, shape = idx0, shape0
            st.subm_map(idx, shape, 5)
            for lvl in range(5):
                st.subm_map(idx, shape, 3)
                if lvl < 4:
                    cm = st.conv_map(idx, shape, 2, 2)
                    idx, shape = cm.out_indices, cm.out_spatial_shape
    return timeit(run, repeat)[1]


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, nargs="+", default=[15500, 31000], help="voxels per batch of 2 rooms")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model-rounds", type=int, default=12, help="round-robin rounds of the model step")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="time every conv of the model at its level")
    ap.add_argument("--backends", nargs="+",
                    default=["spconv", "torch-pairs", "torch-pairs-keep", "torch-offset", "torch-im2col", "open3d",
                             "minkowski"])
    ap.add_argument("--json", type=Path, default=None, help="write all rows here")
    args = ap.parse_args(argv)

    backends = []
    for name in args.backends:
        try:
            if name == "spconv":
                backends.append(SpconvBackend())
            elif name.startswith("torch-"):
                backends.append(TorchBackend(name[len("torch-"):]))
            elif name == "open3d":
                backends.append(Open3dBackend())
            elif name == "minkowski":
                backends.append(MinkowskiBackend())
        except Exception as e:  # noqa: BLE001
            print(f"{name} unusable: {type(e).__name__}: {e}")
    print(f"torch {torch.__version__}, CPU: {os.cpu_count()} cores, load average {load()}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for total in args.voxels:
            idx, shape, _ = voxel_set(total)
            if not args.skip_layers:
                rows += layer_table(idx, shape, backends, args.repeat, threads)
            if args.breakdown:
                rows += breakdown_table(idx, shape, [b for b in backends if b.name in BREAKDOWN_BACKENDS],
                                        args.repeat, threads)
            if not args.skip_model:
                variants = [("spconv", "spconv", None)] + [
                    (b.name, "torch", "gemm" if b.mode == "im2col" else b.mode)
                    for b in backends if isinstance(b, TorchBackend)]
                for name in ("open3d", "minkowski"):
                    if any(b.name == name for b in backends):
                        variants.append((name, name, None))
                rows += model_table(total, variants, args.model_rounds, threads)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
