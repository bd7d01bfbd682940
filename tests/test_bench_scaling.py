"""scripts/bench_scaling.py's ScanNet-layout workspace is complete for both front ends, so that the
benchmark never times `snakemake -n` / `dvc status` on a workspace that has work left (or is broken)."""

from __future__ import annotations

import importlib.util
import json

import yaml

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", REPO / "scripts" / "bench_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scannet_layout_workspace_is_complete_for_snakemake_and_dvc(tmp_path):
    bench = _bench()
    ws = tmp_path / "ws"
    info = bench.build_workspace(ws, n_train=14, n_val=6, frames=2, say=lambda *a: None)
    assert info["recorded_in_dvc"]
    # the pipeline's own DAG made the workspace: every step of the overlay ran once per job
    jobs = info["jobs"]
    assert jobs["preprocess"] == 1 and jobs["cache_features"] == 1 and jobs["report"] == 1, jobs
    assert jobs["pretrain"] == 2 and jobs["finetune"] == 4 and jobs["evaluate"] == 2, jobs  # scratch, ppkt x full, probe; one evaluate job per method

    # the layouts the steps read and write: raw release, processed scenes with frames, teacher features
    cfg = yaml.safe_load((ws / "params.yaml").read_text())
    raw, processed = ws / cfg["data"]["raw_root"], ws / cfg["data"]["processed_root"]
    assert len(list((raw / "scans").iterdir())) == 20
    assert (raw / "scannetv2_val.txt").read_text().split() == bench.scene_ids(14, 6)["val"]
    assert len(list((processed / "train").iterdir())) == 14 and len(list((processed / "val").iterdir())) == 6
    scene = processed / "val" / bench.scene_ids(14, 6)["val"][0]
    index = json.loads((scene / "frames.json").read_text())
    assert len(index["frames"]) == 2 and all((scene / f["depth"]).is_file() for f in index["frames"])
    assert len(list(ws.glob("data/features/*/*.npz"))) == 20

    _, dry = bench.snakemake_dry_run(ws)
    assert bench.nothing_to_do(dry), dry.stdout[-2000:]
    _, status = bench.dvc_status(ws)
    assert bench.up_to_date(status), status.stdout[-2000:]
