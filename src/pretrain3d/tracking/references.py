"""Paper reference numbers: the validated data file, and MLflow reference runs made from it.

Each entry becomes one MLflow run tagged ``run_type=reference`` whose metric has the same key and
unit as our evaluation runs (``val/mIoU`` as a fraction) and as the summary on a pipeline's parent
run (``full/ppkt/miou_mean``), so the MLflow UI charts and compares papers and our runs together.
The reference runs are children of one parent run, ``references/papers``, not a page of top-level
rows. Logging is idempotent: a run is found by its ``reference_id`` tag and replaced only when the
entry's content changed; runs of entries removed from the file are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

PACKAGED = "paper_references.yaml"
RUN_TYPE = "reference"
PARENT_NAME = "references/papers"
PARENT_KEY = "paper-references"
# Only these were read from the primary source; "secondary" numbers must be checked before scoring.
VERIFIED_PROVENANCE = ("paper", "readme", "code")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paper(_Strict):
    title: str
    arxiv: str | None = Field(None, pattern=r"^\d{4}\.\d{4,5}$")
    url: str | None = None

    @property
    def link(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else self.url


class PaperReference(_Strict):
    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$", description="Stable key of the MLflow reference run.")
    paper: str = Field(..., description="Key into `papers`.")
    method: Literal["scratch", "ppkt", "ponderv2", "condense", "ppt"] = Field(
        ..., description="Our method name, so reports can set the number beside our run of the same method.")
    backbone: str
    dataset: Literal["scannet", "scannet200", "s3dis", "nuscenes", "semantickitti", "voc2012", "ade20k"]
    split: Literal["val", "test"] = Field(..., description="Also the metric key prefix (val/mIoU, like our runs).")
    split_detail: str = ""
    protocol: Literal["full", "la", "lr", "probe"] = Field(
        ..., description="Our protocol names: full labels, limited annotations, limited reconstructions "
        "(a fraction of the training scenes/scans), linear probe.")
    protocol_detail: str = ""
    metric: Literal["mIoU", "mAcc", "allAcc"]
    value: float = Field(..., description="As printed in the source.")
    unit: Literal["percent", "fraction"] = "percent"
    provenance: Literal["paper", "readme", "code", "issue", "secondary"]
    location: str = Field(..., min_length=1, description="Table/page, or file and commit, where the value is.")
    url: str | None = Field(None, description="Where the value was read, if not the paper itself (README, code).")
    uses_gt_labels: bool = Field(False, description="GT labels were used before fine-tuning (not self-supervised).")
    notes: str = ""

    @model_validator(mode="after")
    def _range(self) -> "PaperReference":
        top = 100.0 if self.unit == "percent" else 1.0
        if not 0.0 <= self.value <= top:
            raise ValueError(f"value {self.value} is outside [0, {top}] for unit {self.unit!r}")
        return self

    @property
    def metric_key(self) -> str:
        return f"{self.split}/{self.metric}"

    @property
    def logged_value(self) -> float:
        """The value in our evaluation's unit (a fraction): the one place units are converted."""
        return self.value / 100.0 if self.unit == "percent" else self.value

    @property
    def printed(self) -> str:
        return f"{self.value:g}{' %' if self.unit == 'percent' else ''}"

    @property
    def verified(self) -> bool:
        return self.provenance in VERIFIED_PROVENANCE

    def content_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ReferenceFile(_Strict):
    version: Literal[1] = 1
    papers: dict[str, Paper]
    references: list[PaperReference] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "ReferenceFile":
        ids = [r.id for r in self.references]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate reference id(s) {dup}")
        unknown = sorted({r.paper for r in self.references} - set(self.papers))
        if unknown:
            raise ValueError(f"reference(s) name paper(s) {unknown} that are not under `papers`")
        return self

    def record(self, ref: PaperReference) -> dict:
        """A flat, JSON-ready row: the entry plus its paper, metric key and logged value."""
        paper = self.papers[ref.paper]
        return {**ref.model_dump(mode="json"), "paper_title": paper.title, "arxiv": paper.arxiv,
                "url": ref.url or paper.link, "code_url": paper.url, "metric_key": ref.metric_key,
                "logged_value": ref.logged_value,
                "printed": ref.printed, "verified": ref.verified, "content_hash": ref.content_hash()}


def default_path() -> Path:
    return Path(str(resources.files("pretrain3d.tracking").joinpath(PACKAGED)))


def load_references(path: str | Path | None = None) -> ReferenceFile:
    path = Path(path) if path is not None else default_path()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise DataError(path, f"cannot read the paper reference file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise DataError(path, f"not valid YAML: {err}") from None
    try:
        return ReferenceFile.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
        raise DataError(path, f"invalid paper reference file: {problems}",
                        "see pretrain3d.tracking.references.PaperReference for the fields") from None


# ----------------------------------------------------------------------------- MLflow
def _tags(refs: ReferenceFile, ref: PaperReference) -> dict[str, str]:
    paper = refs.papers[ref.paper]
    tags = {
        "run_type": RUN_TYPE, "reference_id": ref.id, "reference_hash": ref.content_hash(),
        "method": ref.method, "backbone": ref.backbone, "dataset": ref.dataset, "split": ref.split,
        "protocol": ref.protocol, "metric": ref.metric, "source": ref.provenance, "verified": str(ref.verified).lower(),
        "paper": paper.title, "paper_table_ref": ref.location, "value_as_printed": ref.printed,
        "uses_gt_labels": str(ref.uses_gt_labels).lower(),
    }
    for key, value in (("arxiv", paper.arxiv), ("url", ref.url or paper.link), ("code_url", paper.url),
                       ("split_detail", ref.split_detail),
                       ("protocol_detail", ref.protocol_detail)):
        if value:
            tags[key] = value
    note = f"{paper.title} — {ref.location}."
    if ref.notes:
        note += f" {ref.notes}"
    tags["mlflow.note.content"] = note  # the description shown in the MLflow UI
    return {k: str(v)[:5000] for k, v in tags.items()}


def run_name(ref: PaperReference) -> str:
    """``ref/ppkt/full/<id>``: sorts and filters like our ``finetune/ppkt/la/seed0``."""
    return f"ref/{ref.method}/{ref.protocol}/{ref.id}"


def _existing(client, exp_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.run_type = '{RUN_TYPE}'", max_results=1000,
                                  page_token=token)
        for run in page:
            found.setdefault(run.data.tags.get("reference_id", ""), []).append(run)
        token = page.token
        if not token:
            return found


def log_reference_runs(refs: ReferenceFile, tracking_cfg, root: str | Path = ".") -> dict[str, int]:
    """Make the store's reference runs match ``refs``; returns counts of created/unchanged/deleted runs."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from pretrain3d.tracking.mlflow_runs import find_or_create_parent, setup, summary_key

    exp_id = setup(tracking_cfg, root)
    client = MlflowClient()
    parent = find_or_create_parent(tracking_cfg, PARENT_KEY, PARENT_NAME,
                                   {"run_type": "reference_group", "mlflow.note.content":
                                    "Published numbers from src/pretrain3d/tracking/paper_references.yaml, one "
                                    "child run each, under the metric keys of our runs."}, root=root)
    if client.get_run(parent).info.status != "FINISHED":
        client.set_terminated(parent, "FINISHED")
    existing = _existing(client, exp_id)
    counts = {"created": 0, "unchanged": 0, "deleted": 0}
    for ref in refs.references:
        runs = existing.pop(ref.id, [])
        keep = next((r for r in runs if r.data.tags.get("reference_hash") == ref.content_hash()), None)
        for r in runs:
            if r is not keep:  # an outdated version of the entry, or a duplicate left by a concurrent run
                client.delete_run(r.info.run_id)
                counts["deleted"] += 1
        name, now = run_name(ref), int(time.time() * 1000)
        # the evaluation's key (val/mIoU) and the pipeline summary's key (full/ppkt/miou_mean)
        metrics = {ref.metric_key: ref.logged_value,
                   summary_key(ref.protocol, ref.method, f"{ref.metric}_mean"): ref.logged_value}
        if keep is not None:
            if keep.data.tags.get("mlflow.parentRunId") != parent or keep.info.run_name != name:
                # a run logged before references were grouped: move it under the parent, rename it
                client.set_tag(keep.info.run_id, "mlflow.parentRunId", parent)
                client.set_tag(keep.info.run_id, "mlflow.runName", name)
            missing = [Metric(k, v, now, 0) for k, v in metrics.items() if k not in keep.data.metrics]
            if missing:
                client.log_batch(keep.info.run_id, metrics=missing)
            counts["unchanged"] += 1
            continue
        run = client.create_run(exp_id, run_name=name, tags={**_tags(refs, ref), "mlflow.parentRunId": parent})
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
        counts["created"] += 1
    for runs in existing.values():  # entries no longer in the file
        for r in runs:
            client.delete_run(r.info.run_id)
            counts["deleted"] += 1
    return counts
