#!/usr/bin/env python
"""The CUDA path, checked in one short run (issue 13, item 4; `scripts/gpu_check.sh` installs the stack
and calls this). On a small embedded data set made here (6 train + 2 val rooms):

1. every trained method's pre-training (PPKT, PonderV2, ConDense, PPT) and a fine-tune, a few steps each,
   on CUDA with AMP and on the CPU in float32 from the same seed and data order: the runs' mean losses are
   compared. Tolerance: a CPU run with the next seed gives the spread that the random draws alone
   (rays, pixel pairs, masks: different generators on the two devices) cause; CUDA must be within
   3x that spread + 5 % of the CPU loss (AMP rounding and spconv's CUDA kernels). The fine-tune draws
   nothing at random in its steps: there the bound is 5 % alone;
2. seconds per step and peak GPU memory per method;
3. SpUNet-v1m1 (full width) forward+backward at 2 cm: batch 2 x 100k voxels, ms per iteration and peak
   memory (scripts/bench_backbone.py);
4. with two GPUs visible: a 2-process torchrun fine-tune (nccl).

    python scripts/gpu_check.py [--out DIR] [--steps-epochs 1]
    python scripts/gpu_check.py --device cpu        # the same driver on the CPU only (CI smoke test)

Prints one table and writes ``<out>/gpu_check.json``. Exit 1 when a comparison fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

METHODS = ("ppkt", "ponderv2", "condense", "ppt")  # scratch trains nothing: its fine-tune is the last row
_FIELD = {"volume_resolution": [12, 12, 6], "volume_channels": 8, "unet_channels": [8], "hidden": 16,
          "rays_per_view": 32, "samples_uniform": 12, "samples_importance": 4}
TINY = {"ppkt": {"num_pairs": 256}, "ponderv2": _FIELD, "condense": _FIELD}  # --quick (the CPU smoke test)


def small_config(out: Path, device: str, amp: bool, quick: bool) -> dict:
    scenes = 2 if quick else 6
    synth = {"num_train": scenes, "num_val": 1 if quick else 2, "frames_per_scene": 2 if quick else 4,
             "image_width": 64 if quick else 160, "image_height": 48 if quick else 120, "rescans": 0}
    return {
        "experiment": {"name": "gpu-check", "seeds": [0], "methods": ["scratch", *METHODS], "pretrain_only": [],
                       "protocols": ["full"]},
        "data": {"raw_root": str(out / "raw"), "processed_root": str(out / "processed"), "workers": 1,
                 "synthetic": {**synth, "points_per_m2": 120.0 if quick else 600.0}},
        "train": {"epochs": 1 if quick else 2, "batch_size": 2, "device": device, "amp": amp, "threads": 1,
                  "checkpoint_every": 1000, "val_every": 1000},
        "pretrain": {"epochs": 1 if quick else 2, "batch_size": 2, "checkpoint_every": 1000, **(TINY if quick else {})},
        "teacher": {"cache_root": str(out / "features"), **({"input_height": 56, "input_width": 70} if quick else {})},
        "multi_dataset": {"datasets": {
            name: {"dataset": "synthetic", "num_classes": k, "raw_root": str(out / f"raw-{dom}"),
                   "processed_root": str(out / f"processed-{dom}"), "workers": 1,
                   "synthetic": {**synth, "domain": dom, "seed": seed, "points_per_m2": 120.0 if quick else 300.0}}
            for name, dom, k, seed in (("S3DIS", "s3dis", 13, 7), ("Structured3D", "structured3d", 25, 8))}},
        "ppt_study": {"enabled": False},
        "queries": {"enabled": False},
        "tracking": {"enabled": False},
    }


def prepare(cfg) -> None:
    from pretrain3d.stages.data import dataset_data, generate, preprocess
    from pretrain3d.stages.features import cache_features

    generate(cfg)
    preprocess(cfg)
    for name in cfg.multi_dataset.datasets:
        dataset_data(cfg, name)
    cache_features(cfg, progress=False)


def mean_loss(history: list[dict]) -> float:
    vals = [h["train/loss"] for h in history if "train/loss" in h]
    return float(sum(vals) / len(vals))


def run_method(cfg, method: str, seed: int, out: Path) -> dict:
    import torch

    from pretrain3d.stages.finetune import finetune
    from pretrain3d.stages.pretrain import pretrain

    cuda = cfg.train.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method == "finetune":
        s = finetune(cfg, "scratch", seed, out, protocol="full", progress=False)
    else:
        s = pretrain(cfg, method, seed, out, progress=False)
    seconds = time.perf_counter() - t0
    steps = max(int(s.get("steps", 0)), 1)
    return {"loss": mean_loss(s["history"]) if s.get("history") else float("nan"), "steps": steps,
            "s_per_step": seconds / steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def backbone_bench(device: str) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_backbone import bench

    points = 100_000 if device == "cuda" else 5_000
    return bench(points=points, batch=2, width="full", iters=3, warmup=1, device=device)


def ddp_check(cfg_file: Path, out: Path) -> dict:
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--local-addr=127.0.0.1",
           "--nproc_per_node=2", "--max-restarts=0",
           "-m", "pretrain3d.cli", "finetune", "--config", str(cfg_file), "--method", "scratch", "--seed", "0",
           "--protocol", "full", "--out-dir", str(out), "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return {"returncode": r.returncode, "seconds": time.perf_counter() - t0, "stderr_tail": r.stderr[-1500:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: run the driver on the CPU only (both sides), a smoke test of this script")
    ap.add_argument("--quick", action="store_true", help="tiny data and one epoch (the CI smoke test)")
    args = ap.parse_args(argv)

    import torch
    import yaml

    from pretrain3d.config import validate_config

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (torch %s, CUDA %s)" % (torch.__version__, torch.version.cuda),
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dev = validate_config(small_config(out, args.device, True, args.quick))
    cpu = validate_config(small_config(out, "cpu", False, args.quick))
    print(f"[gpu_check] data ({'quick' if args.quick else 'small'}) ...", flush=True)
    prepare(cpu)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    try:
        import spconv

        env["spconv"] = spconv.__version__
    except Exception as err:  # pragma: no cover - reported, not hidden
        env["spconv"] = f"import failed: {err}"

    rows, ok = [], True
    for method in (*METHODS, "finetune"):
        print(f"[gpu_check] {method} ...", flush=True)
        a = run_method(dev, method, 0, out / args.device / method)
        b = run_method(cpu, method, 0, out / "cpu" / method)
        c = run_method(cpu, method, 1, out / "cpu-seed1" / method) if method != "finetune" else b
        spread = abs(c["loss"] - b["loss"])
        bound = 3 * spread + 0.05 * abs(b["loss"])
        diff = abs(a["loss"] - b["loss"])
        passed = diff <= bound
        ok &= passed
        rows.append({"method": method, "device_loss": a["loss"], "cpu_loss": b["loss"], "cpu_seed1_loss": c["loss"],
                     "diff": diff, "bound": bound, "pass": passed, "steps": a["steps"],
                     "device_s_per_step": a["s_per_step"], "cpu_s_per_step": b["s_per_step"],
                     "peak_gib": a["peak_gib"]})
    print("[gpu_check] SpUNet-v1m1 at 2 cm ...", flush=True)
    bb = backbone_bench(args.device)
    ddp = None
    if args.device == "cuda" and torch.cuda.device_count() >= 2:
        print("[gpu_check] 2-GPU torchrun ...", flush=True)
        cfg_file = out / "ddp.yaml"
        d = small_config(out, "cuda", True, args.quick)
        d["train"]["distributed"] = {"nproc_per_node": 2, "backend": "nccl"}
        cfg_file.write_text(yaml.safe_dump(validate_config(d).model_dump(mode="json")))
        ddp = ddp_check(cfg_file, out / "ddp")
        ok &= ddp["returncode"] == 0

    print(f"\nenvironment: {json.dumps(env)}")
    print(f"{'method':10s} {'steps':>5s} {args.device + ' loss':>11s} {'cpu loss':>9s} {'cpu seed1':>9s} "
          f"{'|diff|':>8s} {'bound':>8s} {'ok':>3s} {args.device + ' s/step':>12s} {'cpu s/step':>10s} {'peak GiB':>8s}")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{r['method']:10s} {r['steps']:5d} {r['device_loss']:11.4f} {r['cpu_loss']:9.4f} "
              f"{r['cpu_seed1_loss']:9.4f} {r['diff']:8.4f} {r['bound']:8.4f} {'yes' if r['pass'] else 'NO':>3s} "
              f"{r['device_s_per_step']:12.3f} {r['cpu_s_per_step']:10.3f} {peak:>8s}")
    print(f"SpUNet-v1m1 ({bb['params'] / 1e6:.2f} M params), {bb['batch']} x {bb['points_per_sample']} voxels on "
          f"{bb['device']}: {bb['ms_per_iter_median']:.0f} ms/iter forward+backward, peak "
          f"{bb.get('peak_cuda_mib', bb['peak_rss_mib']):.0f} MiB")
    if ddp is not None:
        print(f"2-GPU torchrun fine-tune: exit {ddp['returncode']} in {ddp['seconds']:.1f} s")
    total = time.perf_counter() - t_start
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} in {total:.0f} s")
    (out / "gpu_check.json").write_text(json.dumps({"env": env, "rows": rows, "backbone": bb, "ddp": ddp,
                                                    "seconds": total, "pass": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
