"""ConDense's checks (methods.registry hooks): what its 2D and 3D features are worth, measured.

* ``after_training`` (each pre-training run, on held-out val scenes; ``checks.json`` and
  ``feature_pca.png`` beside backbone.pt, logged to MLflow):
  - **2D consistency**: pixel pairs that see the same surface point from two views (depth + poses),
    mean cosine of the 2D features, frozen teacher vs ConDense's 2D network; the *margin* over random
    pixel pairs is the measure (a constant feature has cosine 1 everywhere and margin 0).
  - **2D probe**: a per-pixel linear classifier on the 2D features (train-scene frames → val frames),
    teacher vs ConDense 2D: the 2D features must not get worse.
  - **Co-embedding**: a linear classifier fitted on ConDense's 2D pixel features (train scenes) applied
    unchanged to the 3D field's point features (val scenes), and the reverse. Control: the same with
    the 3D features of the untrained model (same seed and architecture) -- unrelated features must not
    transfer, so the control shows what "no co-embedding" scores.
  - **PCA image**: val frame | teacher PCA | rendered 3D feature PCA | ConDense 2D PCA, one shared basis.
* ``real_data_check``: a short ConDense run on the real 7-Scenes frames (one held out); losses and
  the same PCA row of the held-out frame (a recorded skip where the fixture is absent).
* ``report_section``: the report's ConDense section, mean ± std over seeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

PIXELS_PER_FRAME = 256      # labelled pixels per frame for the 2D probe / co-embedding
POINTS_PER_SCENE = 2048     # labelled points per scene for the co-embedding
PAIRS_PER_SCENE = 4         # view pairs per val scene for the consistency
TRAIN_FRAME_STEP = 2        # every 2nd training frame (pixels) and scene (points) fits the classifiers


class _TrunkMemo:
    """Feature functions of the frozen teacher and of ConDense's 2D net that share the frozen trunk's
    tokens per image (the trunk is the costly part and identical for both)."""

    def __init__(self, net):
        self.net, self.memo = net, {}

    @staticmethod
    def _key(image: np.ndarray) -> str:
        return hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape)

    def reuse(self, scenes: list) -> int:
        """Take the tokens pre-training already computed (the 2D net's trunk cache) for these scenes' frames."""
        from pretrain3d.methods.condense import frame_key

        n = 0
        for s in scenes:
            for i, f in enumerate(s.frames or []):
                tok = self.net.trunk_cache.get(frame_key(s.scene_id, f.id))
                if tok is not None:
                    self.memo[self._key(np.ascontiguousarray(s.frames.read_color(i)))] = tok
                    n += 1
        return n

    def _tokens(self, images) -> torch.Tensor:
        imgs = [np.ascontiguousarray(np.asarray(im)) for im in images]
        keys = [self._key(im) for im in imgs]
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        if todo:
            tok = self.net.trunk(self.net.preprocess([imgs[i] for i in todo]))
            for j, i in enumerate(todo):
                self.memo[keys[i]] = tok[j]
        return torch.stack([self.memo[k] for k in keys]).to(self.net.teacher._device)

    def fn(self, teacher: bool):
        @torch.no_grad()
        def features(images) -> torch.Tensor:
            tok = self._tokens(images)
            return self.net.reference(tok) if teacher else self.net.head(tok)
        return features


def _labelled_points(scene, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(np.asarray(scene.segment) >= 0)
    return np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False)) if len(idx) else idx


def _point_set(model, scenes, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    from pretrain3d.methods.condense import point_features

    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for s in scenes:
        idx = _labelled_points(s, POINTS_PER_SCENE, rng)
        feats.append(point_features(model, s, device, points=idx))
        labels.append(torch.from_numpy(np.asarray(s.segment)[idx].astype(np.int64)))
    return torch.cat(feats), torch.cat(labels)


def _miou(d: dict) -> float:
    return float(d["miou"])


def _num(v) -> float | None:
    return None if v is None else float(v)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def feature_checks(cfg: Params, model, train_scenes: list, val_scenes: list, seed: int, device,
                   control_model=None) -> dict:
    """The numbers of the module docstring (plain floats, fractions not percentages)."""
    from pretrain3d.evaluation import feature_checks as fc

    t0 = time.perf_counter()
    net, nc = model.image_net, cfg.data.num_classes
    memo = _TrunkMemo(net)
    memo.reuse(train_scenes)
    geo = net.geometry
    out: dict = {"consistency": {}, "probe2d": {}}
    # both on the same pixel pairs (found once); None where the val scenes have no overlapping views
    # (a recorded gap, shown as — in the report)
    both = fc.cross_view_consistency({"teacher": memo.fn(True), "condense": memo.fn(False)}, geo, val_scenes,
                                     pairs_per_scene=PAIRS_PER_SCENE, rng=seed)
    for name, c in both.items():
        out["consistency"][name] = {k: _num(c[k]) for k in ("matched_cos", "random_cos", "margin")}
        out["consistency"]["pixel_pairs"] = int(c["pixel_pairs"])
    # One pass over the frames samples the teacher's, the 2D net's and its embedded (centred) features
    # at the same labelled pixels: channels stacked, split after (sampling is per channel).
    D = net.dim
    teacher_fn, net_fn = memo.fn(True), memo.fn(False)

    def stacked(images):
        f = net_fn(images)
        return torch.cat([teacher_fn(images), f, model.embed_2d(f, 1)], dim=1)

    rng = np.random.default_rng(seed)
    xtr, ytr = fc.collect_pixel_features(stacked, geo, train_scenes, PIXELS_PER_FRAME, rng,
                                         frame_step=TRAIN_FRAME_STEP)
    xva, yva = fc.collect_pixel_features(stacked, geo, val_scenes, PIXELS_PER_FRAME, rng)
    for name, cols in (("teacher", slice(0, D)), ("condense", slice(D, 2 * D))):
        p = fc.probe_on_features(xtr[:, cols], ytr, xva[:, cols], yva, nc, epochs=cfg.protocols.probe_epochs,
                                 lr=cfg.protocols.probe_lr, seed=seed)
        out["probe2d"][name] = {"miou": _miou(p), "macc": float(p["macc"]), "allacc": float(p["allacc"]),
                                "train_pixels": int(p["train_pixels"]), "val_pixels": int(p["val_pixels"])}
    f2_train, y2_train, f2_val, y2_val = xtr[:, 2 * D:], ytr, xva[:, 2 * D:], yva
    f3_train, y3_train = _point_set(model, train_scenes[::TRAIN_FRAME_STEP], seed, device)
    f3_val, y3_val = _point_set(model, val_scenes, seed + 1, device)
    two_three = fc.co_embedding_transfer(f2_train, y2_train, f3_val, y3_val, nc, seed=seed)
    three_two = fc.co_embedding_transfer(f3_train, y3_train, f2_val, y2_val, nc, seed=seed)
    co = {"2d_to_3d": {"transfer_miou": float(two_three["transfer_miou"]),
                       "in_domain_miou": float(two_three["in_domain_miou"])},
          "3d_to_2d": {"transfer_miou": float(three_two["transfer_miou"]),
                       "in_domain_miou": float(three_two["in_domain_miou"])}}
    if control_model is not None:
        c3_val, cy3_val = _point_set(control_model, val_scenes, seed + 1, device)
        ctrl = fc.co_embedding_transfer(f2_train, y2_train, c3_val, cy3_val, nc, seed=seed)
        co["control_2d_to_untrained_3d"] = {"transfer_miou": float(ctrl["transfer_miou"])}
    out["co_embedding"] = co
    out["seconds"] = time.perf_counter() - t0
    return out


def pca_row(model, scene, frame_idx: int, png: Path, title: str) -> Path:
    """real frame | teacher PCA | rendered 3D feature PCA | ConDense 2D PCA (one PCA basis for all three)."""
    from pretrain3d.evaluation.feature_checks import pca_rgb, plot_feature_pca_row
    from pretrain3d.methods.condense import image_feature_map, rendered_feature_map

    rendered = rendered_feature_map(model, scene, frame_idx)
    teacher = image_feature_map(model, scene, frame_idx, teacher=True)
    condense = image_feature_map(model, scene, frame_idx, teacher=False)
    full = np.ones(tuple(teacher.shape[-2:]), dtype=bool)
    masks = [full, np.asarray(rendered["acc"]) > 0.5, full]  # rendered: only rays that hit a surface
    images = pca_rgb([teacher, rendered["features"], condense], masks=masks)
    real = scene.frames.read_color(frame_idx)
    return plot_feature_pca_row([("real frame", real), ("teacher (frozen) PCA", images[0]),
                                 ("rendered 3D feature PCA", images[1]), ("ConDense 2D PCA", images[2])],
                                png, suptitle=title)


def _log_checks(run, checks: dict) -> None:
    m: dict = {}
    for name in ("teacher", "condense"):
        m[f"check/consistency_margin/{name}"] = checks["consistency"][name]["margin"]
        m[f"check/consistency_matched_cos/{name}"] = checks["consistency"][name]["matched_cos"]
        m[f"check/probe2d_miou/{name}"] = checks["probe2d"][name]["miou"]
    for k, v in checks["co_embedding"].items():
        m[f"check/co_embedding/{k}"] = v["transfer_miou"]
    run.log_metrics({k: v for k, v in m.items() if v is not None})


def after_training(ctx) -> dict:
    """methods.registry ``after_training`` of ConDense: feature checks + PCA image on held-out val scenes."""
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.methods import condense

    cfg, out, seed = ctx.cfg, ctx.out_dir, ctx.seed
    train = load_split_scenes(cfg.data.processed_root, "train", cfg.data.num_classes)
    val = load_split_scenes(cfg.data.processed_root, "val", cfg.data.num_classes)
    with torch.random.fork_rng(devices=[]):  # control: the untrained model of this seed, RNG left untouched
        torch.manual_seed(seed)
        control = condense._model(cfg, ctx.model.image_net.teacher).to(ctx.device)
    checks = feature_checks(cfg, ctx.model, train, val, seed, ctx.device, control_model=control)
    png = pca_row(ctx.model, val[0], 0, out / "feature_pca.png",
                  f"{ctx.title}: held-out val scene {val[0].scene_id}, frame {val[0].frames[0].id}")
    checks["pca_png"] = png.name
    write_json(out / "checks.json", checks)
    _log_checks(ctx.run, checks)
    ctx.run.log_artifact(png)
    ctx.run.log_artifact(out / "checks.json")
    c = checks["consistency"]
    co = checks["co_embedding"]
    log.info("ConDense checks: consistency margin teacher %s -> ConDense 2D %s; 2D probe mIoU %.3f -> %.3f; "
             "co-embedding 2D->3D %.3f (untrained 3D: %s), 3D->2D %.3f (%.0f s)", _fmt(c["teacher"]["margin"]),
             _fmt(c["condense"]["margin"]), checks["probe2d"]["teacher"]["miou"], checks["probe2d"]["condense"]["miou"],
             co["2d_to_3d"]["transfer_miou"], _fmt(co.get("control_2d_to_untrained_3d", {}).get("transfer_miou")),
             co["3d_to_2d"]["transfer_miou"], checks["seconds"])
    return {"checks": checks}


# ---------------------------------------------------------------------------------- real data
def real_data_check(cfg: Params, out_dir: str | Path, steps: int | None = None, seed: int = 0,
                    progress: bool = False, root: str | Path | None = None) -> dict:
    """ConDense for ``steps`` steps on a real RGB-D sequence (default ``data.sevenscenes.root``, every
    ``frame_step``-th frame fused), its middle frame held out; ``render.png`` (the PCA row of the
    held-out frame) and ``render.json`` (first/last losses). A missing sequence is a recorded skip."""
    from pretrain3d.methods import condense
    from pretrain3d.stages.real_check import real_sequence, short_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or cfg.pretrain.condense.real_check_steps
    seq = real_sequence(cfg, out_dir, root, seed, "ConDense")
    if isinstance(seq, dict):
        return seq
    scene, held, train_scene = seq
    root = Path(root if root is not None else cfg.data.sevenscenes.root)
    setup = condense.build(cfg, "condense", [train_scene])
    model, ds = setup.model, setup.dataset
    history, seconds = short_run(
        cfg, model, lambda step: setup.loss_fn(model, setup.collate([ds[(0, seed * 100003 + step)]])), steps,
        progress, "condense (real)")
    title = (f"ConDense on real RGB-D ({root.name}, {len(train_scene.frames)} frames, {steps} steps), "
             f"held-out frame {scene.frames[held].id}")
    pca_row(model, scene, held, out_dir / "render.png", title)
    k = max(1, min(10, steps // 5))

    def mean(key, part):
        return float(np.mean([h[key] for h in part]))

    summary = {"status": "ok", "root": str(root), "frames": len(scene.frames), "points": scene.num_points,
               "steps": steps, "seconds": seconds, "held_out_frame": scene.frames[held].id,
               "skipped_frames": setup.summary.get("skipped_frames", []),
               **{f"{key}_{which}": mean(key, part) for key in ("loss", "loss_consistency", "loss_geometry")
                  for which, part in (("first", history[:k]), ("last", history[-k:]))},
               "history": history}
    write_json(out_dir / "render.json", summary)
    log.info("real-data ConDense check: loss %.3f -> %.3f, consistency %.3f -> %.3f over %d steps (%.1f s)",
             summary["loss_first"], summary["loss_last"], summary["loss_consistency_first"],
             summary["loss_consistency_last"], steps, seconds)
    return summary


# ---------------------------------------------------------------------------------- report
def _mean_std(values: list) -> str:
    v = [100 * x for x in values if x is not None]
    if not v:
        return "—"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def report_section(cfg: Params, backbones: list[str], real_check: list[str], out_dir: Path) -> tuple[str, list]:
    """methods.registry ``report_visual`` of ConDense: its checks over seeds, the PCA image, the real-data run."""
    from pretrain3d.stages.real_check import report_lines

    if not backbones and not real_check:
        return "", []
    checks = []
    for b in backbones:
        f = Path(b).parent / "checks.json"
        if not f.exists():
            raise DataError(f, "ConDense checks missing beside the backbone", "re-run its pre-training")
        checks.append((Path(b).parent.name, json.loads(f.read_text())))
    n = len(checks)
    lines = ["## ConDense (reconstruction): 2D/3D feature checks", "",
             f"Held-out val scenes, mean ± std over {n} seed(s), values ×100. Teacher = the frozen 2D teacher; "
             "ConDense 2D = the 2D network trained jointly with the 3D backbone (methods/condense.py states "
             "every design choice: the paper's method section was not available).", ""]
    if checks:
        def col(get):
            return _mean_std([get(c) for _, c in checks])

        lines += ["| check | teacher | ConDense 2D |", "|---|---|---|",
                  "| cross-view cosine, same surface point | "
                  f"{col(lambda c: c['consistency']['teacher']['matched_cos'])} | "
                  f"{col(lambda c: c['consistency']['condense']['matched_cos'])} |",
                  "| cross-view cosine, random pixel pairs | "
                  f"{col(lambda c: c['consistency']['teacher']['random_cos'])} | "
                  f"{col(lambda c: c['consistency']['condense']['random_cos'])} |",
                  "| consistency margin (same − random) | "
                  f"{col(lambda c: c['consistency']['teacher']['margin'])} | "
                  f"{col(lambda c: c['consistency']['condense']['margin'])} |",
                  "| per-pixel 2D linear probe mIoU | "
                  f"{col(lambda c: c['probe2d']['teacher']['miou'])} | "
                  f"{col(lambda c: c['probe2d']['condense']['miou'])} |", "",
                  "Co-embedding: a linear classifier fitted on one modality (train scenes), applied unchanged to "
                  "the other (val scenes); mIoU. The control applies the 2D classifier to the 3D features of the "
                  "untrained model (same seed): what unrelated features score.", "",
                  "| direction | transfer mIoU | in-domain mIoU |", "|---|---|---|",
                  f"| 2D pixels → 3D points | {col(lambda c: c['co_embedding']['2d_to_3d']['transfer_miou'])} | "
                  f"{col(lambda c: c['co_embedding']['2d_to_3d']['in_domain_miou'])} |",
                  f"| 3D points → 2D pixels | {col(lambda c: c['co_embedding']['3d_to_2d']['transfer_miou'])} | "
                  f"{col(lambda c: c['co_embedding']['3d_to_2d']['in_domain_miou'])} |"]
        if all("control_2d_to_untrained_3d" in c["co_embedding"] for _, c in checks):
            lines.append("| control: 2D → untrained 3D | "
                         f"{col(lambda c: c['co_embedding']['control_2d_to_untrained_3d']['transfer_miou'])} | — |")
        lines.append("")
    pngs = []
    (out_dir / "renders").mkdir(parents=True, exist_ok=True)
    if backbones:
        first = Path(backbones[0]).parent
        src = first / checks[0][1].get("pca_png", "feature_pca.png")
        if src.exists():
            dst = out_dir / "renders" / f"condense-{first.name}-pca.png"
            shutil.copyfile(src, dst)
            pngs.append(dst)
            lines += [f"![ConDense feature PCA]({os.path.relpath(dst, out_dir)})", ""]
    lines += report_lines(real_check, out_dir, "ConDense", lambda info: (
        f"{info['steps']} steps, loss {info['loss_first']:.3f} → {info['loss_last']:.3f}, consistency "
        f"{info['loss_consistency_first']:.3f} → {info['loss_consistency_last']:.3f}, geometry "
        f"{info['loss_geometry_first']:.3f} → {info['loss_geometry_last']:.3f}; held-out frame "
        f"{info['held_out_frame']}."))
    return "\n".join(lines) + "\n", pngs
