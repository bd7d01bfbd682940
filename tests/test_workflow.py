"""The workflow's bookkeeping: one graph, two front ends, nothing stale and nothing done twice.

Jobs run through tests/stub_pretrain3d.py (outputs = hash of what the step reads, in milliseconds),
so every rerun-trigger claim of the README is checked with the real Snakemake and DVC in seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline_util import make_workdir

from pretrain3d.config import load_config, validate_config
from pretrain3d.workflow.steps import STEPS, WorkflowConfigError, check_runnable

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


class Workspace:
    def __init__(self, wd: Path, tmp: Path):
        self.wd = wd
        self.log = tmp / "stub.log"
        self.log.write_text("")
        bindir = tmp / "stubbin"
        bindir.mkdir()
        stub = bindir / "pretrain3d"
        stub.write_text(f"#!{sys.executable}\n" + (REPO / "tests" / "stub_pretrain3d.py").read_text())
        stub.chmod(0o755)
        self.env = dict(os.environ, STUB_LOG=str(self.log), DVC_NO_ANALYTICS="1",
                        PATH=f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        for k in ("PRETRAIN3D_PARENT_RUN_ID", "DVC_STAGE"):
            self.env.pop(k, None)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), cwd=self.wd, env=self.env, capture_output=True, text=True, timeout=600)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
        return p

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "snakemake", "--cores", "2", *args, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def jobs(self) -> list[str]:
        """Stub calls since the last call of this method."""
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return lines

    def planned(self) -> dict[str, int]:
        out = self.snakemake("-n").stdout
        if "Nothing to be done" in out:
            return {}
        table = out.split("Job stats:")[1].split("Reasons:")[0]
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
                if m.group(1) not in ("total", "all")}

    def dvc_changed(self) -> set[str]:
        out = self.dvc("status").stdout
        if "up to date" in out:
            return set()
        return {m.group(1) for m in re.finditer(r"^(\S+):\s*$", out, re.M)}

    def set_params(self, **dotted) -> None:
        path = self.wd / "params.yaml"
        data = yaml.safe_load(path.read_text())
        for key, value in dotted.items():
            node = data
            *parents, last = key.split(".")
            for p in parents:
                node = node[p]
            node[last] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def _workspace(tmp_path: Path, extra: dict | None = None) -> Workspace:
    over = {"experiment": {"methods": ["scratch", "ppkt"], "protocols": ["la", "probe"], "seeds": [0]},
            "tracking": {"enabled": False}}
    if extra:
        from pretrain3d.config import deep_merge

        over = deep_merge(over, extra)
    wd = make_workdir(tmp_path, extra=over)
    shutil.copytree(REPO / ".dvc", wd / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copy2(REPO / ".dvcignore", wd / ".dvcignore")
    shutil.copy2(REPO / ".gitignore", wd / ".gitignore")
    ws = Workspace(wd, tmp_path)
    ws.run(sys.executable, "-m", "pretrain3d.cli", "dvc-yaml")
    ws.run("git", "init", "-q")
    ws.run(*GIT, "add", "-A")
    ws.run(*GIT, "commit", "-qm", "init")
    return ws


def test_committed_dvc_yaml_is_generated_from_the_step_declarations():
    p = subprocess.run([sys.executable, "-m", "pretrain3d.cli", "dvc-yaml", "--check"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, f"dvc.yaml is stale: run `pretrain3d dvc-yaml`\n{p.stderr}"


def test_dvc_params_are_keys_of_params_yaml_and_exclude_what_cannot_change_outputs():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: param {key} is not in params.yaml"
                node = node[part]
    la = set(stages["finetune-la"]["params"])
    assert "protocols.la_points" in la and "protocols.probe_lr" not in la
    assert "train.threads" not in la and "train.num_workers" not in la and "train.lr" in la
    assert "train.grid_size" in stages["pretrain-ppkt"]["params"]  # it was missing: stale 8 cm backbones
    assert "teacher.batch_size" not in stages["cache_features"]["params"]
    assert not any("real_check_steps" in k for k in stages["pretrain-ponderv2"]["params"])
    # pretrain@scratch reads no data; the evaluation imports the models it evaluates
    assert not any(d.startswith("data/") for d in stages["pretrain-scratch"]["deps"])
    assert "src/pretrain3d/models/spunet.py" in stages["evaluate"]["deps"]
    assert "src/pretrain3d/engine/trainer.py" in stages["pretrain-ppkt"]["deps"]
    assert "src/pretrain3d/data/transforms.py" in stages["pretrain-ppkt"]["deps"]


def test_stages_that_read_a_processed_dataset_depend_on_its_manifest(tmp_path):
    """DVC tracks a processed folder by its manifest.json alone, as preprocessing's out and as its readers'
    dep: its data_hash covers every file of every scene (frames included), so a changed file still changes
    it, and `dvc status` never walks the folder's files (12 s at ScanNet size when it did)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    folders = {"data/processed/synthetic", "data/processed/synthetic-s3dis", "data/processed/synthetic-structured3d"}
    assert stages["preprocess"]["outs"] == ["data/processed/synthetic/manifest.json"]
    assert not [(n, d) for n, s in stages.items() for d in s.get("outs", []) if d in folders]
    assert not [(n, d) for n, s in stages.items() for d in s.get("deps", []) if d in folders]
    readers = {n for n, s in stages.items() if "data/processed/synthetic/manifest.json" in s.get("deps", [])}
    assert {"cache_features", "pretrain-ppkt", "finetune-la", "evaluate"} <= readers

    from pretrain3d.data.scene import hash_scenes

    scene = tmp_path / "train" / "s0"
    (scene / "frames" / "color").mkdir(parents=True)
    (scene / "coord.npy").write_bytes(b"xyz")
    (scene / "frames" / "color" / "0.jpg").write_bytes(b"a")
    before = hash_scenes([scene])
    (scene / "frames" / "color" / "0.jpg").write_bytes(b"b")
    assert hash_scenes([scene]) != before


def test_steps_code_is_the_import_closure():
    code = STEPS["finetune"].code({"method": "ppkt", "protocol": "la", "seed": "0"})
    assert "src/pretrain3d/stages/finetune.py" in code and "src/pretrain3d/config.py" in code
    assert "src/pretrain3d/stages/report.py" not in code  # editing the report never reruns training
    assert all((REPO / f).is_file() for f in code)


def test_a_method_the_dataset_cannot_feed_is_an_error(tmp_path):
    raw = tmp_path / "s3dis"
    raw.mkdir()
    cfg = validate_config({"data": {"dataset": "s3dis", "raw_root": str(raw), "num_classes": 13},
                           "experiment": {"methods": ["scratch"], "pretrain_only": ["ponderv2_semantic"]}})
    with pytest.raises(WorkflowConfigError, match="pretrain_only lists 'ponderv2_semantic'.*s3dis"):
        check_runnable(cfg)


def test_every_overlay_schedules_only_runnable_methods():
    """Each overlay as used (alone, or scannet-npy / scannet-efficient on top of an experiment overlay, as
    tests/test_configs.py's cases): every scheduled method's inputs exist in that dataset's layout."""
    from test_configs import CASES

    for case in CASES:
        paths = [REPO / "configs" / f"{n}.yaml" for n in case]
        cfg = load_config(REPO / "params.yaml", *paths)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"raw_root": str(REPO)})})
        md = cfg.multi_dataset
        cfg = cfg.model_copy(update={"multi_dataset": md.model_copy(update={"datasets": {
            n: d.model_copy(update={"raw_root": str(REPO / "no-such" / n) if d.dataset == "synthetic" else str(REPO)})
            for n, d in md.datasets.items()}})})
        check_runnable(cfg, source=" + ".join(map(str, paths)))  # raises naming the method and what is missing


def test_missing_raw_data_is_an_error_not_nothing_to_be_done(tmp_path):
    ws = _workspace(tmp_path, {"data": {"dataset": "scannet_like", "raw_root": "data/raw/mine"}})
    p = ws.snakemake("-n", check=False)
    assert p.returncode != 0
    assert "data.raw_root data/raw/mine does not exist" in p.stdout + p.stderr


def test_snakemake_then_dvc_then_changes(tmp_path):
    ws = _workspace(tmp_path)
    first = ws.snakemake()
    assert "recorded" in first.stderr and "DVC stage(s) in dvc.lock" in first.stderr
    n = len(ws.jobs())
    # generate, preprocess, features, pretrain, finetune, evaluate, scene queries (teacher, ppkt), refs,
    # the early method comparison, report
    assert n == 1 + 1 + 1 + 2 + 4 + 2 + 2 + 1 + 1 + 1  # evaluate: one job per method
    # DVC agrees at once, and repro trains nothing
    assert ws.dvc_changed() == set()
    repro = ws.dvc("repro")
    assert "Running stage" not in repro.stdout and ws.jobs() == []
    assert ws.planned() == {}

    # a parameter that only fine-tuning reads: both tools rerun fine-tuning, evaluation, report
    ws.set_params(**{"train.lr": 0.02})
    assert ws.planned() == {"finetune": 4, "evaluate": 2, "benchmark_report": 1, "report": 1}
    changed = ws.dvc_changed()
    assert {c.split("@")[0] for c in changed} == {"finetune-la", "finetune-probe"}, changed
    ws.dvc("repro")
    ran = ws.jobs()
    assert sorted({j.split()[0] for j in ran}) == ["benchmark_report", "evaluate", "finetune", "report"] \
        and len(ran) == 8, ran
    assert ws.planned() == {} and ws.dvc_changed() == set()

    # parameters that cannot change any output rerun nothing, in either tool
    ws.set_params(**{"train.threads": 2, "train.num_workers": 3, "teacher.batch_size": 3})
    assert ws.planned() == {} and ws.dvc_changed() == set()

    # a LA-only parameter does not rerun the probe
    ws.set_params(**{"protocols.la_points": 30})
    assert ws.planned() == {"finetune": 2, "evaluate": 2, "benchmark_report": 1, "report": 1}  # both methods' evaluate
    ws.snakemake()
    ran = ws.jobs()
    assert all("protocol=probe" not in j for j in ran) and len(ran) == 6
    assert ws.dvc_changed() == set()  # Snakemake's run was recorded for DVC

    # editing code reruns exactly the steps that import it
    report_py = ws.wd / "src/pretrain3d/stages/report.py"
    report_py.write_text(report_py.read_text() + "\n# edited\n")
    assert ws.planned() == {"benchmark_report": 1, "report": 1}
    assert ws.dvc_changed() == {"benchmark_report", "report"}
    trainer_py = ws.wd / "src/pretrain3d/engine/trainer.py"
    trainer_py.write_text(trainer_py.read_text() + "\n# edited\n")
    planned = ws.planned()
    assert planned["finetune"] == 4 and planned["pretrain"] == 2 and "preprocess" not in planned
    ws.dvc("repro")
    ws.jobs()
    assert ws.planned() == {} and ws.dvc_changed() == set()


def test_dvc_first_then_snakemake_and_no_writes_on_dry_runs(tmp_path):
    ws = _workspace(tmp_path, {"experiment": {"methods": ["scratch"], "protocols": ["probe"]}})
    shutil.rmtree(ws.wd / ".pretrain3d", ignore_errors=True)
    ws.snakemake("-n")
    ws.snakemake("--lint", check=False)
    assert not (ws.wd / ".pretrain3d").exists()  # dry runs and lint write no config
    ws.dvc("repro")
    # generate, preprocess, pretrain, finetune, eval, refs, the early method comparison, report
    assert len(ws.jobs()) == 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    assert ws.planned() == {} and ws.dvc_changed() == set()
    # the resolved config is content-addressed: another config never rewrites this one's
    assert len(list((ws.wd / ".pretrain3d").glob("config-*.yaml"))) == 1
    # a stale dvc.yaml (seeds changed, not regenerated) stops DVC before any job runs
    ws.set_params(**{"experiment.seeds": [0, 1]})
    p = ws.dvc("repro", check=False)
    assert p.returncode != 0 and "run `pretrain3d dvc-yaml`" in p.stdout + p.stderr
    assert ws.jobs() == []


def test_user_raw_data_is_never_deleted_and_download_settings_rerun_nothing(tmp_path):
    ws = _workspace(tmp_path, {"data": {"dataset": "scannet_like", "raw_root": "data/raw/mine"},
                               "experiment": {"seeds": [0], "methods": ["scratch"], "protocols": ["probe"]}})
    raw = ws.wd / "data/raw/mine"
    raw.mkdir(parents=True)
    (raw / "my_scan.txt").write_text("irreplaceable")
    stages = yaml.safe_load((ws.wd / "dvc.yaml").read_text())["stages"]
    assert all("data/raw/mine" not in s["outs"] for s in stages.values())
    ws.dvc("repro")
    ws.snakemake("-F")  # even a forced rerun of everything
    assert (raw / "my_scan.txt").read_text() == "irreplaceable"

    # downloaded raw data: how it is fetched is no rerun trigger
    (tmp_path / "dl").mkdir()
    ws2 = _workspace(tmp_path / "dl", {"data": {"dataset": "scannet_like", "raw_root": "data/raw/dl", "download": {
        "urls": [{"url": "http://127.0.0.1:9/scans.tar", "sha256": "0" * 64}]}},
        "experiment": {"methods": ["scratch"], "protocols": ["probe"]}})
    ws2.snakemake()
    assert "download" in ws2.jobs()
    ws2.set_params(**{"data.download.retries": 7, "data.download.timeout": 5.0,
                      "data.download.cache_dir": "elsewhere"})
    assert ws2.planned() == {} and ws2.dvc_changed() == set()


def test_moving_the_repository_keeps_mlflow_logging_working(tmp_path):
    """MLflow stores absolute artifact paths; after moving the repository (store + artifacts), logging
    and the old runs' artifacts follow the move."""
    import mlflow

    from pretrain3d.config import TrackingConfig
    from pretrain3d.tracking import mlflow_runs

    cfg = TrackingConfig(uri="sqlite:///mlflow.db", artifact_root="mlartifacts", experiment="moved")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "note.txt").write_text("x")
    with mlflow_runs.job_run(cfg, "first", {}, {}, root=a) as run:
        run.log_artifact(a / "note.txt")
    a.rename(b)
    with mlflow_runs.job_run(cfg, "second", {}, {}, root=b) as run:
        run.log_artifact(b / "note.txt")
    exp = mlflow.get_experiment_by_name("moved")
    assert exp.artifact_location == (b / "mlartifacts").resolve().as_uri()
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert len(runs) == 2
    for r in runs:
        assert r.info.artifact_uri.startswith(exp.artifact_location)
        assert (Path(r.info.artifact_uri.removeprefix("file://")) / "note.txt").read_text() == "x"


def test_the_real_data_check_notices_the_fixture_appearing(tmp_path):
    """Without the 7-Scenes fixture the check is a recorded skip; when the fixture appears, Snakemake
    reruns the check (and the report), nothing else."""
    ws = _workspace(tmp_path, {"experiment": {"methods": ["scratch", "ponderv2"], "protocols": ["probe"]},
                               "data": {"sevenscenes": {"root": "fixture/7scenes"}}})
    ws.snakemake()
    assert any(j.startswith("real_check") for j in ws.jobs())
    assert ws.planned() == {}
    (ws.wd / "fixture/7scenes").mkdir(parents=True)
    assert ws.planned() == {"real_check": 1, "report": 1}


def test_recording_in_dvc_leaves_snakemakes_files_untouched(tmp_path):
    """Recording a Snakemake run in dvc.lock must not rewrite the outputs: re-copied from DVC's cache
    they got new modification times, and Snakemake then saw inputs newer than outputs (README run)."""
    ws = _workspace(tmp_path, {"experiment": {"methods": ["scratch"], "protocols": ["probe"]}})
    ws.env["PRETRAIN3D_NO_DVC_RECORD"] = "1"
    ws.snakemake()
    outputs = [p for d in ("results", "data") for p in (ws.wd / d).rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert ws.dvc_changed()  # not recorded yet
    del ws.env["PRETRAIN3D_NO_DVC_RECORD"]
    code = ("from pretrain3d.config import load_config; from pretrain3d.workflow.steps import active_steps; "
            "from pretrain3d.workflow.sync import record_dvc_stages; cfg = load_config('params.yaml'); "
            "done = {o for s, jobs in active_steps(cfg) for w in jobs for o in s.outputs(cfg, w).values()}; "
            "print(len(record_dvc_stages(cfg, done)))")
    assert int(ws.run(sys.executable, "-c", code).stdout.split()[-1]) > 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert ws.dvc_changed() == set() and ws.planned() == {}


def test_one_pretraining_per_method_initialises_every_seed_unless_per_seed():
    """Default (the papers' protocol): one pre-training per method, seed 0's backbone under every
    fine-tuning seed; configs/embedded/extras.yaml pre-trains per seed and adds what the default leaves out."""
    from pretrain3d.workflow.steps import pretrain_jobs, query_jobs, study_variants

    cfg = load_config(REPO / "params.yaml")
    methods, seeds = cfg.experiment.methods, cfg.experiment.seeds
    assert len(seeds) == 3 and not cfg.experiment.pretrain_per_seed
    assert pretrain_jobs(cfg) == [{"method": m, "seed": "0"} for m in methods]
    finetune = STEPS["finetune"]
    for s in seeds:
        w = {"method": "ppkt", "protocol": "la", "seed": str(s)}
        assert finetune.inputs(cfg, w)["backbone"].endswith("/pretrain/ppkt/seed0/backbone.pt")
    assert {w["seed"] for w in query_jobs(cfg)} == {"0"}

    extras = load_config(REPO / "params.yaml", REPO / "configs" / "embedded" / "extras.yaml")
    assert extras.experiment.name != cfg.experiment.name  # its outputs never stand in for the default run's
    jobs = pretrain_jobs(extras)
    assert len(jobs) == len(methods) * len(seeds) + 2
    assert {"method": "ponderv2_ppt", "seed": "0"} in jobs
    w = {"method": "ppkt", "protocol": "la", "seed": "2"}
    assert finetune.inputs(extras, w)["backbone"].endswith("/pretrain/ppkt/seed2/backbone.pt")
    assert {w["seed"] for w in query_jobs(extras) if w["source"] == "ppkt"} == {"0", "1", "2"}
    assert any(v.startswith("single_language-") for v in study_variants(extras))
    assert not any(v.startswith("single_language-") for v in study_variants(cfg))
