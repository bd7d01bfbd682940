"""The files of one scan folder of the official ScanNet v2 release, and their readers: the names
(``ScanFiles``), the axis alignment (``<id>.txt``), the label table (tsv), the over-segmentation
(``*.segs.json``), the object groups (``*.aggregation.json``) with the per-vertex labels they give,
and the NYU40 labels PLY. ``scannet`` turns what they read into processed scenes."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pretrain3d.data.ply import read_ply_vertices
from pretrain3d.errors import DataError

LABELS_TSV = "scannetv2-labels.combined.tsv"


# ------------------------------------------------------------------------------- file names


@dataclass(frozen=True)
class ScanFiles:
    """The official file names of one scan folder."""

    dir: Path
    scene_id: str

    @property
    def mesh(self) -> Path:
        return self.dir / f"{self.scene_id}_vh_clean_2.ply"

    @property
    def labels(self) -> Path:
        return self.dir / f"{self.scene_id}_vh_clean_2.labels.ply"

    @property
    def segs(self) -> Path:
        return self.dir / f"{self.scene_id}_vh_clean_2.0.010000.segs.json"

    @property
    def aggregation(self) -> Path:
        return self.dir / f"{self.scene_id}.aggregation.json"

    @property
    def info(self) -> Path:
        return self.dir / f"{self.scene_id}.txt"

    @property
    def sens(self) -> Path:
        return self.dir / f"{self.scene_id}.sens"


# ------------------------------------------------------------------------------------ readers


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON (truncated or corrupt: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_axis_alignment(path: str | Path) -> np.ndarray | None:
    """The 4x4 ``axisAlignment`` of a scan's ``<id>.txt`` (row-major), or None if it has none."""
    path = Path(path)
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "axisAlignment":
            try:
                m = np.array([float(v) for v in value.split()], dtype=np.float64)
            except ValueError as e:
                raise DataError(path, f"axisAlignment is not numeric ({e})") from e
            if m.size != 16 or not np.all(np.isfinite(m)):
                raise DataError(path, f"axisAlignment must be 16 finite numbers, got {m.size}: {value.strip()[:80]}")
            return m.reshape(4, 4)
    return None


def read_label_table(path: str | Path) -> dict[str, tuple[int, int | None]]:
    """``scannetv2-labels.combined.tsv`` as {raw_category: (nyu40id, ScanNet id or None)}.

    The first row of a category wins (as a pandas lookup would). The ``id`` column (ScanNet200
    ids) is optional; without it no segment200 can be made.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "label table not found", f"ScanNet ships it as {LABELS_TSV} at the top of the release")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.DictReader(f, delimiter="\t")
        missing = [c for c in ("raw_category", "nyu40id") if c not in (rows.fieldnames or [])]
        if missing:
            raise DataError(path, f"label table lacks columns {missing} (has {rows.fieldnames})",
                            "expected ScanNet's tab-separated scannetv2-labels.combined.tsv")
        has_id = "id" in rows.fieldnames
        table: dict[str, tuple[int, int | None]] = {}
        for line_no, row in enumerate(rows, start=2):
            try:
                nyu = int(row["nyu40id"])
                sid = int(row["id"]) if has_id else None
            except (TypeError, ValueError):
                raise DataError(path, f"line {line_no}: nyu40id/id is not an integer "
                                      f"({row.get('nyu40id')!r}, {row.get('id')!r})") from None
            if not 0 <= nyu <= 40:
                raise DataError(path, f"line {line_no}: nyu40id {nyu} outside [0, 40]")
            table.setdefault(row["raw_category"], (nyu, sid))
    if not table:
        raise DataError(path, "label table has no rows")
    return table


def read_segments(path: str | Path, num_vertices: int) -> np.ndarray:
    """``segIndices`` of a ``*.segs.json`` as (N,) int64, checked against the mesh vertex count."""
    path = Path(path)
    obj = _read_json(path)
    if "segIndices" not in obj:
        raise DataError(path, f"no 'segIndices' key (keys: {sorted(obj)[:10]})")
    try:
        seg = np.asarray(obj["segIndices"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(path, f"segIndices must be a list of integers ({e})") from e
    if seg.ndim != 1 or len(seg) != num_vertices:
        raise DataError(path, f"segIndices has {seg.size} entries but the mesh has {num_vertices} vertices",
                        "segments must come from the same _vh_clean_2 mesh")
    return seg


@dataclass
class SegGroup:
    object_id: int
    label: str
    segments: np.ndarray


def read_aggregation(path: str | Path) -> list[SegGroup]:
    """The ``segGroups`` of an ``*.aggregation.json`` (objectId, falling back to id)."""
    path = Path(path)
    obj = _read_json(path)
    groups = obj.get("segGroups")
    if not isinstance(groups, list):
        raise DataError(path, "no 'segGroups' list")
    out = []
    for j, g in enumerate(groups):
        if not isinstance(g, dict) or "segments" not in g or "label" not in g:
            raise DataError(path, f"segGroups[{j}] lacks 'segments' or 'label'")
        oid = g.get("objectId", g.get("id"))
        try:
            out.append(SegGroup(int(oid), str(g["label"]), np.asarray(g["segments"], dtype=np.int64).reshape(-1)))
        except (TypeError, ValueError) as e:
            raise DataError(path, f"segGroups[{j}]: objectId/segments are not integers ({e})") from e
    return out


@dataclass
class AggregationLabels:
    nyu40: np.ndarray | None  # (N,) NYU40 ids, 0 = no group / unknown category
    scannet_id: np.ndarray | None  # (N,) tsv `id`, 0 = none
    instance: np.ndarray  # (N,) objectId, -1 = none
    unknown_categories: list[str]


def aggregation_labels(seg_indices: np.ndarray, groups: Sequence[SegGroup],
                       table: dict[str, tuple[int, int | None]] | None) -> AggregationLabels:
    """Per-vertex labels from the segment groups; a later group overwrites an earlier one."""
    n = len(seg_indices)
    instance = np.full(n, -1, dtype=np.int64)
    nyu40 = np.zeros(n, dtype=np.int64) if table is not None else None
    sid = np.zeros(n, dtype=np.int64) if table is not None else None
    has_id = table is not None and all(v[1] is not None for v in table.values())
    unknown = set()
    for g in groups:
        mask = np.isin(seg_indices, g.segments)
        instance[mask] = g.object_id
        if table is not None:
            nyu, i200 = table.get(g.label, (0, 0))
            if g.label not in table:
                unknown.add(g.label)
            nyu40[mask] = nyu
            sid[mask] = i200 or 0
    return AggregationLabels(nyu40, sid if has_id else None, instance, sorted(unknown))


def read_nyu40_ply(path: str | Path, num_vertices: int) -> np.ndarray:
    """The ``label`` property of a ``*_vh_clean_2.labels.ply`` as (N,) int64 (NYU40 ids; values
    outside 0..40 are kept, and map to -1 like every non-benchmark id)."""
    path = Path(path)
    labels = np.asarray(read_ply_vertices(path, required=("label",), check_finite=False)["label"])
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(path, f"labels must be integers, got dtype {labels.dtype} with fractional values")
    if len(labels) != num_vertices:
        raise DataError(path, f"label PLY has {len(labels)} vertices but the mesh PLY has {num_vertices}",
                        "the two files must have the same vertices in the same order")
    return labels.astype(np.int64)
