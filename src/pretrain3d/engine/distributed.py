"""Data-parallel training under torchrun: one process per device, the same global batch.

``torchrun --standalone --local-addr=127.0.0.1 --nproc_per_node=W -m pretrain3d.cli finetune|pretrain ...``
(the rules launch that when ``train.distributed.nproc_per_node`` > 1; ``--local-addr``: the processes
meet on loopback, not at the host name, which a machine's /etc/hosts may not list: in a clean Debian
chroot the run hung there) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` joins the process group (gloo on the CPU, nccl on CUDA unless
``train.distributed.backend`` says otherwise) and binds each process to its local GPU.

What keeps W processes equal to one process on the same global batch (tests/test_distributed.py):

* **Data**: the global batch is ``batch_size`` samples, in the order :class:`data.dataset.EpochSampler`
  draws (a function of seed, epoch and position, so resuming stays exact); process ``r`` takes
  samples ``r, r + W, ...`` of every global batch (:class:`ShardedBatches`).
* **Gradients**: after backward one all-reduce of every gradient, averaged over the processes
  (:func:`average_gradients`): the arithmetic of DistributedDataParallel without its module hooks, so a
  loss that calls submodules (renderers, heads) directly is covered too.
* **BatchNorm** (``train.distributed.sync_bn``): every ``BatchNorm1d`` becomes a
  :class:`GlobalBatchNorm1d`, whose statistics are sums over all processes through a differentiable
  all-reduce: the normalisation and its gradient are the global batch's. torch's SyncBatchNorm only
  runs on GPUs; this one runs on any backend.
* **Means over labelled items** (the segmentation loss): divided by the global count
  (:func:`global_count`), so that averaging the gradients gives the global mean's gradient.
  Pre-training losses are per-process means, averaged: the global mean only when every process has the
  same number of items (PPKT pairs, rays: close, not equal), as in Pointcept and PonderV2's own code.

Process 0 alone writes checkpoints, outputs, profiles and MLflow; a checkpoint keeps every process's
torch RNG state. When one process dies (a kill -9), torchrun stops the others and the job fails; a
rerun resumes every process from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from pretrain3d.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["world_size", "rank", "is_main", "setup", "teardown", "broadcast_state", "average_gradients",
           "global_count", "reduce_mean", "ShardedBatches", "GlobalBatchNorm1d", "convert_batchnorm",
           "gather_rng_states", "barrier", "per_process_batch", "reseed_process"]


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(backend: str, device: torch.device) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; return this process's device."""
    if _env_world() <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {local} of this node has no GPU: torch sees {torch.cuda.device_count()} "
                              f"(train.distributed.nproc_per_node is larger than the GPUs of the node)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    name = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if name == "nccl" and device.type != "cuda":
        raise ConfigError("train.distributed.backend nccl needs CUDA devices; use gloo (or auto) on the CPU")
    if name == "gloo" and os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE"):
        # one node (the rules' torchrun --standalone): loopback. Gloo otherwise looks up the host name,
        # and hangs where /etc/hosts does not list it (seen in a clean Debian 12 chroot)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(name)
    log.info("process %d of %d (%s backend) on %s", dist.get_rank(), dist.get_world_size(), name, device)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def per_process_batch(batch_size: int, source: str = "train.batch_size") -> int:
    """The samples each process takes from a global batch of ``batch_size``."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(f"{source} = {batch_size} is the global batch; it must be a multiple of the "
                          f"{w} processes (train.distributed.nproc_per_node)")
    return batch_size // w


def reseed_process(seed: int) -> None:
    """Process ``r`` > 0 draws its own torch random numbers (ray samples, pixel pairs); process 0 keeps
    the single-process stream, so one process runs exactly as without torchrun."""
    if rank() > 0:
        torch.manual_seed(seed * 7919 + 104729 * rank())


def broadcast_state(module: nn.Module) -> None:
    """Process 0's parameters and buffers everywhere (the seeded initialisations already agree; this
    makes it a fact rather than an assumption)."""
    if world_size() <= 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients over the processes in one all-reduce. A parameter that received a gradient
    in some process gets zeros where it had none; one that none touched keeps ``grad is None``."""
    if world_size() <= 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist()) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in used:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def global_count(local: torch.Tensor) -> torch.Tensor:
    """The sum of ``local`` (a count) over the processes, divided by their number: a loss that is
    ``sum / global_count(n)`` in every process averages to ``global sum / global n``."""
    if world_size() <= 1:
        return local
    total = local.detach().clone().to(torch.float64)
    dist.all_reduce(total)
    return (total / world_size()).to(local.dtype)


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of logged figures over the processes; a key only some processes logged is averaged over those."""
    if world_size() <= 1:
        return values
    every: list = [None] * world_size()
    dist.all_gather_object(every, {k: float(v) for k, v in values.items()})
    keys = sorted({k for d in every for k in d})
    return {k: sum(d[k] for d in every if k in d) / sum(1 for d in every if k in d) for k in keys}


def gather_rng_states() -> list[torch.Tensor]:
    """Every process's torch CPU RNG state, in rank order (collective)."""
    state = torch.get_rng_state()
    if world_size() <= 1:
        return [state]
    out: list = [None] * world_size()
    dist.all_gather_object(out, state)
    return out


class ShardedBatches:
    """Process ``rank``'s share of each global batch of ``batches``: samples ``rank, rank + W, ...``.

    A last global batch smaller than a multiple of W is padded with its own first samples (what
    torch's DistributedSampler does with the epoch), so that every process runs every step."""

    def __init__(self, batches: Iterable[Sequence], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches:
            batch = list(batch)
            short = -len(batch) % self.world
            if short:
                batch = batch + [batch[i % len(batch)] for i in range(short)]
            yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class _SumAcrossProcesses(torch.autograd.Function):
    """all-reduce(sum) with the gradient of a sum: every process's inputs reach every output."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the union of every process's rows (training); eval uses the running statistics,
    which are then equal in every process. Mean and variance from the all-reduced sum and sum of
    squares, computed around the local mean for stability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() <= 1:
            return super().forward(x)
        n_local = torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype)
        stats = _SumAcrossProcesses.apply(torch.cat([x.sum(0), (x * x).sum(0), n_local]))
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every plain ``BatchNorm1d`` (not subclasses such as PDNorm's own) by a
    :class:`GlobalBatchNorm1d` with the same parameters and buffers."""
    if type(module) is nn.BatchNorm1d:
        new = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats).to(next(iter(module.state_dict().values())).device)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
