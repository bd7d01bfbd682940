"""Sparse 3D convolution in plain PyTorch: the parts of spconv 2.x that SpUNet uses, same semantics.

Measured against spconv 2.3's CPU path by ``scripts/bench_sparse_conv.py`` (issue 14, item 2); the
model runs on spconv (the whole-step gain of switching every layer was below the bar set for it, see
the script's docstring) except for the k=5 stem on the CPU, which this module computes
(``spunet._stem_conv_class``: spconv's 125-offset loop made it about half of a training step).

Three ways to compute a convolution, ``mode`` of a layer:

* ``"pairs"`` (default): all (input row, output row) pairs of a layer in one list grouped by
  kernel offset; in chunks of several MB of rows: one ``index_select`` of the input rows, one
  ``mm`` per offset into one buffer, one ``index_add_`` into the output (backward likewise). The
  same arithmetic as spconv's CPU loop with a few framework calls per chunk instead of ~5 per
  offset, no input gradient computed when none is needed (the stem), and maps built in torch:
  integer coordinates hashed to keys (a dense int32 table over the bounding box, or sorted keys
  and ``searchsorted``), only half of a submanifold kernel's offsets looked up (offset ``-d`` holds
  offset ``d``'s pairs swapped). ``"pairs-keep"`` also keeps the gathered input rows for the
  weight gradient (faster backward, pairs x Cin floats more memory per layer).
* ``"offset"``: spconv's loop as it is, per offset ``index_select`` -> ``mm`` -> ``index_add_``.
* ``"gemm"``: im2col, every offset at once: the ``(N, K*Cin)`` neighbourhood matrix (a zero row for
  a missing neighbour) and one GEMM with the ``(K*Cin, Cout)`` weight; backward by gathers and GEMMs
  only. Slow on surfaces: ~6 of 27 neighbours exist, so most of the matrix is zeros.

Semantics (checked against spconv 2.3.8 in ``tests/test_sparse_torch.py``):

* indices are ``(N, 4)`` int32 rows ``[batch, x, y, z]``; weights are KRSC, shape
  ``(Cout, kx, ky, kz, Cin)``, bias ``(Cout,)``: parameter names, shapes and initialisation (the same
  random draws) are spconv's, so a ``state_dict`` moves between the two backends unchanged;
* the kernel offset ``(ix, iy, iz)`` has the flat index ``(ix * ky + iy) * kz + iz``;
* ``SubMConv3d``: outputs at the input coordinates; the input at ``out + (i - k // 2) * dilation``
  is multiplied by ``weight[:, i]`` (padding is ignored, as in spconv);
* ``SparseConv3d``: input ``c`` reaches output ``o`` through offset ``i`` when
  ``c = o * stride - padding + i * dilation``; output coordinates are the distinct reachable ``o``
  inside the output shape ``(s + 2p - d(k-1) - 1) // stride + 1``, listed in spconv's order (first
  appearance when looping over the offsets, then over the input rows);
* ``SparseInverseConv3d``: the transpose of the ``SparseConv3d`` that registered the same
  ``indice_key``, back to that convolution's input coordinates, rows and spatial shape;
* a 1x1x1 ``SubMConv3d`` computes ``features @ weight.view(Cin, Cout) + bias`` as spconv 2.3 does
  (a reinterpretation of the ``(Cout, 1, 1, 1, Cin)`` weight, not its transpose);
* kernel maps are cached in the tensor's ``indice_dict`` under ``indice_key`` and travel with the
  tensors derived from it, so the decoder reuses the encoder's maps.

Over 500 lines because it is one measured alternative backend (four layer types, their kernel maps
and hand-written backward passes in four modes) that is checked against spconv as a unit; it is not
on the training path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import init

from pretrain3d.scatter import scatter_first

__all__ = [
    "SparseConvTensor", "SubMConv3d", "SparseConv3d", "SparseInverseConv3d", "PairList", "SubMMap", "ConvMap",
    "subm_map", "conv_map", "submconv", "sparseconv", "inverseconv",
]

# A dense lookup table over the (batch, padded bounding box) volume is used for neighbour search
# when it has at most this many cells per active voxel (plus a fixed allowance); otherwise the
# sorted keys are searched (torch.searchsorted).
DENSE_TABLE_CELLS_PER_VOXEL = 64
DENSE_TABLE_MIN_CELLS = 1 << 22


def _triple(v) -> list[int]:
    if isinstance(v, (int, np.integer)):
        return [int(v)] * 3
    v = [int(x) for x in v]
    if len(v) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v}")
    return v


# ----------------------------------------------------------------------------- sparse tensor
class SparseConvTensor:
    """The subset of ``spconv.pytorch.SparseConvTensor`` that the project uses."""

    def __init__(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int],
                 batch_size: int, indice_dict: Optional[dict] = None):
        self._features = features
        self.indices = indices
        self.spatial_shape = [int(s) for s in spatial_shape]
        self.batch_size = int(batch_size)
        self.indice_dict = {} if indice_dict is None else indice_dict

    @property
    def features(self) -> torch.Tensor:
        return self._features

    @features.setter
    def features(self, val):  # same guard as spconv
        raise ValueError("you can't set feature directly, use 'x = x.replace_feature(your_new_feature)'")

    def replace_feature(self, feature: torch.Tensor) -> "SparseConvTensor":
        return SparseConvTensor(feature, self.indices, self.spatial_shape, self.batch_size, self.indice_dict)

    def shadow_copy(self) -> "SparseConvTensor":
        return self.replace_feature(self._features)

    def find_indice_pair(self, key):
        return None if key is None else self.indice_dict.get(key)

    @property
    def spatial_size(self) -> int:
        return int(np.prod(self.spatial_shape))

    def dense(self, channels_first: bool = True) -> torch.Tensor:
        c = self._features.shape[1]
        out = self._features.new_zeros([self.batch_size, *self.spatial_shape, c])
        idx = self.indices.long()
        out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = self._features
        return out.permute(0, 4, 1, 2, 3).contiguous() if channels_first else out

    def __repr__(self) -> str:
        return f"SparseConvTensor[shape={tuple(self._features.shape)}] (pretrain3d torch backend)"


# ----------------------------------------------------------------------------- kernel maps
def _kernel_offsets(ksize: Sequence[int], device) -> torch.Tensor:
    """(K, 3) int64 kernel positions (ix, iy, iz) in flat-index order."""
    g = torch.meshgrid(*[torch.arange(k, device=device) for k in ksize], indexing="ij")
    return torch.stack([a.reshape(-1) for a in g], 1)


class _CoordTable:
    """Maps integer coordinates (batch, x, y, z) to row numbers; neighbour queries by key arithmetic.

    Keys are mixed-radix over the coordinates' bounding box grown by ``margin`` on each side, so
    ``key(c + d) == key(c) + key_delta(d)`` for every ``|d| <= margin``. Lookup is a dense table
    when the box is small enough, else binary search in the sorted keys.
    """

    def __init__(self, indices: torch.Tensor, margin: Sequence[int]):
        idx = indices.long()
        n = idx.shape[0]
        self.n = n
        dev = idx.device
        margin_t = torch.tensor(margin, dtype=torch.long, device=dev)
        if n:
            lo = idx[:, 1:].amin(0) - margin_t
            hi = idx[:, 1:].amax(0) + margin_t
            bmax = int(idx[:, 0].max()) + 1
        else:
            lo = hi = torch.zeros(3, dtype=torch.long, device=dev)
            bmax = 1
        dims = (hi - lo + 1).tolist()
        self.lo = lo
        self.stride = torch.tensor([dims[1] * dims[2], dims[2], 1], dtype=torch.long, device=dev)
        self.bstride = dims[0] * dims[1] * dims[2]
        self.volume = bmax * self.bstride
        self.keys = self.key_of(idx)
        self.dense = self.volume <= DENSE_TABLE_CELLS_PER_VOXEL * n + DENSE_TABLE_MIN_CELLS
        if self.dense:   # int32 rows: half the memory traffic of int64
            self.table = torch.full((self.volume,), -1, dtype=torch.int32, device=dev)
            self.table[self.keys] = torch.arange(n, dtype=torch.int32, device=dev)
        else:
            self.sorted_keys, self.order = torch.sort(self.keys)

    def key_of(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[:, 0] * self.bstride + ((idx[:, 1:] - self.lo) * self.stride).sum(1)

    def delta(self, d: torch.Tensor) -> torch.Tensor:
        return (d * self.stride).sum(-1)

    def lookup_raw(self, keys: torch.Tensor) -> torch.Tensor:
        """Row numbers for ``keys`` (any shape), -1 where absent (int32 or int64)."""
        if self.n == 0:
            return torch.full_like(keys, -1)
        if self.dense:   # index_select takes int32 indices as they are (advanced indexing converts)
            return self.table.index_select(0, keys.reshape(-1)).view(keys.shape)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.n - 1)
        hit = self.sorted_keys[pos] == keys
        return torch.where(hit, self.order[pos], -1)


@dataclass
class PairList:
    """All (input row, output row) pairs of a convolution, grouped by kernel offset.

    ``in_rows[starts[i]:starts[i+1]]`` / ``out_rows[...]`` are the pairs of offset ``i``. With
    ``center`` set (submanifold), that offset is the identity and holds no pairs. ``out_unique`` /
    ``in_unique``: every output / input row occurs in at most one pair (then the scatter-add on that
    side is a plain copy).
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    starts: list
    n_in: int
    n_out: int
    center: Optional[int] = None
    in_unique: bool = False
    out_unique: bool = False
    _chunks: Optional[dict] = None
    _per_offset: Optional[list] = None

    @property
    def kvol(self) -> int:
        return len(self.starts) - 1

    def per_offset(self) -> list:
        """Per offset ``(in_rows, out_rows)`` (for the plain per-offset path); views, made once."""
        if self._per_offset is None:
            b = self.starts
            self._per_offset = [(self.in_rows[b[i]:b[i + 1]], self.out_rows[b[i]:b[i + 1]]) for i in range(self.kvol)]
        return self._per_offset

    def transposed(self) -> "PairList":
        return PairList(self.out_rows, self.in_rows, self.starts, self.n_out, self.n_in, self.center,
                        self.out_unique, self.in_unique)


@dataclass
class SubMMap:
    """Submanifold kernel map: the pairs of every offset but the centre (identity), as a PairList.

    ``nbr`` (N, K): row of the input at ``out_j + d_i`` (``n`` if absent), built on demand (im2col).
    """

    plist: PairList
    ksize: list
    dilation: list
    spatial_shape: list
    n: int
    _nbr: Optional[torch.Tensor] = None

    def pair_list(self) -> PairList:
        return self.plist

    @property
    def nbr(self) -> torch.Tensor:
        if self._nbr is None:
            pl, k = self.plist, self.plist.kvol
            nbr = torch.full((self.n, k), self.n, dtype=torch.long, device=pl.in_rows.device)
            nbr[:, pl.center] = torch.arange(self.n, device=nbr.device)
            counts = torch.tensor(pl.starts, device=nbr.device).diff()
            kk = torch.repeat_interleave(torch.arange(k, device=nbr.device), counts)
            nbr[pl.out_rows, kk] = pl.in_rows
            self._nbr = nbr
        return self._nbr

    def pairs(self):
        return self.plist.per_offset()


@dataclass
class ConvMap:
    """Strided-conv kernel map between ``in_indices`` (N_in) and ``out_indices`` (N_out).

    ``plist``: the (input row, output row) pairs grouped by offset. ``table[o * K + i]`` = input row
    feeding output ``o`` through offset ``i`` (``N_in`` if none), built on demand. ``pos[c]`` = the
    single slot ``o * K + i`` that input ``c`` feeds when every input feeds exactly one slot
    (kernel == stride, no padding, no dilation), else None.
    """

    plist: PairList
    slot: torch.Tensor           # (P,) o * K + i of every pair, in plist order
    in_indices: torch.Tensor
    out_indices: torch.Tensor
    ksize: list
    stride: list
    padding: list
    dilation: list
    spatial_shape: list
    out_spatial_shape: list
    simple: bool
    is_subm: bool = False
    _table: Optional[torch.Tensor] = None
    _pos: Optional[torch.Tensor] = None

    def pair_list(self) -> PairList:
        return self.plist

    @property
    def table(self) -> torch.Tensor:
        if self._table is None:
            kvol = int(np.prod(self.ksize))
            n_in = self.in_indices.shape[0]
            t = torch.full((self.out_indices.shape[0] * kvol,), n_in, dtype=torch.long, device=self.slot.device)
            t[self.slot] = self.plist.in_rows
            self._table = t
        return self._table

    @property
    def pos(self) -> Optional[torch.Tensor]:
        if self.simple and self._pos is None:
            self._pos = torch.empty_like(self.slot).index_copy_(0, self.plist.in_rows, self.slot)
        return self._pos if self.simple else None

    def pairs(self):
        return self.plist.per_offset()


def subm_map(indices: torch.Tensor, spatial_shape, ksize, dilation=(1, 1, 1)) -> SubMMap:
    """Pairs of a submanifold convolution. Offsets ``i`` and ``K-1-i`` are opposite (``d`` and ``-d``),
    so only the offsets before the centre are looked up; the others are the same pairs swapped."""
    ksize, dilation = _triple(ksize), _triple(dilation)
    if any(k % 2 == 0 for k in ksize):
        raise ValueError(f"submanifold convolution needs an odd kernel size (its centre is the identity), "
                         f"got {ksize}")
    dev = indices.device
    n = indices.shape[0]
    center = torch.tensor([k // 2 for k in ksize], device=dev)
    dil = torch.tensor(dilation, device=dev)
    d = (_kernel_offsets(ksize, dev) - center) * dil          # (K, 3)
    kvol = d.shape[0]
    c = kvol // 2
    table = _CoordTable(indices, (center * dil).tolist())
    delta = table.delta(d[:c])
    keys = table.keys
    if table.dense and table.volume < 2 ** 31:   # int32 keys: half the memory traffic
        keys, delta = keys.to(torch.int32), delta.to(torch.int32)
    q = keys.unsqueeze(0) + delta.unsqueeze(1)               # (c, N), offsets before the centre
    r = table.lookup_raw(q)
    flat = torch.nonzero(r.view(-1) >= 0).squeeze(1)        # by offset, then by output row
    k_idx = torch.div(flat, n, rounding_mode="floor")
    j = flat - k_idx * n
    nb = r.view(-1).index_select(0, flat).long()
    counts = torch.bincount(k_idx, minlength=c).tolist()
    # offset i < c: output j reads its neighbour nb; offset K-1-i: output nb reads j
    bounds = [0] + list(np.cumsum(counts))
    segs = [(bounds[i], bounds[i + 1]) for i in range(c)]
    rev = [slice(b, e) for b, e in reversed(segs)]
    in_rows = torch.cat([nb] + [j[sl] for sl in rev])
    out_rows = torch.cat([j] + [nb[sl] for sl in rev])
    starts = bounds + [bounds[-1]] + [bounds[-1] + x for x in np.cumsum(counts[::-1]).tolist()]
    starts = [int(x) for x in starts]
    pl = PairList(in_rows, out_rows, starts, n, n, c)
    return SubMMap(pl, ksize, dilation, list(spatial_shape), n)


def conv_output_shape(spatial_shape, ksize, stride, padding, dilation) -> list[int]:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(spatial_shape, ksize, stride, padding, dilation)]


def conv_map(indices: torch.Tensor, spatial_shape, ksize, stride, padding=(0, 0, 0),
             dilation=(1, 1, 1)) -> ConvMap:
    ksize, stride, padding, dilation = map(_triple, (ksize, stride, padding, dilation))
    out_shape = conv_output_shape(spatial_shape, ksize, stride, padding, dilation)
    if any(s <= 0 for s in out_shape):
        raise ValueError(f"output spatial shape {out_shape} reaches zero (input {list(spatial_shape)})")
    dev = indices.device
    idx = indices.long()
    n = idx.shape[0]
    kvol = int(np.prod(ksize))
    st = torch.tensor(stride, device=dev)
    oshape = torch.tensor(out_shape, device=dev)
    simple = ksize == stride and padding == [0, 0, 0] and dilation == [1, 1, 1]
    if simple:   # every input feeds exactly one (output, offset): o = c // s, i = c % s
        c = idx[:, 1:]
        o = torch.div(c, st, rounding_mode="floor")
        r = c - o * st
        k = (r[:, 0] * ksize[1] + r[:, 1]) * ksize[2] + r[:, 2]
        in_rows = torch.arange(n, device=dev)
        keep = (o < oshape).all(1)
        if not bool(keep.all()):
            in_rows, o, k = in_rows[keep], o[keep], k[keep]
            simple = False
    else:        # all (input, offset) pairs that land on the output grid
        kpos = _kernel_offsets(ksize, dev)                                   # (K, 3)
        t = idx[:, None, 1:] + torch.tensor(padding, device=dev) - kpos * torch.tensor(dilation, device=dev)
        o = torch.div(t, st, rounding_mode="floor")
        ok = ((o * st == t) & (o >= 0) & (o < oshape)).all(2)              # (N, K)
        in_rows, k = torch.nonzero(ok, as_tuple=True)
        o = o[in_rows, k]
    # spconv's loop order: offsets outer, input rows inner
    order = torch.sort(k, stable=True).indices
    in_rows, k, o = in_rows[order], k[order], o[order]
    b = idx[in_rows, 0]
    s1, s2 = out_shape[1] * out_shape[2], out_shape[2]
    bstride = out_shape[0] * s1
    key = b * bstride + o[:, 0] * s1 + o[:, 1] * s2 + o[:, 2]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    n_out = uniq.shape[0]
    if n_out:
        # spconv lists the outputs in order of first appearance along that loop
        first = scatter_first(inv, n_out)
        perm = torch.argsort(first)
        uniq = uniq[perm]
        inv = torch.empty_like(perm).index_copy_(0, perm, torch.arange(n_out, device=dev))[inv]
    ob = torch.div(uniq, bstride, rounding_mode="floor")
    rem = uniq - ob * bstride
    ox = torch.div(rem, s1, rounding_mode="floor")
    rem = rem - ox * s1
    oy = torch.div(rem, s2, rounding_mode="floor")
    oz = rem - oy * s2
    out_indices = torch.stack([ob, ox, oy, oz], 1).to(indices.dtype)
    counts = torch.bincount(k, minlength=kvol).tolist()
    starts = [0] + np.cumsum(counts).tolist()
    plist = PairList(in_rows, inv, [int(x) for x in starts], n, n_out, None, in_unique=simple)
    return ConvMap(plist, inv * kvol + k, indices, out_indices, ksize, stride, padding, dilation,
                   list(spatial_shape), out_shape, simple)


# ----------------------------------------------------------------------------- autograd functions
def _pad_row(x: torch.Tensor) -> torch.Tensor:
    """``x`` with one zero row appended (the target of 'absent' in the maps)."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


def _gather_cols(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """``(rows, K*C)``: ``x_pad[index]`` with ``index`` flat (rows*K,) or (rows, K)."""
    return _pad_row(x).index_select(0, index.reshape(-1)).view(rows, -1)


def _w_mat(weight: torch.Tensor) -> torch.Tensor:
    """KRSC ``(Cout, k, k, k, Cin)`` -> ``(K*Cin, Cout)`` matching the im2col column order."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, -1, cin).permute(1, 2, 0).reshape(-1, cout)


def _w_from_mat(grad_mat: torch.Tensor, shape) -> torch.Tensor:
    cout, cin = shape[0], shape[-1]
    return grad_mat.reshape(-1, cin, cout).permute(2, 0, 1).reshape(shape)


class _SubMConvFn(torch.autograd.Function):
    """out = im2col(x, nbr) @ W; dx = im2col(dout, nbr) @ W_flipped (no scatter); dW = cols^T @ dout."""

    @staticmethod
    def forward(ctx, x, weight, nbr, save_cols: bool):
        n = nbr.shape[0]
        cols = _gather_cols(x, nbr, n)
        out = cols @ _w_mat(weight)
        ctx.nbr = nbr
        ctx.wshape = weight.shape
        ctx.save_cols = save_cols
        if save_cols:
            ctx.save_for_backward(cols, weight)
        else:
            ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved, weight = ctx.saved_tensors
        nbr = ctx.nbr
        n = nbr.shape[0]
        grad = grad.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[1]:
            cols = saved if ctx.save_cols else _gather_cols(saved, nbr, n)
            dw = _w_from_mat(cols.t() @ grad, ctx.wshape)
        if ctx.needs_input_grad[0]:
            cout, cin = weight.shape[0], weight.shape[-1]
            # offset i of an output is offset K-1-i seen from the input (odd, centred kernel)
            w_t = weight.reshape(cout, -1, cin).flip(1).permute(1, 0, 2).reshape(-1, cin)   # (K*Cout, Cin)
            dx = _gather_cols(grad, nbr, n) @ w_t
        return dx, dw, None, None


class _PairConvFn(torch.autograd.Function):
    """Per-offset path (spconv's CPU algorithm): for each offset, gather -> mm -> ``index_add_``.

    ``pairs[i] = (in_rows, out_rows)`` for kernel offset ``i``; with ``center`` set (submanifold),
    that offset is the identity map and starts the output as ``x @ W_center^T``.
    """

    @staticmethod
    def forward(ctx, x, weight, pairs, n_out: int, center: Optional[int]):
        cout, cin = weight.shape[0], weight.shape[-1]
        w = weight.reshape(cout, -1, cin)
        out = x @ w[:, center].t() if center is not None else x.new_zeros(n_out, cout)
        for i, (in_rows, out_rows) in enumerate(pairs):
            if i == center or in_rows.numel() == 0:
                continue
            out.index_add_(0, out_rows, x.index_select(0, in_rows) @ w[:, i].t())
        ctx.pairs, ctx.center = pairs, center
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        cout, cin = weight.shape[0], weight.shape[-1]
        w = weight.reshape(cout, -1, cin)
        grad = grad.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = dw = None
        c = ctx.center
        if need_x:
            dx = grad @ w[:, c] if c is not None else torch.zeros_like(x)
        if need_w:
            dw = torch.zeros_like(w)
            if c is not None:
                dw[:, c] = grad.t() @ x
        for i, (in_rows, out_rows) in enumerate(ctx.pairs):
            if i == c or in_rows.numel() == 0:
                continue
            g = grad.index_select(0, out_rows)
            if need_x:
                dx.index_add_(0, in_rows, g @ w[:, i])
            if need_w:
                dw[:, i] = g.t() @ x.index_select(0, in_rows)
        return dx, (dw.reshape(weight.shape) if need_w else None), None, None, None


def _scatter_rows(out: torch.Tensor, rows: torch.Tensor, src: torch.Tensor, unique: bool) -> torch.Tensor:
    """``out[rows] += src`` (``index_add_``), or a copy when ``rows`` are distinct and ``out`` is zero."""
    if unique:
        return out.index_copy_(0, rows, src)
    return out.index_add_(0, rows, src)


# Pairs are processed in chunks of about this many bytes of gathered rows (one gather, one GEMM per
# offset in the chunk, one scatter-add). Measured on the 2-core box at 31k voxels: chunks of 1-4 MB
# beat cache-sized ones (128-256 KB, more calls) and a single chunk per layer by a few per cent.
CHUNK_BYTES = 1 << 22


def _chunks(pl: "PairList", row_bytes: int):
    """[(b, e, [(offset, s, e), ...])]: consecutive pair ranges of about CHUNK_BYTES of rows each;
    small offsets share a chunk, large ones are split over several."""
    key = (row_bytes, CHUNK_BYTES)
    if pl._chunks is None:
        pl._chunks = {}
    if key in pl._chunks:
        return pl._chunks[key]
    limit = max(64, CHUNK_BYTES // max(1, row_bytes))
    out, cur, cur_b, cur_n = [], [], 0, 0
    for i in range(pl.kvol):
        s, e = pl.starts[i], pl.starts[i + 1]
        if i == pl.center:
            continue
        while s < e:
            if cur_n == limit:
                out.append((cur_b, cur_b + cur_n, cur))
                cur, cur_n = [], 0
            take = min(e - s, limit - cur_n)
            if not cur:
                cur_b = s
            cur.append((i, s, s + take))
            cur_n += take
            s += take
    if cur:
        out.append((cur_b, cur_b + cur_n, cur))
    pl._chunks[key] = out
    return out


class _GroupedPairsFn(torch.autograd.Function):
    """spconv's gather -> GEMM -> scatter-add over chunks of the pair list.

    Per chunk: one ``index_select`` of the pairs' input rows, one ``mm`` per offset into one buffer,
    one ``index_add_`` into the output; backward likewise with the output gradient's rows, and the
    input rows again for the weight gradient (gathered anew, or kept from the forward with
    ``keep_gathered``). No input gradient is computed when the input needs none.
    """

    @staticmethod
    def forward(ctx, x, weight, pl: PairList, keep_gathered: bool):
        cout, cin = weight.shape[0], weight.shape[-1]
        wt = weight.reshape(cout, -1, cin).permute(1, 2, 0).contiguous()     # (K, Cin, Cout)
        if pl.center is not None:
            out = x @ wt[pl.center]
        else:
            out = x.new_zeros(pl.n_out, cout)
        keep = []
        for b, e, segs in _chunks(pl, 4 * (cin + cout)):
            xg = x.index_select(0, pl.in_rows[b:e])
            y = x.new_empty(e - b, cout)
            for i, s0, s1 in segs:
                torch.mm(xg[s0 - b:s1 - b], wt[i], out=y[s0 - b:s1 - b])
            _scatter_rows(out, pl.out_rows[b:e], y, pl.out_unique)
            if keep_gathered and weight.requires_grad:
                keep.append(xg)
        ctx.pl = pl
        ctx.keep = keep
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        pl = ctx.pl
        cout, cin = weight.shape[0], weight.shape[-1]
        grad = grad.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.reshape(cout, -1, cin).transpose(0, 1).contiguous()       # (K, Cout, Cin)
        dwt = weight.new_zeros(pl.kvol, cin, cout) if need_w else None
        dx = None
        if need_x:
            dx = grad @ w[pl.center] if pl.center is not None else x.new_zeros(pl.n_in, cin)
        if need_w and pl.center is not None:
            torch.mm(x.t(), grad, out=dwt[pl.center])
        keep = ctx.keep
        chunks = _chunks(pl, 4 * (cin + cout)) if keep else _chunks(pl, 4 * (2 * cin + cout))
        for ci, (b, e, segs) in enumerate(chunks):
            gg = grad.index_select(0, pl.out_rows[b:e])
            if need_w:
                xg = keep[ci] if keep else x.index_select(0, pl.in_rows[b:e])
                for i, s0, s1 in segs:
                    dwt[i].addmm_(xg[s0 - b:s1 - b].t(), gg[s0 - b:s1 - b])
            if need_x:
                dxg = x.new_empty(e - b, cin)
                for i, s0, s1 in segs:
                    torch.mm(gg[s0 - b:s1 - b], w[i], out=dxg[s0 - b:s1 - b])
                _scatter_rows(dx, pl.in_rows[b:e], dxg, pl.in_unique)
        dw = dwt.permute(2, 0, 1).reshape(weight.shape) if need_w else None
        return dx, dw, None, None


class _ConvFn(torch.autograd.Function):
    """Strided conv: out = cols(N_out, K*Cin) @ W with cols gathered from x through ``table``."""

    @staticmethod
    def forward(ctx, x, weight, cmap: ConvMap):
        n_out = cmap.out_indices.shape[0]
        cols = _gather_cols(x, cmap.table, n_out)
        ctx.cmap = cmap
        ctx.n_in = x.shape[0]
        ctx.save_for_backward(x, weight)
        return cols @ _w_mat(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        cmap = ctx.cmap
        n_out = cmap.out_indices.shape[0]
        cin = weight.shape[-1]
        grad = grad.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = _w_from_mat(_gather_cols(x, cmap.table, n_out).t() @ grad, weight.shape)
        if ctx.needs_input_grad[0]:
            gcols = (grad @ _w_mat(weight).t()).view(-1, cin)               # (N_out*K, Cin)
            if cmap.pos is not None:
                dx = gcols.index_select(0, cmap.pos)
            else:
                dx = x.new_zeros(ctx.n_in + 1, cin).index_add_(0, cmap.table, gcols)[:-1]
        return dx, dw, None


class _InverseConvFn(torch.autograd.Function):
    """Transpose of a strided conv: z = f @ W_all (N_out, K*Cout); out[c] = sum of z slots feeding c."""

    @staticmethod
    def forward(ctx, f, weight, cmap: ConvMap):
        n = cmap.in_indices.shape[0]
        cout = weight.shape[0]
        z = (f @ _w_inv_mat(weight)).view(-1, cout)                         # (N_out*K, Cout)
        if cmap.pos is not None:
            out = z.index_select(0, cmap.pos)
        else:
            out = z.new_zeros(n + 1, cout).index_add_(0, cmap.table, z)[:-1]
        ctx.cmap = cmap
        ctx.save_for_backward(f, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        f, weight = ctx.saved_tensors
        cmap = ctx.cmap
        n_out = f.shape[0]
        grad = grad.contiguous()
        gz = _gather_cols(grad, cmap.table, n_out)                          # (N_out, K*Cout)
        df = dw = None
        if ctx.needs_input_grad[0]:
            df = gz @ _w_inv_mat(weight).t()
        if ctx.needs_input_grad[1]:
            cout, cin = weight.shape[0], weight.shape[-1]
            g = f.t() @ gz                                                  # (Cin, K*Cout)
            dw = g.view(cin, -1, cout).permute(2, 1, 0).reshape(weight.shape)
        return df, dw, None


def _w_inv_mat(weight: torch.Tensor) -> torch.Tensor:
    """KRSC ``(Cout, k, k, k, Cin)`` -> ``(Cin, K*Cout)`` with column block i = ``weight[:, i].T``."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, -1, cin).permute(2, 1, 0).reshape(cin, -1)


# functional entry points
MODES = ("pairs", "pairs-keep", "offset", "gemm")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown sparse-conv mode {mode!r}; expected one of {MODES}")


def submconv(x: torch.Tensor, weight: torch.Tensor, smap: SubMMap, mode: str = "pairs",
             save_cols: bool = False) -> torch.Tensor:
    _check_mode(mode)
    if smap.n == 0:
        return x.new_zeros(0, weight.shape[0]) + 0 * weight.sum()
    if mode == "pairs":
        return _GroupedPairsFn.apply(x, weight, smap.pair_list(), False)
    if mode == "pairs-keep":   # keep the gathered inputs for the backward (memory: pairs x Cin)
        return _GroupedPairsFn.apply(x, weight, smap.pair_list(), True)
    if mode == "offset":
        return _PairConvFn.apply(x, weight, smap.pairs(), smap.n, smap.nbr.shape[1] // 2)
    return _SubMConvFn.apply(x, weight, smap.nbr, save_cols)


def sparseconv(x: torch.Tensor, weight: torch.Tensor, cmap: ConvMap, mode: str = "pairs") -> torch.Tensor:
    _check_mode(mode)
    if mode == "pairs":
        return _GroupedPairsFn.apply(x, weight, cmap.pair_list(), False)
    if mode == "pairs-keep":
        return _GroupedPairsFn.apply(x, weight, cmap.pair_list(), True)
    if mode == "offset":
        return _PairConvFn.apply(x, weight, cmap.pairs(), cmap.out_indices.shape[0], None)
    return _ConvFn.apply(x, weight, cmap)


def inverseconv(f: torch.Tensor, weight: torch.Tensor, cmap: ConvMap, mode: str = "pairs") -> torch.Tensor:
    _check_mode(mode)
    if mode == "pairs":
        return _GroupedPairsFn.apply(f, weight, cmap.pair_list().transposed(), False)
    if mode == "pairs-keep":
        return _GroupedPairsFn.apply(f, weight, cmap.pair_list().transposed(), True)
    if mode == "offset":
        swapped = [(o, i) for i, o in cmap.pairs()]
        return _PairConvFn.apply(f, weight, swapped, cmap.in_indices.shape[0], None)
    return _InverseConvFn.apply(f, weight, cmap)


# ----------------------------------------------------------------------------- modules
class _SparseConvBase(nn.Module):
    """Parameters and initialisation exactly as spconv 2.x's ``SparseConvolution`` (KRSC)."""

    subm = False
    inverse = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, indice_key: Optional[str] = None, algo=None,
                 fp32_accum=None, record_voxel_count: bool = False, large_kernel_fast_algo: bool = False,
                 name=None, device=None, dtype=None):
        super().__init__()
        # spconv options SpUNet never sets: refused as bad arguments rather than silently ignored
        if groups != 1:
            raise ValueError(f"sparse_torch convolutions take groups=1 only (got {groups})")
        if record_voxel_count:
            raise ValueError("sparse_torch convolutions do not record voxel counts (record_voxel_count=True)")
        self.ndim = 3
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.dilation = _triple(dilation)
        self.groups = groups
        self.indice_key = indice_key
        self.name = name
        kv = int(np.prod(self.kernel_size))
        self.conv1x1 = kv == 1 and (self.subm or int(np.prod(self.stride)) == 1)
        # how to compute it (see the module docstring): "pairs", "pairs-keep", "offset" or "gemm"
        self.mode = "pairs"
        self.save_cols = False
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.zeros(out_channels, *self.kernel_size, in_channels, **factory))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # spconv's _custom_kaiming_uniform_(a=sqrt(5)) with its fan (in * kernel volume): same draws
        kv = int(np.prod(self.kernel_size))
        fan_in = self.in_channels * kv
        gain = init.calculate_gain("leaky_relu", math.sqrt(5))
        bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.bias is None:
            s += ", bias=False"
        if self.indice_key is not None:
            s += f", indice_key={self.indice_key!r}"
        return s

    def _add_bias(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias


class SubMConv3d(_SparseConvBase):
    subm = True

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        feat = x.features
        if feat.shape[1] != self.in_channels:
            raise ValueError(f"channel size mismatch: {feat.shape[1]} != {self.in_channels}")
        if self.conv1x1:
            return x.replace_feature(self._add_bias(feat @ self.weight.view(self.in_channels, self.out_channels)))
        smap = x.find_indice_pair(self.indice_key)
        indice_dict = x.indice_dict
        if smap is not None:
            if not isinstance(smap, SubMMap):
                raise ValueError(f"indice_key {self.indice_key!r} holds a strided conv's map, not a subm map")
            if smap.ksize != self.kernel_size or smap.dilation != self.dilation or smap.n != feat.shape[0]:
                raise ValueError(f"subm with indice_key {self.indice_key!r} must share kernel size, dilation "
                                 f"and voxels with the layer that created it")
        else:
            smap = subm_map(x.indices, x.spatial_shape, self.kernel_size, self.dilation)
            if self.indice_key is not None:
                indice_dict = dict(indice_dict)
                indice_dict[self.indice_key] = smap
        out = self._add_bias(submconv(feat.contiguous(), self.weight, smap, self.mode, self.save_cols))
        return SparseConvTensor(out, x.indices, x.spatial_shape, x.batch_size, indice_dict)


class SparseConv3d(_SparseConvBase):
    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        feat = x.features
        if feat.shape[1] != self.in_channels:
            raise ValueError(f"channel size mismatch: {feat.shape[1]} != {self.in_channels}")
        if self.conv1x1:
            out = self._add_bias(feat @ self.weight.view(self.in_channels, self.out_channels))
            return x.replace_feature(out)
        if self.indice_key is not None and self.indice_key in x.indice_dict:
            raise ValueError(f"your indice key {self.indice_key} already exists in this sparse tensor.")
        cmap = conv_map(x.indices, x.spatial_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        indice_dict = x.indice_dict
        if self.indice_key is not None:
            indice_dict = dict(indice_dict)
            indice_dict[self.indice_key] = cmap
        if feat.shape[0] == 0:
            out = feat.new_zeros(0, self.out_channels) + 0 * self.weight.sum()
        else:
            out = sparseconv(feat.contiguous(), self.weight, cmap, self.mode)
        return SparseConvTensor(self._add_bias(out), cmap.out_indices, cmap.out_spatial_shape, x.batch_size,
                                indice_dict)


class SparseInverseConv3d(_SparseConvBase):
    inverse = True

    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias: bool = True, algo=None,
                 fp32_accum=None, large_kernel_fast_algo: bool = False, name=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, indice_key=indice_key, name=name,
                         device=device, dtype=dtype)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        feat = x.features
        if feat.shape[1] != self.in_channels:
            raise ValueError(f"channel size mismatch: {feat.shape[1]} != {self.in_channels}")
        cmap = x.find_indice_pair(self.indice_key)
        if not isinstance(cmap, ConvMap):
            raise ValueError(f"inverse conv needs the map of a SparseConv3d with indice_key {self.indice_key!r}")
        if cmap.ksize != self.kernel_size:
            raise ValueError(f"Inverse with same indice_key must have same kernel size, expect {cmap.ksize}, "
                             f"this layer {self.kernel_size}")
        if x.spatial_shape != cmap.out_spatial_shape or feat.shape[0] != cmap.out_indices.shape[0]:
            raise ValueError("Inverse with same indice_key must have the same spatial structure as the output of "
                             "the convolution that created it")
        if cmap.in_indices.shape[0] == 0:
            out = feat.new_zeros(0, self.out_channels) + 0 * self.weight.sum()
        else:
            out = inverseconv(feat.contiguous(), self.weight, cmap, self.mode)
        return SparseConvTensor(self._add_bias(out), cmap.in_indices, cmap.spatial_shape, x.batch_size,
                                x.indice_dict)
