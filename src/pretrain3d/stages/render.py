"""PonderV2 visual checks: render a view beside the real frame (PNG + JSON), on the embedded data and on
real RGB-D (the 7-Scenes fixture).

``render_scene_view`` is used by pre-training (a held-out val view, logged to MLflow) and by the
report (re-rendered from the ``renderer`` weights saved in ``backbone.pt``). ``real_data_check``
pre-trains PonderV2 briefly on one real scene with one frame held out, and renders that frame.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.errors import DataError
from pretrain3d.stages.real_check import report_lines

log = logging.getLogger(__name__)


def render_scene_view(cfg: Params, model, scene, frame_idx: int, png: Path, json_path: Path, device,
                      title: str) -> dict:
    from pretrain3d.evaluation.plots import plot_render_comparison
    from pretrain3d.methods.ponderv2 import render_view

    pv = cfg.pretrain.ponderv2
    t0 = time.perf_counter()
    res = render_view(model, scene, frame_idx, cfg.train.grid_size, scale=pv.render_scale, chunk=pv.render_chunk,
                      device=device)
    plot_render_comparison(res, png, title=f"{title}, frame {res['frame_id']}")
    info = {"scene": scene.scene_id, "frame": res["frame_id"], "depth_abs_err_median": res["depth_abs_err_median"],
            "depth_real_median": res["depth_real_median"], "render_scale": pv.render_scale,
            "seconds": time.perf_counter() - t0}
    write_json(json_path, info)
    return info


def load_ponder_model(cfg: Params, backbone_path: str | Path, device):
    """Rebuild a PonderV2 model (backbone + renderer) from a pre-training ``backbone.pt``."""
    from pretrain3d.engine.trainer import load_checkpoint, load_state_strict
    from pretrain3d.methods.ponderv2 import PonderV2Model
    from pretrain3d.models.segmentor import build_backbone

    ckpt = load_checkpoint(backbone_path)
    if "renderer" not in ckpt:
        raise DataError(backbone_path, "checkpoint has no 'renderer' weights", "only PonderV2 pre-training saves them")
    text = ckpt["renderer"].get("text_embeddings")
    model = PonderV2Model(build_backbone(cfg.model), cfg.pretrain.ponderv2, text_embeddings=text)
    state = {f"backbone.{k}": v for k, v in ckpt["backbone"].items()}
    state.update(ckpt["renderer"])
    load_state_strict(model, state, str(backbone_path))
    return model.to(device)


def real_data_check(cfg: Params, out_dir: str | Path, steps: int | None = None, seed: int = 0,
                    progress: bool = False, root: str | Path | None = None) -> dict:
    """Pre-train PonderV2 (label-free) for ``steps`` steps on a real RGB-D sequence (default
    ``data.sevenscenes.root``, fused every ``frame_step``-th frame), holding out its middle frame, and
    render that frame. Writes ``render.png`` and ``render.json`` (losses of the first and last steps,
    held-out depth error) in ``out_dir``. A missing sequence is a recorded skip (``status: skipped``
    with the reason, and a PNG that says so), so the pipeline runs where the fixture is absent."""
    from pretrain3d.methods.ponderv2 import PonderDataset, PonderV2Model, ponder_collate
    from pretrain3d.models.segmentor import build_backbone
    from pretrain3d.stages.real_check import real_sequence, short_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or cfg.pretrain.ponderv2.real_check_steps
    seq = real_sequence(cfg, out_dir, root, seed, "PonderV2")
    if isinstance(seq, dict):
        return seq
    scene, held, train_scene = seq
    root = Path(root if root is not None else cfg.data.sevenscenes.root)
    ds = PonderDataset([train_scene], cfg.pretrain, cfg.train.grid_size)
    model = PonderV2Model(build_backbone(cfg.model), cfg.pretrain.ponderv2)
    history, seconds = short_run(cfg, model, lambda step: model.loss(ponder_collate([ds[(0, seed * 100003 + step)]])),
                                 steps, progress, "ponderv2 (real)")
    info = render_scene_view(cfg, model, scene, held, out_dir / "render.png", out_dir / "render_view.json", "cpu",
                             title=f"PonderV2 on real RGB-D ({root.name}, {len(train_scene.frames)} frames, "
                                   f"{steps} steps), held-out")
    (out_dir / "render_view.json").unlink()
    k = max(1, min(10, steps // 5))
    summary = {"status": "ok", "root": str(root), "frames": len(scene.frames), "points": scene.num_points,
               "steps": steps, "seconds": seconds, "held_out_frame": info["frame"],
               "loss_first": float(np.mean([h["loss"] for h in history[:k]])),
               "loss_last": float(np.mean([h["loss"] for h in history[-k:]])),
               "render": info, "history": history}
    write_json(out_dir / "render.json", summary)
    log.info("real-data PonderV2 check: loss %.3f -> %.3f over %d steps (%.1f s); held-out depth error %.3f m",
             summary["loss_first"], summary["loss_last"], steps, seconds, info["depth_abs_err_median"])
    return summary


def heldout_render_check(ctx) -> dict:
    """PonderV2's check after pre-training (methods.registry ``after_training``): render the first view of
    the first val scene (never seen in pre-training) beside the real frame; logged to the run."""
    from pretrain3d.data.scene import load_split_scenes

    cfg = ctx.cfg
    scene = load_split_scenes(cfg.data.processed_root, "val", cfg.data.num_classes)[0]
    info = render_scene_view(cfg, ctx.model, scene, 0, ctx.out_dir / "render.png", ctx.out_dir / "render.json",
                             ctx.device, title=f"{ctx.title}: held-out val scene {scene.scene_id}")
    ctx.run.log_metrics({"render/depth_abs_err_median_m": info["depth_abs_err_median"]})
    ctx.run.log_artifact(ctx.out_dir / "render.png")
    return {"render": info}


def report_renders(cfg: Params, backbones: list[str], real_check: list[str], out_dir: Path) -> tuple[str, list]:
    """PonderV2's report figures (methods.registry ``report_visual``): re-render a held-out val view from
    each backbone (``renders/<method>-seed<s>.png``) and show the real-data check. Returns the report
    section and the PNGs written."""
    from pretrain3d.data.scene import load_split_scenes

    first = {}  # one render per method: its first seed
    for b in backbones:
        first.setdefault(Path(b).parent.parent.name, b)
    backbones = list(first.values())
    if not backbones and not real_check:
        return "", []
    lines = ["## PonderV2: rendered vs real", "",
             "The pre-training renderer (volume + SDF field + NeuS) applied to a view it never trained on: "
             "real colour and z-depth beside the rendering, and the absolute depth error.", ""]
    pngs = []
    scene = load_split_scenes(cfg.data.processed_root, "val", cfg.data.num_classes)[0] if backbones else None
    for b in backbones:
        b = Path(b)
        method, seed = b.parent.parent.name, b.parent.name
        model = load_ponder_model(cfg, b, torch.device("cpu"))
        png = out_dir / "renders" / f"{method}-{seed}.png"
        info = render_scene_view(cfg, model, scene, 0, png, png.with_suffix(".json"), "cpu",
                                 title=f"{method} {seed}: held-out val scene {scene.scene_id}")
        pngs.append(png)
        lines += [f"**{method} ({seed})**, val scene `{info['scene']}` frame {info['frame']}: median |depth error| "
                  f"{info['depth_abs_err_median']:.3f} m (median depth {info['depth_real_median']:.2f} m).", "",
                  f"![{method} render]({os.path.relpath(png, out_dir)})", ""]
    lines += report_lines(real_check, out_dir, "PonderV2", lambda info: (
        f"{info['steps']} label-free steps, loss {info['loss_first']:.3f} → {info['loss_last']:.3f}; held-out "
        f"frame {info['held_out_frame']}: median |depth error| {info['render']['depth_abs_err_median']:.3f} m."))
    return "\n".join(lines) + "\n", pngs
