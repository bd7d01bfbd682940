"""Paper references: the data file validates, reference runs are idempotent, the report lists them."""

from __future__ import annotations

import json
import sqlite3
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pretrain3d.cli import main
from pretrain3d.config import validate_config
from pretrain3d.errors import DataError
from pretrain3d.stages.references import log_references
from pretrain3d.stages.report import paper_references_section, report
from pretrain3d.tracking import mlflow_runs
from pretrain3d.tracking.references import _tags as _ref_tags
from pretrain3d.tracking.references import default_path, load_references, log_reference_runs


def test_packaged_file_validates_with_provenance():
    refs = load_references()
    assert len(refs.references) >= 20
    for r in refs.references:
        assert r.location and r.paper in refs.papers
        assert 0.0 <= r.logged_value <= 1.0  # our evaluations log fractions
        assert r.verified == (r.provenance in ("paper", "readme", "code"))
    by_id = {r.id: r for r in refs.references}
    pv2 = by_id["ponderv2-scannet-val-miou"]
    assert (pv2.value, pv2.provenance, pv2.uses_gt_labels) == (77.0, "readme", True)
    assert pv2.logged_value == pytest.approx(0.77)
    assert not by_id["ppkt-s3dis-area5-full-miou"].verified  # read via a summary, not the PDF


def test_metric_keys_are_the_ones_our_evaluation_logs():
    from pretrain3d.stages.evaluate import METRIC_PREFIX

    refs = load_references()
    val = [r for r in refs.references if r.split == "val"]
    assert {r.metric_key for r in val} <= {f"{METRIC_PREFIX}/{k}" for k in ("mIoU", "mAcc", "allAcc")}


def test_file_ships_in_the_package():
    assert default_path().is_file()
    patterns = __import__("tomllib").loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["pretrain3d"]
    rel = default_path().relative_to(REPO / "src" / "pretrain3d").as_posix()
    assert any(fnmatch(rel, p.replace("**/", "*")) for p in patterns), (rel, patterns)


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "refs.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _minimal(n: int = 2) -> dict:
    base = dict(paper="p", method="ppkt", backbone="SR-UNet34", dataset="s3dis", split="val", protocol="full",
                metric="mIoU", provenance="readme", location="README table")
    return {"version": 1, "papers": {"p": {"title": "A paper", "arxiv": "2104.04687"}},
            "references": [{**base, "id": f"r{i}", "value": 60.0 + i} for i in range(n)]}


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d["references"].append(dict(d["references"][0])), "duplicate reference id"),
    (lambda d: d["references"][0].update(paper="nope"), "not under `papers`"),
    (lambda d: d["references"][0].update(value=130.0), "outside"),
    (lambda d: d["references"][0].update(colour="red"), "references.0.colour"),
    (lambda d: d["references"][0].update(provenance="blog"), "references.0.provenance"),
    (lambda d: d["references"][0].pop("location"), "references.0.location"),
])
def test_invalid_files_name_the_file_and_the_problem(tmp_path, mutate, expect):
    data = _minimal()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(DataError) as e:
        load_references(path)
    assert str(path) in str(e.value) and expect in str(e.value)


def test_broken_yaml_is_a_data_error(tmp_path):
    p = tmp_path / "refs.yaml"
    p.write_text("references: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_references(p)


def _reference_runs(db: Path) -> dict[str, dict]:
    con = sqlite3.connect(db)
    live = {r for (r,) in con.execute("select run_uuid from runs where lifecycle_stage = 'active'")}
    tags: dict[str, dict] = {}
    for run, key, value in con.execute("select run_uuid, key, value from tags"):
        if run in live:
            tags.setdefault(run, {})[key] = value
    metrics: dict[str, dict] = {}
    for run, key, value in con.execute("select run_uuid, key, value from latest_metrics"):
        metrics.setdefault(run, {})[key] = value
    return {t["reference_id"]: {"tags": t, "metrics": metrics.get(r, {})}
            for r, t in tags.items() if t.get("run_type") == "reference"}


def test_reference_runs_are_logged_once_and_kept_in_sync(tmp_path):
    tracking = validate_config({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                             "artifact_root": str(tmp_path / "art")}}).tracking
    data = _minimal(3)
    path = _write(tmp_path, data)
    assert log_reference_runs(load_references(path), tracking) == {"created": 3, "unchanged": 0, "deleted": 0}
    assert log_reference_runs(load_references(path), tracking) == {"created": 0, "unchanged": 3, "deleted": 0}
    runs = _reference_runs(tmp_path / "mlflow.db")
    assert sorted(runs) == ["r0", "r1", "r2"]
    r0 = runs["r0"]
    assert r0["metrics"]["val/mIoU"] == pytest.approx(0.60)
    for key, value in {"method": "ppkt", "dataset": "s3dis", "protocol": "full", "split": "val", "source": "readme",
                       "verified": "true", "paper": "A paper", "value_as_printed": "60 %"}.items():
        assert r0["tags"][key] == value
    # grouped under one parent of their own (not a pipeline's), named to sort with our runs
    parent = r0["tags"]["mlflow.parentRunId"]
    assert {r["tags"]["mlflow.parentRunId"] for r in runs.values()} == {parent}
    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("select name, status from runs where run_uuid = ?", (parent,)).fetchone() == (
        "references/papers", "FINISHED")
    assert r0["tags"]["mlflow.runName"] == "ref/ppkt/full/r0"
    assert r0["metrics"]["full/ppkt/miou_mean"] == pytest.approx(0.60)  # the key of a pipeline's summary
    # a corrected value replaces its run; a removed entry's run goes
    data["references"][1]["value"] = 65.5
    data["references"].pop(2)
    assert log_reference_runs(load_references(_write(tmp_path, data)), tracking) == {
        "created": 1, "unchanged": 1, "deleted": 2}
    runs = _reference_runs(tmp_path / "mlflow.db")
    assert sorted(runs) == ["r0", "r1"] and runs["r1"]["metrics"]["val/mIoU"] == pytest.approx(0.655)


def test_reference_runs_of_an_older_store_move_under_the_parent(tmp_path):
    """Reference runs logged before they were grouped (top-level, `ref-<id>`, one metric) are kept,
    moved under the parent, renamed and given the summary key; the parent is made once."""
    import mlflow

    tracking = validate_config({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                             "artifact_root": str(tmp_path / "art")}}).tracking
    refs = load_references(_write(tmp_path, _minimal(2)))
    exp = mlflow_runs.setup(tracking)
    client = mlflow.MlflowClient()
    for ref in refs.references:  # what the previous version of log_reference_runs made
        run = client.create_run(exp, run_name=f"ref-{ref.id}", tags=_ref_tags(refs, ref))
        client.log_metric(run.info.run_id, ref.metric_key, ref.logged_value)
    assert log_reference_runs(refs, tracking) == {"created": 0, "unchanged": 2, "deleted": 0}
    assert log_reference_runs(refs, tracking) == {"created": 0, "unchanged": 2, "deleted": 0}
    runs = _reference_runs(tmp_path / "mlflow.db")
    assert len({r["tags"].get("mlflow.parentRunId") for r in runs.values()} - {None}) == 1
    assert all("mlflow.parentRunId" in r["tags"] for r in runs.values())
    assert runs["r1"]["tags"]["mlflow.runName"] == "ref/ppkt/full/r1"
    assert runs["r1"]["metrics"]["full/ppkt/miou_mean"] == pytest.approx(0.61)
    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("select count(*) from runs where name = 'references/papers'").fetchone() == (1,)


def test_stage_writes_the_table_and_the_report_lists_it(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("tracking:\n  enabled: false\n")
    out = tmp_path / "references.json"
    assert main(["log-references", "--config", str(p), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    first = table["references"][0]
    assert {"id", "method", "dataset", "split", "protocol", "metric", "value", "printed", "provenance", "location",
            "metric_key", "logged_value", "paper_title"} <= set(first)
    # deterministic: a rerun writes the same bytes
    before = out.read_bytes()
    log_references(validate_config({"tracking": {"enabled": False}}), out)
    assert out.read_bytes() == before

    metrics = []
    for method, miou in (("scratch", 0.40), ("ppkt", 0.45)):
        m = tmp_path / method / "metrics.json"
        m.parent.mkdir()
        m.write_text(json.dumps({"method": method, "protocol": "full", "seed": 0, "mIoU": miou, "mAcc": 0.5,
                                 "allAcc": 0.8, "iou_per_class": {"wall": miou}}))
        metrics.append(str(m))
    cfg = validate_config({"tracking": {"enabled": False}})
    report(cfg, metrics, tmp_path / "results", references=out)
    text = (tmp_path / "results" / "report.md").read_text()
    section = text[text.index("## Paper references"):]
    assert "Not comparable" in section and "`synthetic`" in section
    assert "| ponderv2 | SpUNet-v1m3 (PDNorm) | scannet | val / full labels | mIoU | 77 % |" in section
    assert "*verify*" in section  # secondary numbers are flagged
    assert "Ours beside the papers" not in section


def test_side_by_side_when_the_dataset_matches():
    refs = json.loads(json.dumps({"references": [
        {"id": "a", "method": "ppkt", "backbone": "b", "dataset": "s3dis", "split": "val", "protocol": "full",
         "metric": "mIoU", "printed": "68.28 %", "provenance": "secondary", "location": "t", "verified": False},
        {"id": "b", "method": "ponderv2", "backbone": "b", "dataset": "scannet", "split": "val",
         "protocol": "full", "metric": "mIoU", "printed": "77 %", "provenance": "readme", "location": "t",
         "verified": True, "url": "https://example.org"}]}))["references"]
    summary = {"groups": {"ppkt/full": {"mIoU_mean": 0.5, "mIoU_std": 0.01, "n_seeds": 3}}}
    cfg = validate_config({"data": {"dataset": "s3dis", "num_classes": 13}})
    text = paper_references_section(refs, summary, cfg)
    assert "Not comparable" not in text and "### Ours beside the papers (s3dis, val split)" in text
    side = text[text.index("### Ours beside"):]
    assert "| ppkt | b | full labels | mIoU | 68.28 % | 50.00 ± 1.00 (3) | secondary |" in side
    assert "ponderv2" not in side  # another dataset
    assert "[readme: t](https://example.org)" in text
