"""Real-data check stage: a short run of a method on the real RGB-D fixture (data.sevenscenes.root),
with its figure (PNG) and losses (JSON) for the report. Which function runs is the method's
``real_check`` in methods.registry; a missing fixture is the function's recorded skip."""

from __future__ import annotations

from pathlib import Path

from pretrain3d.config import Params
from pretrain3d.methods import registry


def real_check(cfg: Params, method: str, out_dir: str | Path, steps: int | None = None, progress: bool = False,
               root: str | Path | None = None) -> dict:
    spec = registry.spec(method)
    if not spec.real_check:
        with_check = [n for n, s in registry.REGISTRY.items() if s.real_check]
        raise ValueError(f"method {method!r} has no real-data check (methods with one: {', '.join(with_check)})")
    return registry.resolve(spec.real_check)(cfg, out_dir, steps=steps, progress=progress, root=root)


# ----------------------------------------------------------------------- shared by the methods' checks
def report_lines(real_check: list, out_dir: Path, what: str, describe) -> list[str]:
    """The report's paragraph + figure for each real-data check (``render.json`` beside ``render.png``):
    ``describe(info)`` words an ok run; a skip shows its recorded reason."""
    import json
    import os

    lines: list[str] = []
    for j in [p for p in real_check if str(p).endswith(".json")]:
        info = json.loads(Path(j).read_text())
        png = Path(j).with_suffix(".png")
        if info.get("status") == "ok":
            lines += [f"**Real RGB-D** ({info['root']}, {info['frames']} frames fused, {info['points']} points): "
                      f"{describe(info)}", ""]
        else:
            lines += [f"**Real RGB-D ({what})**: skipped — {info.get('reason', 'no reason recorded')}.", ""]
        lines += [f"![{what} real-data check]({os.path.relpath(png, out_dir)})", ""]
    return lines


def real_sequence(cfg: Params, out_dir: Path, root: str | Path | None, seed: int, what: str):
    """The real RGB-D sequence (``root``, default ``data.sevenscenes.root``) fused every ``frame_step``-th
    frame, as ``(scene, held, train_scene)`` with its middle frame ``held`` out of ``train_scene``; seeds
    everything first. A missing sequence is a recorded skip: ``render.png`` saying so, ``render.json``
    ``{"status": "skipped", "reason"}``, and that dict is returned instead."""
    import dataclasses
    import logging

    from pretrain3d.atomic import write_json
    from pretrain3d.data.sevenscenes import fuse_sevenscenes
    from pretrain3d.engine.seed import seed_everything
    from pretrain3d.errors import DataError
    from pretrain3d.evaluation.plots import plot_message

    root = Path(root if root is not None else cfg.data.sevenscenes.root)
    if not root.is_dir():
        reason = f"real RGB-D sequence not found at {root} (data.sevenscenes.root)"
        plot_message(out_dir / "render.png", f"{what} real-data check skipped:\n{reason}")
        write_json(out_dir / "render.json", {"status": "skipped", "reason": reason})
        logging.getLogger(__name__).warning("%s real-data check skipped: %s", what, reason)
        return {"status": "skipped", "reason": reason}
    seed_everything(seed, threads=cfg.train.threads)
    sc = cfg.data.sevenscenes
    scene = fuse_sevenscenes(root, frame_step=sc.frame_step, voxel_size=sc.voxel_size)
    if len(scene.frames) < 2:
        raise DataError(root, "need at least two RGB-D frames (one is held out)", "lower data.sevenscenes.frame_step")
    held = len(scene.frames) // 2
    train_scene = dataclasses.replace(
        scene, frames=scene.frames.subset([f.id for i, f in enumerate(scene.frames) if i != held]))
    return scene, held, train_scene


def short_run(cfg: Params, model, step_loss, steps: int, progress: bool, desc: str) -> tuple[list[dict], float]:
    """``steps`` optimiser steps of ``step_loss(step) -> (loss, logs)`` with pre-training's optimiser and
    gradient clipping; returns the per-step history and the seconds spent."""
    import time

    import torch
    from tqdm import tqdm

    from pretrain3d.engine.optim import build_optimizer

    opt = build_optimizer(model.parameters(), cfg.pretrain)
    history = []
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, disable=not progress):
        loss, logs = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.pretrain.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.pretrain.grad_clip)
        opt.step()
        history.append({"loss": float(loss.detach()), **logs})
    return history, time.perf_counter() - t0
