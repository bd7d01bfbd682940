"""S3DIS ingestion (``Stanford3dDataset_v1.2_Aligned_Version``) into processed scenes.

Raw layout::

    <root>/Area_<n>/<room>/Annotations/<class>_<k>.txt    one object; lines `x y z r g b`

A room is the concatenation of its annotation files in sorted name order (as Pointcept does):
``segment`` = index of ``<class>`` in the 13 classes (an unknown class such as ``stairs``
becomes clutter), ``instance`` = position of the file in that order. Coordinates are parsed as
float64 and stored as float32, colours as uint8. The release has no normals: they are
estimated from the points (PCA over 16 neighbours, facing the room centre).

Malformed lines (the public release has a stray NUL byte in Area_5/hallway_6 ceiling_1.txt
line 180389: ``185\\x00187``) follow a policy: ``repair`` turns a stray non-numeric byte into a
separator, or drops it, when that yields exactly one valid ``x y z r g b`` line, and skips the
line otherwise; ``skip`` skips every malformed line; ``error`` raises. Every repaired or
skipped line is recorded (file, line number, text) in the room's meta.json and the manifest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from pretrain3d.atomic import atomic_dir, write_json
from pretrain3d.data.labels import S3DIS_NAMES  # the class list lives with the other label tables
from pretrain3d.data.parallel import remove_stale_temporaries, run_jobs
from pretrain3d.data.scene import ProcessedScene, estimate_normals, hash_scenes, write_scene_files
from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

RELEASE_DIR = "Stanford3dDataset_v1.2_Aligned_Version"
LinePolicy = Literal["repair", "skip", "error"]

_NUMERIC = b"0123456789+-.eE \t\r\n"
_DELETE_NUMERIC = bytes(range(256)).translate(None, _NUMERIC)  # every byte a number line cannot hold
_NAME_RE = re.compile(r"^([A-Za-z]+)_(\d+)$")


# ------------------------------------------------------------------------------------ lines


def _parse_line(line: bytes) -> list[float] | None:
    """The six values of a valid `x y z r g b` line (finite coords, integer colours 0-255)."""
    parts = line.split()
    if len(parts) != 6:
        return None
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        return None
    if not all(np.isfinite(vals[:3])) or any(not (0 <= c <= 255 and c == int(c)) for c in vals[3:]):
        return None
    return vals


def repair_line(line: bytes) -> list[float] | None:
    """Values of a line whose only fault is stray non-numeric bytes, or None.

    A stray byte usually stands for a lost separator (``185\\x00187``) and sometimes sits inside a
    number (``103.0\\x100000``): try it as a separator first, then removed.
    """
    if not line.translate(None, _NUMERIC):
        return None  # nothing stray: a wrong column count or a bad number cannot be recovered
    as_space = bytes(b if b in _NUMERIC else 0x20 for b in line)
    return _parse_line(as_space) or _parse_line(line.translate(None, _DELETE_NUMERIC))


@dataclass
class LineIssue:
    file: str
    line: int
    text: str
    action: str  # "repaired" | "skipped"
    values: list[float] | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_object_file(path: str | Path, policy: LinePolicy = "repair",
                      label: str | None = None) -> tuple[np.ndarray, np.ndarray, list[LineIssue]]:
    """(xyz (n,3) float64, rgb (n,3) uint8, issues) of one annotation file."""
    path = Path(path)
    label = label or path.name
    raw = path.read_bytes()
    if not raw.translate(None, _NUMERIC):  # only number characters: numpy's fast parser
        try:
            arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
            if arr.shape[1] == 6 and _all_valid(arr):
                return arr[:, :3].copy(), arr[:, 3:].astype(np.uint8), []
        except ValueError:
            pass  # a malformed line: find it below
    rows, issues = [], []
    for no, line in enumerate(raw.split(b"\n"), start=1):
        line = line.strip(b" \t\r")
        if not line:
            continue
        vals = _parse_line(line)
        if vals is not None:
            rows.append(vals)
            continue
        text = line.decode("latin-1")[:120]
        if policy == "error":
            raise DataError(path, f"line {no}: malformed point {text!r} (expected 'x y z r g b')",
                            "data.s3dis.malformed_lines: repair or skip to continue")
        vals = repair_line(line) if policy == "repair" else None
        if vals is not None:
            rows.append(vals)
            issues.append(LineIssue(label, no, text, "repaired", vals))
        else:
            issues.append(LineIssue(label, no, text, "skipped"))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return arr[:, :3].copy(), arr[:, 3:].astype(np.uint8), issues


def _all_valid(arr: np.ndarray) -> bool:
    rgb = arr[:, 3:]
    return bool(np.isfinite(arr[:, :3]).all() and ((rgb >= 0) & (rgb <= 255) & (rgb == np.round(rgb))).all())


# ------------------------------------------------------------------------------------ rooms


def find_release_root(raw_root: str | Path) -> Path:
    """The folder holding Area_1 ... (raw_root itself or its Stanford3dDataset_* child)."""
    raw_root = Path(raw_root)
    for cand in (raw_root, raw_root / RELEASE_DIR):
        if cand.is_dir() and any(cand.glob("Area_*")):
            return cand
    raise DataError(raw_root, "no Area_<n> folders found",
                    f"data.raw_root must be the {RELEASE_DIR} folder (or its parent)")


def list_rooms(root: str | Path) -> list[tuple[int, Path]]:
    """(area number, room folder) of every room with an Annotations folder, sorted."""
    rooms = []
    for area_dir in sorted(Path(root).glob("Area_*")):
        m = re.fullmatch(r"Area_(\d+)", area_dir.name)
        if m and area_dir.is_dir():
            rooms += [(int(m.group(1)), d) for d in sorted(area_dir.iterdir()) if (d / "Annotations").is_dir()]
    return rooms


@dataclass
class RoomRecord:
    issues: list[LineIssue] = field(default_factory=list)
    relabelled: dict[str, str] = field(default_factory=dict)  # file -> class used
    odd_names: list[str] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)


def read_room(room_dir: str | Path, policy: LinePolicy = "repair"):
    """(coord f32, color u8, segment i64, instance i64, RoomRecord) of one room folder."""
    room_dir = Path(room_dir)
    ann = room_dir / "Annotations"
    files = sorted(p for p in ann.glob("*.txt") if p.is_file())
    if not files:
        raise DataError(ann, "no annotation files (<class>_<k>.txt)")
    rec = RoomRecord()
    xyz, rgb, seg, inst = [], [], [], []
    for obj_id, f in enumerate(files):
        rel = f"{room_dir.parent.name}/{room_dir.name}/Annotations/{f.name}"
        name = f.stem.split("_")[0]
        if not _NAME_RE.match(f.stem):
            rec.odd_names.append(rel)
        cls = name if name in S3DIS_NAMES else "clutter"
        if cls != name:
            rec.relabelled[rel] = cls
        p, c, issues = parse_object_file(f, policy, rel)
        rec.issues += issues
        if not len(p):
            rec.empty_files.append(rel)
            continue
        xyz.append(p)
        rgb.append(c)
        seg.append(np.full(len(p), S3DIS_NAMES.index(cls), dtype=np.int64))
        inst.append(np.full(len(p), obj_id, dtype=np.int64))
    if not xyz:
        raise DataError(ann, "every annotation file is empty")
    coord = np.concatenate(xyz).astype(np.float32)
    return coord, np.concatenate(rgb), np.concatenate(seg), np.concatenate(inst), rec


def room_scene_id(room_dir: Path) -> str:
    return f"{room_dir.parent.name}_{room_dir.name}"  # Area_5_hallway_6, as PointNet names rooms


def ingest_room(room_dir: str | Path, out_dir: str | Path, policy: LinePolicy = "repair") -> dict:
    room_dir = Path(room_dir)
    coord, color, segment, instance, rec = read_room(room_dir, policy)
    meta = {
        "dataset": "s3dis", "area": room_dir.parent.name, "room": room_dir.name, "num_points": len(coord),
        "malformed_lines": policy, "line_issues": [i.to_json() for i in rec.issues],
        "relabelled_as_clutter": rec.relabelled, "unexpected_file_names": rec.odd_names,
        "empty_files": rec.empty_files, "normals": "estimated: PCA over 16 neighbours, facing the room centre",
    }
    scene = ProcessedScene(room_scene_id(room_dir), coord, color, estimate_normals(coord), segment, instance,
                           meta=meta)
    scene.validate(source=room_dir, num_classes=len(S3DIS_NAMES))
    with atomic_dir(out_dir) as tmp:
        write_scene_files(tmp, scene)
    for i in rec.issues:
        log.warning("%s line %d: %s %r", i.file, i.line, i.action, i.text)
    return {
        "num_points": int(len(coord)), "num_frames": 0, "ignored_points": 0,
        "class_histogram": np.bincount(segment, minlength=len(S3DIS_NAMES)).tolist(),
        "line_issues": meta["line_issues"],
    }


def preprocess_s3dis(raw_root: str | Path, out_root: str | Path, val_area: int = 5,
                     policy: LinePolicy = "repair", workers: int = 1, progress: bool = True,
                     areas: Sequence[int] | None = None) -> dict:
    """Every room of ``areas`` (default all) → ``out_root/{train,val}/Area_<n>_<room>``: the
    ``val_area`` rooms form val, the rest train. Writes and returns manifest.json."""
    root = find_release_root(raw_root)
    out_root = Path(out_root)
    rooms = [(a, d) for a, d in list_rooms(root) if areas is None or a in areas]
    if not rooms:
        raise DataError(root, f"no rooms with Annotations/ found (areas {list(areas) if areas else 'all'})")
    split = {d: "val" if a == val_area else "train" for a, d in rooms}
    out_dirs = [out_root / split[d] / room_scene_id(d) for _, d in rooms]
    remove_stale_temporaries(out_dirs)
    stats = run_jobs(ingest_room, [(str(d), str(o), policy) for (_, d), o in zip(rooms, out_dirs)],
                     workers, "ingest S3DIS", progress)
    manifest: dict = {"dataset": "s3dis", "num_classes": len(S3DIS_NAMES), "class_names": list(S3DIS_NAMES),
                      "val_area": val_area, "malformed_lines": policy, "splits": {}, "scenes": {},
                      "class_histogram": {}, "ignored_points": {}, "line_issues": []}
    for (_, d), o, st in zip(rooms, out_dirs, stats):
        s = split[d]
        manifest["splits"].setdefault(s, []).append(o.name)
        manifest["line_issues"] += st.pop("line_issues")
        manifest["scenes"].setdefault(s, {})[o.name] = st
    for s, scenes in manifest["scenes"].items():
        manifest["class_histogram"][s] = np.sum([v["class_histogram"] for v in scenes.values()], axis=0).tolist()
        manifest["ignored_points"][s] = 0
    if "val" not in manifest["splits"]:
        log.warning("no rooms of val area %d were ingested: the val split is empty", val_area)
    manifest["data_hash"] = hash_scenes(out_dirs)
    write_json(out_root / "manifest.json", manifest)
    return manifest
