#!/usr/bin/env python
"""Scaling benchmark (issue 14, item 4): workflow overhead at ScanNet size, and time per stage vs scenes.

    python scripts/bench_scaling.py --workflow            # (a) snakemake -n / dvc status, 1,513 scenes
    python scripts/bench_scaling.py --stages              # (b) seconds per stage for 16, 64, 256 scenes
    python scripts/bench_scaling.py --workflow --train 20 --val 6 --frames 4 --keep /tmp/ws   # small

(a) **Workflow overhead.** A copy of the workflow (Snakefile, rules/, envs/, src/) in a temporary
folder, with ``params.yaml`` = the repository's params.yaml + an overlay (default
configs/scannet-ppkt.yaml: the official ScanNet release with RGB-D frames and the 2D feature cache,
so every data folder of the real layout exists) whose relative data roots land inside that folder.
The workspace is ScanNet-sized, with tiny files (each file's content is its own path, so that no two
files share a hash, as in real data):

* raw release layout, ``data/raw/scannet``: ``scans/<id>/`` with the six files of a scan (.sens,
  _vh_clean_2.ply, .labels.ply, segs.json, aggregation.json, .txt), split lists, label tsv;
* what the pipeline makes of it, written by a stand-in for the ``pretrain3d`` CLI that Snakemake
  runs (the real rules, the real DAG): processed scenes in the layout ``pretrain3d preprocess`` writes
  (``<split>/<id>/`` coord, color, normal, segment20, segment200, instance .npy, meta.json,
  frames.json and ``--frames`` colour + depth images), one teacher-feature ``.npz`` per scene, and
  the declared outputs of every other job (workflow.steps).

"Complete" is reached the way a user reaches it: one ``snakemake`` run (jobs stubbed) records
Snakemake's metadata, and its onsuccess hook records every DVC stage in dvc.lock (``dvc commit``, as
after any Snakemake run in a DVC repository). Then ``snakemake -n`` and ``dvc status`` are each timed
in fresh processes (3 runs: best and median, wall and CPU seconds: on a shared machine the CPU
seconds are the better estimate of an idle machine's wall time) and must report nothing to do / up to
date. ``--record`` also times a Snakemake run in which only the report reruns: the rest of its time is
the onsuccess hook recording the DAG's DVC stages in dvc.lock. ``--overlay configs/scannet-scratch.yaml``
gives the layout without RGB-D frames (export_frames false): 8 files per scene instead of 140.

(b) **Time per stage vs scenes.** For each scene count N, a temporary folder with params.yaml + an
overlay: data.synthetic.num_train = N, num_val = max(4, N/4) (plus params.yaml's one rescan per val
scene), the multi_dataset datasets that multi-dataset pre-training reads scaled to N/2 train scenes
each, roots inside the folder, one epoch of pre-training, fine-tuning and linear probe
(protocols.probe_epochs 1), tracking off, threads and workers as params.yaml sets them. Each stage's CLI
command runs as the rules call it, timed as a subprocess (Python and torch start-up included):
generate, preprocess, dataset-data, features, pretrain per method, finetune la, probe (finetune
--protocol probe), evaluate la. Prints seconds per stage x scene count, seconds per scene, the
marginal seconds per added scene and the exponent k of t ~ n^k, and flags superlinear stages.
``--only-at-max STAGE ...`` times only those stages (and what they need) at the largest count;
``--json`` keeps the counts measured so far, and a later call reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNET_TRAIN, SCANNET_VAL = 1201, 312  # ScanNet v2 scans with public labels (1,513)
# ~100k frames over the 1,513 scans at frame_step 25 (configs/scannet-ppkt.yaml): 66 per scan
SCANNET_FRAMES = 66
WORKFLOW_FILES = ["Snakefile", "rules", "envs", "src", "pyproject.toml"]
DEFAULT_OVERLAY = "configs/scannet-ppkt.yaml"


# ============================================================================ (a) ScanNet-size workspace
def scene_ids(n_train: int, n_val: int) -> dict[str, list[str]]:
    """ScanNet-style ids (sceneSSSS_RR: space, rescan), train first."""
    ids = [f"scene{i // 3:04d}_{i % 3:02d}" for i in range(n_train + n_val)]
    return {"train": ids[:n_train], "val": ids[n_train:]}


def _write_tiny(path: Path, root: Path) -> None:
    """A tiny file whose content is its own path below ``root`` (unique content: one cache object each)."""
    path.write_text(path.relative_to(root).as_posix())


def make_raw_release(raw: Path, splits: dict[str, list[str]]) -> int:
    """The official release's layout (data/scannet.py), tiny files; returns the number of files."""
    n = 0
    for ids in splits.values():
        for sid in ids:
            d = raw / "scans" / sid
            d.mkdir(parents=True)
            for name in (f"{sid}.sens", f"{sid}_vh_clean_2.ply", f"{sid}_vh_clean_2.labels.ply",
                         f"{sid}_vh_clean_2.0.010000.segs.json", f"{sid}.aggregation.json", f"{sid}.txt"):
                _write_tiny(d / name, raw)
                n += 1
    for split, ids in splits.items():
        (raw / f"scannetv2_{split}.txt").write_text("\n".join(ids) + "\n")
    (raw / "scannetv2-labels.combined.tsv").write_text("id\traw_category\tcategory\tcount\tnyu40id\n")
    return n + len(splits) + 1


def read_raw_splits(raw: Path) -> dict[str, list[str]]:
    return {f.stem.removeprefix("scannetv2_"): f.read_text().split()
            for f in sorted(raw.glob("scannetv2_*.txt"))}


def make_processed(raw: Path, out: Path, frames: int) -> int:
    """What ``pretrain3d preprocess`` writes for a ScanNet release with export_frames (tiny files)."""
    splits = read_raw_splits(raw)
    n = 0
    for split, ids in splits.items():
        for sid in ids:
            d = out / split / sid
            d.mkdir(parents=True)
            for name in ("coord.npy", "color.npy", "normal.npy", "segment20.npy", "segment200.npy",
                         "instance.npy", "meta.json"):
                _write_tiny(d / name, out)
            n += 7
            if not frames:  # data.scannet.export_frames false: meshes only
                continue
            (d / "frames" / "color").mkdir(parents=True)
            (d / "frames" / "depth").mkdir()
            index = {"depth_scale": 1000.0, "width": 640, "height": 480, "frames": [
                {"id": str(k * 25), "color": f"frames/color/{k * 25}.jpg", "depth": f"frames/depth/{k * 25}.png"}
                for k in range(frames)]}
            (d / "frames.json").write_text(json.dumps(index))
            for f in index["frames"]:
                _write_tiny(d / f["color"], out)
                _write_tiny(d / f["depth"], out)
            n += 1 + 2 * frames
    (out / "manifest.json").write_text(json.dumps({"dataset": "scannet", "splits": splits,
                                                   "data_hash": f"stub-{sum(map(len, splits.values()))}"}))
    return n + 1


# --------------------------------------------------------------------------- the stand-in for the CLI
# command -> step (workflow.steps), and the flags that carry the step's wildcards
COMMAND_STEP = {"generate": "generate_synthetic", "download": "download", "preprocess": "preprocess",
                "dataset-data": "dataset_data", "features": "cache_features", "pretrain": "pretrain",
                "real-check": "real_check", "finetune": "finetune", "evaluate": "evaluate",
                "query-benchmark": "scene_queries", "multi-dataset-study": "ppt_study",
                "log-references": "log_references", "report": "report"}


def stub_main(argv: list[str]) -> int:
    """``pretrain3d <command> --config C [--method M --seed S ...]``: write the job's declared outputs,
    tiny; preprocess and features write the real per-scene layout (so the data folders are full size)."""
    from pretrain3d.config import load_config
    from pretrain3d.workflow.steps import STEPS

    cmd, rest = argv[0], argv[1:]
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i].startswith("--"):
            key = rest[i][2:].replace("-", "_")
            if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                opts[key] = rest[i + 1]
                i += 2
                continue
            opts[key] = ""
        else:
            positional.append(rest[i])
        i += 1
    # `report --no-tracking` is the early method-comparison report (its own step)
    step = STEPS["benchmark_report" if cmd == "report" and "no_tracking" in opts else COMMAND_STEP[cmd]]
    cfg = load_config(opts["config"])
    w = {k: opts.get(k) or (positional[0] if positional else "") for k in step.wildcards}
    frames = int(os.environ.get("BENCH_FRAMES", SCANNET_FRAMES)) if cfg.data.scannet.export_frames else 0
    for key, out in step.outputs(cfg, w).items():
        out = Path(out)
        if key in step.directory_outputs:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if step.name == "preprocess":
                make_processed(Path(cfg.data.raw_root), out, frames)
            elif step.name == "cache_features":
                for split, ids in read_raw_splits(Path(cfg.data.raw_root)).items():
                    for sid in ids:
                        _write_tiny(out / f"{sid}.npz", out.parent)
            else:
                (out / "stub.txt").write_text(f"{step.name} {w}")
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"mIoU": 0.5, "stub": f"{step.name} {w}"}))
    return 0


# ------------------------------------------------------------------------------------- the workspace
def bench_env(ws: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PRETRAIN3D_PARENT_RUN_ID", "DVC_STAGE", "PRETRAIN3D_NO_DVC_RECORD"):
        env.pop(k, None)
    env["PATH"] = os.pathsep.join([str(ws / ".bench-bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ws / "src")  # the copy's code (its files are the rules' code inputs)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str], ws: Path, env: dict | None = None, check: bool = True,
        timeout: float = 3600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ws, env=env or bench_env(ws), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def build_workspace(ws: Path, n_train: int = SCANNET_TRAIN, n_val: int = SCANNET_VAL, frames: int = SCANNET_FRAMES,
                    overlays: tuple[str, ...] = (DEFAULT_OVERLAY,), dvc: bool = True, say=print) -> dict:
    """A complete ScanNet-layout workspace in ``ws`` (must not exist); returns {what: count or seconds}."""
    import yaml

    from pretrain3d.config import deep_merge, load_config

    info: dict = {}
    ws.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, ws / name)
    for name in (".gitignore", ".dvcignore"):
        shutil.copy2(REPO / name, ws / name)
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    for o in overlays:
        cfg = deep_merge(cfg, yaml.safe_load((REPO / o).read_text()))
    # tracking off: the stubbed jobs log nothing, and dry runs never touch MLflow anyway
    cfg = deep_merge(cfg, {"tracking": {"enabled": False}})
    (ws / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    params = load_config(ws / "params.yaml")
    for root in (params.data.raw_root, params.data.processed_root, params.teacher.cache_root):
        if Path(root).is_absolute():
            raise ValueError(f"{root}: the overlay's data roots must be relative (inside the workspace)")
    if params.data.dataset != "scannet":
        raise ValueError("the ScanNet-size workspace needs data.dataset: scannet (the release layout)")

    bindir = ws / ".bench-bin"
    bindir.mkdir()
    stub = bindir / "pretrain3d"
    stub.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                    "from bench_scaling import stub_main\nsys.exit(stub_main(sys.argv[1:]))\n")
    stub.chmod(0o755)

    t = time.perf_counter()
    info["raw_files"] = make_raw_release(ws / params.data.raw_root, scene_ids(n_train, n_val))
    info["make_raw_s"] = time.perf_counter() - t
    env = bench_env(ws)
    env["BENCH_FRAMES"] = str(frames)
    run([sys.executable, "-m", "pretrain3d.cli", "dvc-yaml"], ws, env)
    if dvc:
        run(["git", "init", "-q"], ws, env)
        with open(ws / ".git" / "info" / "exclude", "a") as f:
            f.write("/.bench-bin/\n")
        run([sys.executable, "-m", "dvc", "init", "-q"], ws, env)  # analytics: off by DVC_NO_ANALYTICS
        run(["git", "add", "-A"], ws, env)
        run(["git", "-c", "user.email=bench@pretrain3d", "-c", "user.name=bench", "commit", "-qm", "workspace"],
            ws, env)
    say(f"  workspace {ws}: {n_train}+{n_val} scenes, {info['raw_files']} raw files; running the workflow "
        f"(stubbed jobs{', then dvc commit of every stage' if dvc else ''})")
    t = time.perf_counter()
    p = run([sys.executable, "-m", "snakemake", "--cores", "2"], ws, env)
    info["complete_run_s"] = time.perf_counter() - t
    info["recorded_in_dvc"] = "recorded" in p.stderr and "DVC stage(s) in dvc.lock" in p.stderr
    info["jobs"] = {}  # rule -> jobs the run made (the pipeline's DAG, not a hand-made one)
    for rule in re.findall(r"^(?:local)?rule (\w+):", p.stdout + p.stderr, re.M):
        info["jobs"][rule] = info["jobs"].get(rule, 0) + 1
    if dvc and not info["recorded_in_dvc"]:
        raise RuntimeError(f"the Snakemake run did not record its stages in dvc.lock:\n{p.stderr[-4000:]}")
    info["files"] = sum(len(fs) for _, _, fs in os.walk(ws / "data"))
    return info


def timed(cmd: list[str], ws: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the child: user + system, p). On a shared machine the CPU seconds are the
    better estimate of the wall time on an idle one (both commands are single-threaded)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = run(cmd, ws)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), p


def snakemake_dry_run(ws: Path) -> tuple[float, subprocess.CompletedProcess]:
    wall, _, p = timed([sys.executable, "-m", "snakemake", "-n"], ws)
    return wall, p


def dvc_status(ws: Path) -> tuple[float, subprocess.CompletedProcess]:
    wall, _, p = timed([sys.executable, "-m", "dvc", "status"], ws)
    return wall, p


def nothing_to_do(p: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in p.stdout + p.stderr


def up_to_date(p: subprocess.CompletedProcess) -> bool:
    return "up to date" in p.stdout + p.stderr


def part_workflow(args) -> dict:
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    ws = tmp / "ws" if not args.keep else tmp
    out: dict = {}
    try:
        print(f"(a) workflow overhead: overlay {' + '.join(args.overlay)}, {args.train}+{args.val} scenes, "
              f"{args.frames} RGB-D frames each where the config exports frames")
        if args.keep and (ws / "dvc.lock").is_file():
            print(f"  reusing the workspace in {ws}")
        else:
            out["build"] = build_workspace(ws, args.train, args.val, args.frames, tuple(args.overlay))
            b = out["build"]
            print(f"  built in {b['make_raw_s']:.1f} s (raw) + {b['complete_run_s']:.1f} s (workflow run, "
                  f"dvc commit); {b['files']} files under data/")
        out["files"] = sum(len(fs) for _, _, fs in os.walk(ws / "data"))
        out["load_before"] = os.getloadavg()[0]
        commands = (("snakemake -n", [sys.executable, "-m", "snakemake", "-n"], nothing_to_do),
                    ("dvc status", [sys.executable, "-m", "dvc", "status"], up_to_date))
        for name, cmd, ok in commands:
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu, p = timed(cmd, ws)
                if not ok(p):
                    raise RuntimeError(f"{name} does not report a complete workspace:\n{p.stdout[-3000:]}\n"
                                       f"{p.stderr[-3000:]}")
                walls.append(wall)
                cpus.append(cpu)
            out[name] = {"best_s": min(walls), "median_s": statistics.median(walls), "runs_s": walls,
                         "cpu_best_s": min(cpus), "cpu_median_s": statistics.median(cpus)}
        if args.record:
            # one cheap job reruns (the report's code changed): the rest of the run's time is the onsuccess
            # hook recording the DAG's DVC stages in dvc.lock (workflow/sync.py)
            report_py = ws / "src/pretrain3d/stages/report.py"
            report_py.write_text(report_py.read_text() + "\n# bench_scaling: edited\n")
            wall, cpu, p = timed([sys.executable, "-m", "snakemake", "--cores", "2"], ws)
            ran = sorted(set(re.findall(r"^(?:local)?rule (\w+):", p.stdout + p.stderr, re.M)) - {"all"})
            recorded = re.search(r"recorded (\d+) DVC stage", p.stderr)
            out["rerun report"] = {"best_s": wall, "median_s": wall, "cpu_best_s": cpu, "cpu_median_s": cpu,
                                   "jobs": ran, "recorded_stages": int(recorded.group(1)) if recorded else 0}
        out["load_after"] = os.getloadavg()[0]
        print(f"\n  {out['files']} files under data/; {args.repeat} fresh processes each; target <= 5 s; "
              f"load average {out['load_before']:.1f} -> {out['load_after']:.1f} on {os.cpu_count()} CPUs")
        print(f"  {'command':<14}{'best s':>8}{'median s':>10}{'CPU best s':>12}{'CPU median s':>14}")
        for name in [c[0] for c in commands] + (["rerun report"] if args.record else []):
            r = out[name]
            flag = "" if r["best_s"] <= 5 else "   SLOWER THAN TARGET"
            if name == "rerun report":
                flag = f"   (1 run: jobs {r['jobs']}, then {r['recorded_stages']} DVC stages recorded)"
            print(f"  {name:<14}{r['best_s']:>8.2f}{r['median_s']:>10.2f}{r['cpu_best_s']:>12.2f}"
                  f"{r['cpu_median_s']:>14.2f}{flag}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ============================================================================ (b) time per stage
PRETRAIN_METHODS = ["scratch", "ppkt", "ponderv2", "condense", "ppt"]


def stage_overlay(root: Path, n: int, n_val: int, methods: list[str]) -> dict:
    """params.yaml's embedded benchmark with ``n`` train scenes (``n_val`` val), everything inside ``root``,
    one epoch of pre-training, fine-tuning and probe, tracking off. The other datasets that multi-dataset
    pre-training trains on are scaled with it (n/2 train scenes each), so its epoch grows with n too."""
    import yaml

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    extra = {name: {"raw_root": str(root / f"raw-{name}"), "processed_root": str(root / f"processed-{name}"),
                    "synthetic": {"num_train": max(2, n // 2), "num_val": max(2, n_val // 2)}}
             for name in base["multi_dataset"]["datasets"]}
    return {
        "experiment": {"name": f"bench-{n}", "seeds": [0], "methods": methods, "pretrain_only": [],
                       "protocols": ["la", "probe"]},
        "data": {"raw_root": str(root / "raw"), "processed_root": str(root / "processed"),
                 "synthetic": {"num_train": n, "num_val": n_val}},
        "teacher": {"cache_root": str(root / "features")},
        "pretrain": {"epochs": 1}, "train": {"epochs": 1}, "protocols": {"probe_epochs": 1},
        "multi_dataset": {"datasets": extra},
        "ppt_study": {"enabled": False}, "tracking": {"enabled": False},
    }


def stage_commands(root: Path, cfg, methods: list[str]) -> list[tuple[str, list[str]]]:
    """(stage, CLI arguments) in pipeline order, as rules/*.smk call them."""
    from pretrain3d.workflow.steps import extra_datasets, needs

    c = ["--config", str(root / "params.yaml")]
    runs = root / "results"
    cmds: list[tuple[str, list[str]]] = [("generate", ["generate", *c]), ("preprocess", ["preprocess", *c])]
    cmds += [(f"dataset-data {d}", ["dataset-data", d, *c]) for d in extra_datasets(cfg)]
    if any("features" in needs(m) for m in methods):
        cmds.append(("cache_features", ["features", *c, "--no-progress"]))
    for m in methods:
        cmds.append((f"pretrain {m}", ["pretrain", *c, "--method", m, "--seed", "0",
                                       "--out-dir", str(runs / "pretrain" / m), "--no-progress"]))
    backbone = str(runs / "pretrain" / methods[0] / "backbone.pt")
    for protocol, stage in (("la", "finetune la"), ("probe", "probe")):
        out = runs / "runs" / protocol
        cmds.append((stage, ["finetune", *c, "--method", methods[0], "--seed", "0", "--protocol", protocol,
                             "--init-backbone", backbone, "--out-dir", str(out), "--no-progress"]))
    cmds.append(("evaluate la", ["evaluate", *c, "--model", str(runs / "runs" / "la" / "model.pt"),
                                 "--method", methods[0], "--protocol", "la", "--seed", "0",
                                 "--out-dir", str(runs / "runs" / "la")]))
    return cmds


def stages_needed(only: set[str], methods: list[str]) -> set[str]:
    """``only`` and the stages whose outputs they read."""
    from pretrain3d.workflow.steps import needs

    keep = set(only) | {"generate", "preprocess"}
    timed_methods = [s.split()[1] for s in only if s.startswith("pretrain ")]
    if any(s.split()[0] in ("finetune", "probe", "evaluate") for s in only):
        keep.add(f"pretrain {methods[0]}")
        timed_methods.append(methods[0])
    if "evaluate la" in only:
        keep.add("finetune la")
    if any("features" in needs(m) for m in timed_methods):
        keep.add("cache_features")
    if any("datasets" in needs(m) for m in timed_methods):
        keep.add("dataset-data")
    return keep


def time_stages(n: int, n_val: int, methods: list[str], only: set[str] | None, say=print) -> dict[str, float]:
    import yaml

    from pretrain3d.config import deep_merge, load_config

    root = Path(tempfile.mkdtemp(prefix=f"bench-stages-{n}-"))
    try:
        cfg_dict = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                              stage_overlay(root, n, n_val, methods))
        (root / "params.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        cfg = load_config(root / "params.yaml")
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        for k in ("PRETRAIN3D_PARENT_RUN_ID", "PRETRAIN3D_CONFIG"):
            env.pop(k, None)
        times: dict[str, float] = {}
        commands = stage_commands(root, cfg, methods)
        keep = stages_needed(only, methods) if only is not None else None
        for stage, argv in commands:
            if keep is not None and stage.split()[0] not in keep and stage not in keep:
                continue
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pretrain3d.cli", *argv], cwd=root, env=env,
                               capture_output=True, text=True)
            times[stage] = time.perf_counter() - t
            if p.returncode != 0:
                raise RuntimeError(f"{stage} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            say(f"  {n:>4} scenes  {stage:<26}{times[stage]:>8.1f} s")
        return times
    finally:
        shutil.rmtree(root, ignore_errors=True)


def growth(t_small: float, t_big: float, n_small: int, n_big: int) -> float:
    """Exponent k of t ~ n^k between two scene counts (1 = linear; a fixed start-up cost pulls it below 1)."""
    import math

    return math.log(t_big / t_small) / math.log(n_big / n_small)


def part_stages(args) -> dict:
    counts = sorted(args.scenes)
    print(f"(b) seconds per stage vs train scenes {counts} (val = train/4, at least 4; 1 epoch; "
          "threads and workers as params.yaml sets them)")
    table: dict[int, dict[str, float]] = {}
    done = {}
    if args.json and Path(args.json).is_file():  # counts measured by an earlier call are reused
        done = json.loads(Path(args.json).read_text()).get("stages", {}).get("seconds", {})
    for n in counts:
        only = set(args.only_at_max) if (args.only_at_max and n == counts[-1] and len(counts) > 1) else None
        if str(n) in done:
            table[n] = done[str(n)]
            print(f"  {n:>4} scenes  reused from {args.json}")
            continue
        table[n] = time_stages(n, max(4, n // 4), args.methods, only)
        if args.json:
            prev = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
            prev.setdefault("stages", {}).setdefault("seconds", {})[str(n)] = table[n]
            Path(args.json).write_text(json.dumps(prev, indent=2))
    stages = list(dict.fromkeys(s for n in counts for s in table[n]))
    pairs = list(zip(counts, counts[1:]))
    head = "".join(f"{f'{n} s':>9}" for n in counts) + "".join(f"{f'{n} s/sc':>10}" for n in counts)
    head += "".join(f"{f'+{a}-{b}':>12}" for a, b in pairs) + "".join(f"{f'k {a}-{b}':>10}" for a, b in pairs)
    print(f"\n  s/sc: seconds per train scene; +a-b: marginal seconds per added scene between a and b; k: exponent"
          f" of t ~ n^k between them (a fixed start-up pulls k below 1)")
    print(f"  {'stage':<26}{head}")
    flagged = []
    for s in stages:
        t = {n: table[n][s] for n in counts if s in table[n]}
        row = "".join(f"{t[n]:>9.1f}" if n in t else f"{'-':>9}" for n in counts)
        row += "".join(f"{t[n] / n:>10.3f}" if n in t else f"{'-':>10}" for n in counts)
        marg = [(t[b] - t[a]) / (b - a) if a in t and b in t else None for a, b in pairs]
        ks = [growth(t[a], t[b], a, b) if a in t and b in t else None for a, b in pairs]
        row += "".join(f"{m:>12.3f}" if m is not None else f"{'-':>12}" for m in marg)
        row += "".join(f"{k:>10.2f}" if k is not None else f"{'-':>10}" for k in ks)
        known = [m for m in marg if m is not None]
        # superlinear: the cost of one more scene grows with the scene count
        if any(k is not None and k > 1.1 for k in ks) or any(
                b > 0.05 and b > 1.5 * max(a, 0.05) for a, b in zip(known, known[1:])):
            row += "   SUPERLINEAR"
            flagged.append(s)
        print(f"  {s:<26}{row}")
    print(f"\n  superlinear (k > 1.1, or the marginal cost per scene grows > 1.5x): {', '.join(flagged) or 'none'}")
    return {"seconds": {str(n): table[n] for n in counts}, "superlinear": flagged}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", action="store_true", help="(a) snakemake -n / dvc status at ScanNet size")
    ap.add_argument("--stages", action="store_true", help="(b) seconds per stage vs number of scenes")
    ap.add_argument("--train", type=int, default=SCANNET_TRAIN, help="(a) train scenes")
    ap.add_argument("--val", type=int, default=SCANNET_VAL, help="(a) val scenes")
    ap.add_argument("--frames", type=int, default=SCANNET_FRAMES, help="(a) RGB-D frames per processed scene")
    ap.add_argument("--overlay", action="append", default=None, help=f"(a) config overlay (default {DEFAULT_OVERLAY})")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scenes", type=int, nargs="+", default=[16, 64, 256], help="(b) train scene counts")
    ap.add_argument("--methods", nargs="+", default=PRETRAIN_METHODS,
                    help="(b) pre-training methods (the first one's backbone is fine-tuned)")
    ap.add_argument("--only-at-max", nargs="+", default=None,
                    help="(b) at the largest count, time only these stages (and what they need)")
    ap.add_argument("--keep", default=None, help="(a) build the workspace here and keep it (reused if complete)")
    ap.add_argument("--record", action="store_true",
                    help="(a) also time a Snakemake run that reruns one cheap job (report) and records dvc.lock")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    args.overlay = args.overlay or [DEFAULT_OVERLAY]
    if not (args.workflow or args.stages):
        args.workflow = args.stages = True
    results = {}
    if args.workflow:
        results["workflow"] = part_workflow(args)
    if args.stages:
        results["stages"] = part_stages(args)
    if args.json:
        prev = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
        Path(args.json).write_text(json.dumps({**prev, **results}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
