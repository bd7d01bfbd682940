"""Scatter reductions along dim 0 (many source rows -> one target row), with two interchangeable backends.

``scatter_mean`` (the feature volume of PonderV2 / ConDense), ``scatter_max`` / ``scatter_min`` with the
arg-indices, ``scatter_first`` (a group's lowest row: the first point per voxel of the keypoint candidates,
the first appearance of a sparse-conv output). Each
runs on torch's own ops (``scatter_reduce``, always available) or on torch-scatter when it is installed
(an optional extra: ``pip install -e .[scatter]``, README "torch-scatter"). Both give the same numbers:

* mean: both backends sum with torch's ``scatter_add`` and divide by the count (torch-scatter's mean is
  Python over torch's ops, no kernel of its own); that is bit for bit what ``scatter_reduce(..., "mean")``
  gave before on CPU (tests/test_scatter.py compares backends, values and gradients). On CUDA sums use
  atomics, so the last bits of float sums may vary from run to run with either backend.
* max / min: the value and, per target row and column, the arg-index of the source row that holds it;
  ties go to the lowest source row (torch-scatter's CPU kernel keeps the first strictly better value; the
  native path takes the lowest tied row explicitly). Its CUDA kernel lets any tied row win, so on a GPU
  the arg-indices of ties may differ between backends; the values never do. The gradient goes to the
  arg row only (as torch-scatter's; torch's own ``amax`` backward would split it between ties).
  Empty target rows: value 0, arg-index ``len(src)``. NaN inputs are not supported (the backends differ).

Which backend: ``backend=`` per call, else the environment variable ``PRETRAIN3D_SCATTER`` (``native``,
``torch_scatter``: required, an ImportError when it cannot be imported, or ``auto``, the default), else per
op the faster one measured by ``scripts/bench_scatter.py`` (``AUTO``) when torch-scatter imports.

Reductions that stay outside on purpose: ``index_add_`` into rows that are distinct within each call
(``evaluation.tta``, ``retrieval.fused_teacher``: an accumulation, nothing meets) and the sparse
convolution's own gather-matmul-scatter (``models.sparse_torch``); numpy ``np.unique`` / ``bincount`` on the
data side (PPKT's pair selection, 7-Scenes fusion), where torch-scatter cannot help.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch

__all__ = ["BACKENDS", "AUTO", "ENV_VAR", "torch_scatter_status", "resolve_backend", "scatter_mean",
           "scatter_max", "scatter_min", "scatter_first"]

BACKENDS = ("native", "torch_scatter")
ENV_VAR = "PRETRAIN3D_SCATTER"
# Per op, the backend used when torch-scatter is importable and nothing else is asked for: the faster
# one in scripts/bench_scatter.py on the project's shapes, on CPU (README "torch-scatter"): mean is the
# same torch ops either way; first is 3-20x faster native; max / min split 1:1 between two runs
# (10^6 points: 7.6 vs 10.1 s, then 6.9 vs 8.6 s) and native breaks ties the same way on CUDA too.
# Not yet measured on a GPU.
AUTO = {"mean": "native", "max": "native", "min": "native", "first": "native"}


@lru_cache(maxsize=1)
def _load_torch_scatter() -> tuple[Any, str]:
    """``(module or None, why not)``; a wheel built for another torch fails at import with an
    OSError / undefined symbol rather than an ImportError, so anything raised counts as absent."""
    try:
        import torch_scatter
    except Exception as e:  # noqa: BLE001 - see the docstring
        return None, f"torch-scatter cannot be imported ({type(e).__name__}: {e})"
    return torch_scatter, ""


def torch_scatter_status() -> tuple[bool, str]:
    """``(importable, reason when not)``: for skip messages and the benchmark."""
    mod, why = _load_torch_scatter()
    return mod is not None, why


def resolve_backend(op: str, backend: str | None = None) -> str:
    """The backend ``op`` (a key of ``AUTO``) runs on: ``backend``, else $PRETRAIN3D_SCATTER, else ``AUTO``."""
    if op not in AUTO:
        raise ValueError(f"unknown scatter op {op!r}; one of {sorted(AUTO)}")
    want = backend or os.environ.get(ENV_VAR, "").strip() or "auto"
    if want == "auto":
        return AUTO[op] if torch_scatter_status()[0] else "native"
    if want not in BACKENDS:
        raise ValueError(f"scatter backend {want!r} (from {'backend=' if backend else ENV_VAR}): "
                         f"one of {', '.join(BACKENDS)} or auto")
    if want == "torch_scatter" and not torch_scatter_status()[0]:
        raise ImportError(f"scatter backend torch_scatter asked for, but {torch_scatter_status()[1]}; "
                          "install it with `pip install -e .[scatter]` (README: torch-scatter)")
    return want


def _expand(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``index`` (N,) broadcast to ``src``'s shape (N, ...), as ``scatter_reduce`` wants it."""
    if index.dim() != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(f"index {tuple(index.shape)} must be (N,) for src {tuple(src.shape)}")
    return index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int, *, backend: str | None = None) -> torch.Tensor:
    """(dim_size, ...) mean of the rows of ``src`` (N, ...) per target row ``index`` (N,); empty rows 0."""
    index = index.long()
    if resolve_backend("mean", backend) == "torch_scatter":
        return _load_torch_scatter()[0].scatter_mean(src, index, dim=0, dim_size=int(dim_size))
    # a sum and a division by the count, as scatter_reduce(..., "mean") computes it (the same bits on CPU),
    # but with the backward of a sum: scatter_reduce's mean backward took 5x longer at 10^6 points
    total = src.new_zeros((int(dim_size), *src.shape[1:])).scatter_add(0, _expand(index, src), src)
    count = torch.bincount(index, minlength=int(dim_size)).clamp_(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int, *,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, arg)``, both (dim_size, ...): the maximum of ``src``'s rows per target row and the
    source row that holds it (ties: the lowest row; empty target rows: 0 and ``len(src)``)."""
    return _scatter_arg(src, index, dim_size, True, backend)


def scatter_min(src: torch.Tensor, index: torch.Tensor, dim_size: int, *,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``scatter_max`` with the minimum."""
    return _scatter_arg(src, index, dim_size, False, backend)


def scatter_first(index: torch.Tensor, dim_size: int, *, backend: str | None = None) -> torch.Tensor:
    """(dim_size,) the lowest source row ``i`` with ``index[i] == j`` per target row ``j``; ``len(index)``
    where there is none. The arg-index of ``scatter_min(arange(N), index)``, without its values."""
    index = index.long()
    n = index.shape[0]
    rows = torch.arange(n, device=index.device)
    if resolve_backend("first", backend) == "torch_scatter":
        return _load_torch_scatter()[0].scatter_min(rows, index, dim=0, dim_size=int(dim_size))[1]
    return torch.full((int(dim_size),), n, dtype=torch.long, device=index.device).scatter_reduce_(
        0, index, rows, "amin")


def _scatter_arg(src: torch.Tensor, index: torch.Tensor, dim_size: int, largest: bool,
                 backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    index = index.long()
    dim_size = int(dim_size)
    if resolve_backend("max" if largest else "min", backend) == "torch_scatter":
        ts = _load_torch_scatter()[0]
        return (ts.scatter_max if largest else ts.scatter_min)(src, index, dim=0, dim_size=dim_size)
    n = src.shape[0]
    idx = _expand(index, src)
    shape = (dim_size, *src.shape[1:])
    best = src.detach().new_zeros(shape).scatter_reduce(0, idx, src.detach(), "amax" if largest else "amin",
                                                        include_self=False)
    # the lowest source row that holds its target's best value; n where a target row is empty
    rows = torch.arange(n, device=src.device).view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    cand = torch.where(src.detach() == best.gather(0, idx), rows, n)
    arg = torch.full(shape, n, dtype=torch.long, device=src.device).scatter_reduce_(0, idx, cand, "amin")
    if not src.requires_grad:
        return best, arg
    # gather through arg: the gradient reaches the arg row alone, as torch-scatter's does
    padded = torch.cat([src, src.new_zeros((1, *src.shape[1:]))])
    return padded.gather(0, arg), arg
