"""Work-arounds for two spconv 2.3.x problems on the CPU path.

1. **CPU backward needs CUDA.** spconv asks ``torch.cuda.current_stream()`` for a stream handle
   in several ops, including the CPU backward of sparse convolutions; on a CPU-only torch build
   that raises "Torch not compiled with CUDA enabled". The stream is meaningless on CPU, so 0 is
   returned instead. spconv binds the function by name in several modules
   (``from spconv.pytorch.cppcore import get_current_stream``), so every binding is replaced, not
   only the definition in ``cppcore``. Applied only when CUDA is unavailable.

2. **CPU scatter-add data race (silently wrong convolutions).** On tensors that live on the CPU,
   spconv computes every sparse convolution (forward and backward) as gather -> matmul ->
   ``SpconvOps.scatter_add_cpu``. That C++ kernel parallelises over rows with OpenMP, but the two
   row pointers it writes through are declared outside the parallel lambda and captured by
   reference, so threads overwrite each other's pointers: with more than one OpenMP thread
   (``torch.get_num_threads() > 1``, the default) rows are added to the wrong outputs at random.
   Measured here: a 4.5k-voxel SubMConv3d differs from the dense ``conv3d`` reference by up to
   ~0.5 on most calls with 2 threads, and matches to 1e-7 with 1 thread. The kernel is replaced
   by ``torch.Tensor.index_add_`` on zero-copy views of the same buffers. This affects CPU
   tensors only (CUDA tensors never reach it), so it is applied whether or not CUDA exists.

spconv is imported lazily, inside the function, so importing :mod:`pretrain3d.models` stays cheap.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["ensure_spconv_cpu_backward"]

_lock = threading.Lock()


def _cpu_stream() -> int:
    """Stream handle for CPU execution (spconv ignores it on CPU)."""
    return 0


_cpu_stream._pretrain3d_patch = True  # type: ignore[attr-defined]


def _scatter_add_cpu(out, inp, inds) -> None:
    """Race-free ``out[inds[i]] += inp[i]`` for ``i < len(inds)`` on cumm ``tv.Tensor`` arguments.

    Same contract as ``SpconvOps.scatter_add_cpu``: ``inp`` may have more rows than ``inds``
    (spconv passes its whole work buffer); only the first ``len(inds)`` rows are used.
    """
    import torch

    nhot = int(inds.dim(0))
    if nhot == 0:
        return
    # numpy_view() shares memory with the tv tensor, and torch.from_numpy shares it again.
    dst = torch.from_numpy(out.numpy_view())
    src = torch.from_numpy(inp.numpy_view())
    idx = torch.from_numpy(inds.numpy_view()).long()
    dst.index_add_(0, idx, src[:nhot])


_scatter_add_cpu._pretrain3d_patch = True  # type: ignore[attr-defined]


def _patch_get_current_stream() -> None:
    from spconv.pytorch import cppcore

    current = getattr(cppcore, "get_current_stream", None)
    if current is not None and not getattr(current, "_pretrain3d_patch", False):
        cppcore._pretrain3d_original_get_current_stream = current
    original = getattr(cppcore, "_pretrain3d_original_get_current_stream", current)
    cppcore.get_current_stream = _cpu_stream  # modules imported later bind this one
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "spconv" or name.startswith("spconv.")):
            continue
        if original is not None and getattr(module, "get_current_stream", None) is original:
            setattr(module, "get_current_stream", _cpu_stream)


def _patch_scatter_add() -> None:
    from spconv.core_cc.csrc.sparse.all import SpconvOps

    if getattr(SpconvOps.scatter_add_cpu, "_pretrain3d_patch", False):
        return
    SpconvOps._pretrain3d_original_scatter_add_cpu = SpconvOps.scatter_add_cpu
    # spconv.pytorch.ops calls it as SpconvOps.scatter_add_cpu(...), a class attribute lookup,
    # so replacing it on the (pybind11) class covers the forward and the backward.
    SpconvOps.scatter_add_cpu = staticmethod(_scatter_add_cpu)


def ensure_spconv_cpu_backward() -> dict:
    """Make spconv usable and correct on CPU tensors; idempotent and thread-safe.

    * always: replace spconv's racy CPU scatter-add (see the module docstring, problem 2);
    * when ``torch.cuda.is_available()`` is False: make every binding of spconv's
      ``get_current_stream`` return 0 (problem 1), including ``cppcore`` so that spconv modules
      imported later pick it up.

    Returns ``{"scatter_add_cpu": True, "get_current_stream": bool}`` saying what is in place.
    """
    import torch

    with _lock:
        import spconv.pytorch  # noqa: F401  (loads cppcore, ops, conv, hash, ...)

        _patch_scatter_add()
        stream_patched = False
        if not torch.cuda.is_available():
            _patch_get_current_stream()
            stream_patched = True
    return {"scatter_add_cpu": True, "get_current_stream": stream_patched}
