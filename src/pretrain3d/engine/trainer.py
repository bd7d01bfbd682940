"""A small, resumable training loop.

What makes resume exact: the data order and every sample's augmentation are functions of
(seed, epoch, position) (see data.dataset.EpochSampler), and the checkpoint holds the model,
optimiser, scheduler, AMP scaler, torch RNG state and the position in the epoch. A run killed at
any point and restarted continues from its last checkpoint and ends with the same weights as an
uninterrupted run (tested with SIGKILL in tests/test_resume.py). The stage deletes the checkpoint
once its outputs are complete (Trainer.discard_checkpoint), so rerunning a finished run trains again.

Under torchrun (engine/distributed.py) the loop averages gradients and logged figures over the
processes; process 0 alone saves checkpoints (with every process's RNG state), validates and reports.
``PRETRAIN3D_TEST_KILL=RANK:STEP`` makes that process SIGKILL itself after that global step (the
distributed resume test).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from pretrain3d import profiling
from pretrain3d.engine import distributed
from pretrain3d.atomic import atomic_path
from pretrain3d.errors import Pretrain3DError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class CheckpointError(Pretrain3DError):
    """A checkpoint is missing, unreadable or does not match the model."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    with profiling.phase("checkpoint"), atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: a checkpoint can never run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with profiling.phase("checkpoint"):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None


def load_state_strict(module: torch.nn.Module, state: dict, source: str) -> None:
    """Strict key matching: a missing or unexpected key is an error, never a silent fresh start."""
    missing, unexpected = [], []
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: state dict does not match the model: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{source}: shape mismatch for {k}: checkpoint {tuple(state[k].shape)} "
                              f"vs model {tuple(own[k].shape)} ({len(bad)} key(s) differ)")
    module.load_state_dict(state, strict=True)


@dataclass
class TrainState:
    epoch: int = 0            # epoch in progress (0-based)
    step_in_epoch: int = 0    # batches of this epoch already done
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running sums of this epoch's logs


@dataclass
class Trainer:
    """Generic loop: ``loss_fn(model, batch) -> (loss, logs)``.

    make_loader(epoch, start_batch) must return an iterable over the epoch's batches starting
    after ``start_batch`` batches; ``validate(model) -> dict`` is called every ``val_every`` epochs
    and at the last one. ``on_epoch_end(epoch, metrics)`` receives the epoch's logged figures.
    """

    model: torch.nn.Module
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    make_loader: Callable[[int, int], Iterable[dict]]
    steps_per_epoch: int
    epochs: int
    checkpoint_path: Path
    fingerprint: str
    checkpoint_every: int = 25
    grad_clip: float | None = None
    amp: bool = False
    device: torch.device = torch.device("cpu")
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    val_every: int = 1
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
    progress: bool = True
    # Test hook: stop abruptly (as a crash would) after this many global steps.
    crash_after_steps: int | None = None

    def __post_init__(self) -> None:
        self.checkpoint_path = Path(self.checkpoint_path)
        self.use_amp = self.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = TrainState()
        self.steps_this_process = 0  # optimiser steps run here (not resumed): what a rerun actually trained

    # ------------------------------------------------------------------ checkpoints
    def _state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "torch_rng_ranks": distributed.gather_rng_states(),
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "global_step": self.state.global_step,
            "history": self.state.history,
            "epoch_sums": self.state.epoch_sums,
        }

    def save(self) -> None:
        state = self._state_dict()  # collective under torchrun: every process takes part
        if distributed.is_main():
            save_checkpoint(self.checkpoint_path, state)
        distributed.barrier()  # no process runs ahead of a checkpoint that is not written yet

    def discard_checkpoint(self) -> None:
        """Call once the run's outputs are written: the resume state has served its purpose. Left in
        place, a forced rerun (a code fix, `snakemake -R`, `dvc repro`) would resume at the last step,
        train nothing and save the old weights again as the new result."""
        self.checkpoint_path.unlink(missing_ok=True)
        self.checkpoint_path.with_suffix(".stale.pt").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.checkpoint_path.parent.rmdir()  # only when empty

    def try_resume(self) -> bool:
        """Resume from the checkpoint if there is one for this exact run (same fingerprint)."""
        if not self.checkpoint_path.exists():
            return False
        ck = load_checkpoint(self.checkpoint_path)
        if ck.get("fingerprint") != self.fingerprint:
            stale = self.checkpoint_path.with_suffix(".stale.pt")
            self.checkpoint_path.replace(stale)
            log.warning("%s was written by a different run configuration (fingerprint %s, expected %s); "
                        "moved it to %s and starting fresh", self.checkpoint_path, ck.get("fingerprint"),
                        self.fingerprint, stale)
            return False
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path}: checkpoint format {ck.get('format')} is not "
                                  f"{CHECKPOINT_FORMAT}; delete it to start again")
        load_state_strict(self.model, ck["model"], str(self.checkpoint_path))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        ranks = ck.get("torch_rng_ranks") or [ck["torch_rng"]]
        if len(ranks) != distributed.world_size():
            raise CheckpointError(f"{self.checkpoint_path}: written by {len(ranks)} process(es), resumed with "
                                  f"{distributed.world_size()}; resume with the same train.distributed.nproc_per_node "
                                  f"or delete the checkpoint to start again")
        torch.set_rng_state(ranks[distributed.rank()])
        self.state = TrainState(ck["epoch"], ck["step_in_epoch"], ck["global_step"], list(ck["history"]),
                                dict(ck["epoch_sums"]))
        log.info("resumed from %s at epoch %d, step %d", self.checkpoint_path, self.state.epoch,
                 self.state.step_in_epoch)
        return True

    # ------------------------------------------------------------------ loop
    def _move(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    def _sync(self) -> float:
        """A timestamp after the device finished its queued work (the step split needs it on CUDA)."""
        if self.device.type == "cuda" and profiling.active():
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _train_step(self, batch: dict, data_seconds: float = 0.0) -> dict[str, float]:
        t0 = self._sync()
        self.model.train()
        batch = self._move(batch)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()
        with ctx:
            loss, logs = self.loss_fn(self.model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.state.global_step}; "
                                     f"lower train.lr or check the input data")
        t1 = self._sync()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.model.parameters())
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        t2 = self._sync()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = float(loss.detach())
        logs["lr"] = float(self.optimizer.param_groups[0]["lr"])
        profiling.add_step(data_seconds, t1 - t0, t2 - t1, self._sync() - t2)
        return logs

    def _batches(self, epoch: int) -> Iterator[tuple[dict, float]]:
        """The epoch's remaining batches, each with the seconds spent producing it (counted as data)."""
        it = iter(self.make_loader(epoch, self.state.step_in_epoch))
        while True:
            t = time.perf_counter()
            with profiling.phase("data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch, time.perf_counter() - t

    def fit(self) -> list[dict[str, float]]:
        self.try_resume()
        total = self.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.state.global_step, desc="train", unit="step",
                   disable=not self.progress or not distributed.is_main(), dynamic_ncols=True)
        kill_at = _test_kill_step()
        try:
            while self.state.epoch < self.epochs:
                epoch = self.state.epoch
                t0 = time.perf_counter()
                sums = self.state.epoch_sums
                for batch, data_seconds in self._batches(epoch):
                    logs = self._train_step(batch, data_seconds)
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                    self.state.step_in_epoch += 1
                    self.state.global_step += 1
                    self.steps_this_process += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{logs['loss']:.3f}")
                    if self.crash_after_steps is not None and self.state.global_step >= self.crash_after_steps:
                        raise SystemExit(f"simulated crash after {self.state.global_step} steps")
                    if kill_at is not None and self.state.global_step >= kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if self.state.global_step % self.checkpoint_every == 0:
                        self.save()
                # The sums live in the checkpoint, so a resumed epoch averages over all its batches.
                n = max(self.state.step_in_epoch, 1)
                metrics = {f"train/{k}": v / n for k, v in distributed.reduce_mean(sums).items()}
                metrics["train/epoch_seconds"] = time.perf_counter() - t0
                last = epoch == self.epochs - 1
                if self.validate is not None and distributed.is_main() and ((epoch + 1) % self.val_every == 0 or last):
                    metrics.update({f"val/{k}": v for k, v in self.validate(self.model).items()})
                metrics["epoch"] = epoch
                log.info("epoch %d/%d: %s", epoch + 1, self.epochs,
                         ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
                self.state.history.append(metrics)
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.state.epoch_sums = {}
                self.save()
                if self.on_epoch_end is not None and distributed.is_main():
                    self.on_epoch_end(epoch, metrics)
        finally:
            bar.close()
        return self.state.history


def _test_kill_step() -> int | None:
    """The global step after which this process SIGKILLs itself (``PRETRAIN3D_TEST_KILL=RANK:STEP``)."""
    spec = os.environ.get("PRETRAIN3D_TEST_KILL")
    if not spec:
        return None
    r, step = (int(v) for v in spec.split(":"))
    return step if r == distributed.rank() else None
