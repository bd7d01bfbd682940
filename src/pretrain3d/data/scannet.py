"""ScanNet v2 ingestion from the official release layout into processed scenes.

Raw layout (as the ScanNet download script writes it)::

    <raw_root>/scans/<id>/<id>_vh_clean_2.ply                  mesh: x y z red green blue alpha + faces
    <raw_root>/scans/<id>/<id>_vh_clean_2.labels.ply           vertex `label` = NYU40 id (0 = none)
    <raw_root>/scans/<id>/<id>_vh_clean_2.0.010000.segs.json   `segIndices`: segment id per vertex
    <raw_root>/scans/<id>/<id>.aggregation.json                `segGroups`: objectId, label, segments
    <raw_root>/scans/<id>/<id>.txt                             `axisAlignment = 16 numbers`
    <raw_root>/scans/<id>/<id>.sens                            RGB-D stream (data/sens.py)
    <raw_root>/scans_test/<id>/...                             the same without labels
    <raw_root>/scannetv2-labels.combined.tsv                   raw category -> nyu40id, ScanNet200 id
    <split_dir>/scannetv2_{train,val,test}.txt                 split lists (ScanNet's Tasks/Benchmark)

Processed scene (Pointcept's npy layout plus our extras)::

    coord.npy   the PLY's float32 vertices, unchanged (or axis-aligned, when asked)
    color.npy   the PLY's uint8 red/green/blue
    normal.npy  area-weighted vertex normals of the mesh
    segment20.npy   labels.ply NYU40 ids through the 20 benchmark ids (else from the aggregation)
    segment200.npy  aggregation + tsv `id` through the 200 benchmark ids   (when both exist)
    instance.npy    aggregation objectId per vertex, -1 = none               (when it exists)
    frames/ + frames.json   every k-th .sens frame: colour resized to the depth size, depth PNG,
                            camera-to-world pose, depth intrinsics
    meta.json   axis-alignment matrix (applied or not), label sources, skipped frames and why

Like Pointcept, coordinates are not axis-aligned by default; the matrix is stored either way.
Frames with a non-finite (or non-rigid) pose or without a single valid depth pixel are skipped
and listed in meta.json.

The readers of the release's files live in ``scannet_files``; this module turns what they read
into processed scenes (mesh normals, .sens frames, one scene, a whole release with its manifest).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pretrain3d.atomic import atomic_dir, write_json
from pretrain3d.data.frames import INVALID_DEPTH_VALUES, Frame, FrameIndex, check_intrinsics
from pretrain3d.data.labels import SCANNET20_NAMES, nyu40_to_scannet20
from pretrain3d.data.parallel import remove_stale_temporaries, run_jobs
from pretrain3d.data.ply import vertex_normals_from_faces
from pretrain3d.data.scannet200 import scannet_id_to_200
from pretrain3d.data.scannet_files import (  # the release's files and their readers; importable from here as before
    LABELS_TSV,
    AggregationLabels,
    ScanFiles,
    SegGroup,
    aggregation_labels,
    read_aggregation,
    read_axis_alignment,
    read_label_table,
    read_nyu40_ply,
    read_segments,
)
from pretrain3d.data.scannet_like_files import read_vertex_ply
from pretrain3d.data.scene import ProcessedScene, estimate_normals, hash_scenes, write_scene_files
from pretrain3d.data.sens import SensReader
from pretrain3d.errors import DataError
from pretrain3d.geometry.camera import pose_problem

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLOR_JPEG_QUALITY = 95


@dataclass
class ScanNetOptions:
    frame_step: int = 20
    export_frames: bool = True
    axis_align: bool = False


# ------------------------------------------------------------------------------------ mesh


def mesh_normals(mesh: dict) -> np.ndarray:
    """Area-weighted vertex normals (as Pointcept); vertices no face touches get a PCA normal."""
    coord, faces = mesh["coord"], mesh["faces"]
    if mesh["normal"] is not None:
        return mesh["normal"]
    if faces is None or not len(faces):
        return estimate_normals(coord)
    normal = vertex_normals_from_faces(coord, faces)
    lonely = np.linalg.norm(normal, axis=1) == 0
    if lonely.any():
        normal[lonely] = estimate_normals(coord)[lonely]
    return normal


# ------------------------------------------------------------------------------------ frames


def _resize_rgb(rgb: np.ndarray, hw: tuple[int, int]):
    from PIL import Image

    return Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR)


def export_sens_frames(sens_path: str | Path, scene_dir: str | Path, step: int,
                       align: np.ndarray | None = None) -> tuple[FrameIndex | None, dict]:
    """Decode every ``step``-th frame of a ``.sens`` into ``scene_dir/frames/{color,depth}/<i>.*``.

    Colour is resized (bilinear) to the depth resolution and paired with the depth intrinsics,
    as PonderV2 reads ScanNet; a JPEG already at that size is copied byte for byte. ``align``
    (the axis alignment) is applied to the poses. Returns the frame index (paths relative to
    ``scene_dir``; None when every frame was skipped) and a summary with the skipped frames.
    """
    from PIL import Image

    sens_path, scene_dir = Path(sens_path), Path(scene_dir)
    color_dir, depth_dir = scene_dir / "frames" / "color", scene_dir / "frames" / "depth"
    color_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    frames: list[Frame] = []
    skipped: list[dict] = []
    with SensReader(sens_path) as sens:
        h = sens.header
        k = h.intrinsic_depth[:3, :3].astype(np.float64)
        try:
            check_intrinsics(k, sens_path)
        except DataError as e:
            raise DataError(sens_path, f"depth intrinsics: {e.problem}") from None
        hw = (h.depth_height, h.depth_width)
        for fr in sens.frames(step):
            fid = str(fr.index)
            pose = fr.camera_to_world.astype(np.float64)
            problem = pose_problem(pose)
            if problem is not None:
                skipped.append({"id": fid, "reason": f"invalid pose: {problem}"})
                continue
            depth = sens.decode_depth(fr)
            if np.isin(depth, INVALID_DEPTH_VALUES).all():
                skipped.append({"id": fid, "reason": "empty depth: no valid pixel"})
                continue
            passthrough = h.color_compression in ("jpeg", "png") and (h.color_height, h.color_width) == hw
            ext = ".png" if passthrough and h.color_compression == "png" else ".jpg"
            color_rel = f"frames/color/{fid}{ext}"
            if passthrough:
                sens.decode_color(fr)  # only to reject a corrupt image here, not in training
                (scene_dir / color_rel).write_bytes(fr.color_data)
            else:
                _resize_rgb(sens.decode_color(fr), hw).save(scene_dir / color_rel, quality=COLOR_JPEG_QUALITY)
            depth_rel = f"frames/depth/{fid}.png"
            Image.fromarray(depth).save(scene_dir / depth_rel)
            if align is not None:
                pose = align @ pose
            frames.append(Frame(fid, color_rel, depth_rel, k.copy(), pose))
    summary = {
        "source": sens_path.name, "sensor": h.sensor_name, "total": h.num_frames, "step": step,
        "exported": len(frames), "skipped": skipped,
        "color_size": [h.color_width, h.color_height], "depth_size": [h.depth_width, h.depth_height],
        "depth_shift": h.depth_shift,
    }
    if not frames:
        shutil.rmtree(scene_dir / "frames")
        return None, summary
    return FrameIndex(frames, h.depth_width, h.depth_height, h.depth_shift, None), summary


# ------------------------------------------------------------------------------------ a scene


def _rigid(m: np.ndarray, path: Path) -> np.ndarray:
    problem = pose_problem(m)
    if problem is not None:
        raise DataError(path, f"axisAlignment is not a rigid transform: {problem}")
    return m


def ingest_scannet_scene(scan_dir: str | Path, out_dir: str | Path,
                         label_table: dict[str, tuple[int, int | None]] | None = None,
                         options: ScanNetOptions = ScanNetOptions()) -> dict:
    """Read one ``scans/<id>`` folder and write its processed scene to ``out_dir`` atomically.

    Every file is read and checked before the output folder appears; returns the scene's stats.
    """
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise DataError(scan_dir, "scan folder not found")
    files = ScanFiles(scan_dir, scan_dir.name)
    mesh = read_vertex_ply(files.mesh)
    n = len(mesh["coord"])
    align = read_axis_alignment(files.info)
    sources: dict[str, str | None] = {"segment20": None, "segment200": None, "instance": None}

    nyu40 = None
    if files.labels.is_file():
        nyu40 = read_nyu40_ply(files.labels, num_vertices=n)
        sources["segment20"] = files.labels.name
    agg = None
    if files.segs.is_file() and files.aggregation.is_file():
        agg = aggregation_labels(read_segments(files.segs, n), read_aggregation(files.aggregation), label_table)
        sources["instance"] = files.aggregation.name
        if nyu40 is None and agg.nyu40 is not None:
            nyu40 = agg.nyu40
            sources["segment20"] = f"{files.aggregation.name} + {LABELS_TSV}"
        if agg.scannet_id is not None:
            sources["segment200"] = f"{files.aggregation.name} + {LABELS_TSV}"

    coord, normal = mesh["coord"], mesh_normals(mesh)
    aligned = False
    if options.axis_align:
        if align is None:
            log.warning("%s: no axisAlignment in %s; the scene stays unaligned", files.scene_id, files.info)
        else:
            m = _rigid(align, files.info)
            coord = (coord.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
            normal = (normal.astype(np.float64) @ m[:3, :3].T).astype(np.float32)
            aligned = True

    scene = ProcessedScene(
        files.scene_id, coord, mesh["color"], normal,
        nyu40_to_scannet20(nyu40) if nyu40 is not None else None,
        agg.instance if agg is not None else None,
        segment_file="segment20.npy",
        extra_labels={"segment200": scannet_id_to_200(agg.scannet_id)} if agg is not None and agg.scannet_id is not None
        else {},
    )
    scene.validate(source=scan_dir, num_classes=len(SCANNET20_NAMES))  # before any frame is decoded

    frames_summary = None
    with atomic_dir(out_dir) as tmp:
        if options.export_frames and files.sens.is_file():
            scene.frames, frames_summary = export_sens_frames(files.sens, tmp, options.frame_step,
                                                              align if aligned else None)
            if scene.frames is None:
                log.warning("%s: every exported frame was skipped (see meta.json)", files.scene_id)
        scene.meta = {
            "dataset": "scannet", "scene_id": files.scene_id, "num_points": n,
            "axis_alignment": align.tolist() if align is not None else None, "axis_aligned": aligned,
            "label_sources": sources,
            "non_nyu40_label_vertices": int(((nyu40 < 0) | (nyu40 > 40)).sum()) if nyu40 is not None else 0,
            "unknown_categories": agg.unknown_categories if agg is not None else [],
            "frames": frames_summary,
        }
        write_scene_files(tmp, scene)

    seg = scene.segment
    return {
        "num_points": n,
        "num_frames": len(scene.frames) if scene.frames is not None else 0,
        "skipped_frames": len(frames_summary["skipped"]) if frames_summary else 0,
        "labelled": seg is not None,
        "ignored_points": int((seg < 0).sum()) if seg is not None else n,
        "class_histogram": np.bincount(seg[seg >= 0], minlength=20)[:20].tolist() if seg is not None else [0] * 20,
    }


# ---------------------------------------------------------------------------- a whole release


def _is_scan(d: Path) -> bool:
    return d.is_dir() and ScanFiles(d, d.name).mesh.is_file()


def release_root(raw_root: str | Path) -> Path:
    """The release folder (holding scans/, the label table, the split lists) for a raw_root that is
    the release itself, its scans/ (or scans_test/) folder, or a single scan folder."""
    raw_root = Path(raw_root)
    if _is_scan(raw_root):
        return raw_root.parent.parent
    if not (raw_root / "scans").is_dir() and not (raw_root / "scans_test").is_dir() and any(
            _is_scan(d) for d in raw_root.iterdir() if d.is_dir()):
        return raw_root.parent
    return raw_root


def find_scans(raw_root: str | Path) -> dict[str, tuple[Path, bool]]:
    """{scene id: (folder, is_test)} of every scan (a folder holding its _vh_clean_2.ply) under
    scans/ and scans_test/ of the release; raw_root may also be a scans folder or one scan."""
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise DataError(raw_root, "raw ScanNet folder not found")
    if _is_scan(raw_root):
        return {raw_root.name: (raw_root, raw_root.parent.name == "scans_test")}
    subs = [(raw_root / "scans", False), (raw_root / "scans_test", True)]
    if not any(d.is_dir() for d, _ in subs):
        subs = [(raw_root, raw_root.name == "scans_test")]
    found: dict[str, tuple[Path, bool]] = {}
    for sub, is_test in subs:
        if sub.is_dir():
            for d in sorted(sub.iterdir()):
                if _is_scan(d):
                    found.setdefault(d.name, (d, is_test))
    if not found:
        raise DataError(raw_root, "no scans/ or scans_test/ folder with scan folders (<id>/<id>_vh_clean_2.ply)",
                        "data.raw_root (--raw-root) must be the ScanNet v2 release folder")
    return found


def read_split_lists(split_dir: str | Path) -> dict[str, list[str]]:
    """The split lists found in ``split_dir``: scannetv2_<split>.txt, else splits/<split>.txt."""
    split_dir = Path(split_dir)
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        for cand in (split_dir / f"scannetv2_{split}.txt", split_dir / "splits" / f"{split}.txt"):
            if cand.is_file():
                ids = [ln.strip() for ln in cand.read_text().splitlines()]
                lists[split] = [i for i in ids if i and not i.startswith("#")]
                break
    seen: dict[str, str] = {}
    for split, ids in lists.items():
        for i in ids:
            if seen.setdefault(i, split) != split:
                raise DataError(split_dir, f"scene {i!r} is listed in both {seen[i]!r} and {split!r}")
    return lists


def assign_splits(scans: dict[str, tuple[Path, bool]], lists: dict[str, list[str]]) -> dict[str, str]:
    """Scene id -> split: the list naming it; else test for scans_test/; else train when there are
    no lists at all, and test otherwise (Pointcept's rule)."""
    listed = {i: s for s, ids in lists.items() for i in ids}
    out = {}
    for scene_id, (_, is_test) in scans.items():
        if scene_id in listed:
            out[scene_id] = listed[scene_id]
        elif is_test:
            out[scene_id] = "test"
        else:
            out[scene_id] = "train" if not lists else "test"
    if not lists:
        log.warning("no split lists (scannetv2_train.txt, ...) found: every scans/ scene goes to train")
    return out


def _ingest_job(scan_dir: str, out_dir: str, label_table, options: ScanNetOptions) -> dict:
    return ingest_scannet_scene(scan_dir, out_dir, label_table, options)


def preprocess_scannet(
    raw_root: str | Path,
    out_root: str | Path,
    options: ScanNetOptions = ScanNetOptions(),
    labels_tsv: str | Path | None = None,
    split_dir: str | Path | None = None,
    splits: Sequence[str] = ("train", "val"),
    scenes: Sequence[str] = (),
    workers: int = 1,
    progress: bool = True,
    merge: bool = False,
) -> dict:
    """Ingest a ScanNet v2 release into ``out_root/<split>/<scene id>/`` and write manifest.json.

    ``scenes`` restricts the run to those ids (whatever their split); otherwise every scan of
    ``splits`` is ingested. ``raw_root`` is the release (or its scans/ folder, or one scan).
    ``labels_tsv`` defaults to the release's scannetv2-labels.combined.tsv (without it: no
    segment200, and segment20 only from labels.ply); ``split_dir`` to the release folder.
    With ``merge`` the scenes of an existing manifest in ``out_root`` are kept in it
    (incremental runs); otherwise the manifest lists exactly this run's scenes.
    """
    raw_root, out_root = Path(raw_root), Path(out_root)
    scans = find_scans(raw_root)
    release = release_root(raw_root)
    lists = read_split_lists(split_dir if split_dir is not None else release)
    split_of = assign_splits(scans, lists)
    if scenes:
        missing = [s for s in scenes if s not in scans]
        if missing:
            raise DataError(raw_root, f"scenes not found under scans/ or scans_test/: {missing[:10]}")
        chosen = list(dict.fromkeys(scenes))
    else:
        chosen = [s for s in scans if split_of[s] in splits]
        missing = [i for s in splits for i in lists.get(s, []) if i not in scans]
        if missing:
            log.warning("%d scenes of the split lists are not in %s (e.g. %s)", len(missing), raw_root, missing[:3])
    if not chosen:
        raise DataError(raw_root, f"no scans to ingest for splits {list(splits)}")

    tsv = Path(labels_tsv) if labels_tsv else release / LABELS_TSV
    table = read_label_table(tsv) if (labels_tsv or tsv.is_file()) else None
    if table is None:
        log.warning("%s not found: no segment200; segment20 only from *_vh_clean_2.labels.ply", tsv)

    out_dirs = [out_root / split_of[s] / s for s in chosen]
    remove_stale_temporaries(out_dirs)
    jobs = [(str(scans[s][0]), str(d), table, options) for s, d in zip(chosen, out_dirs)]
    stats = run_jobs(_ingest_job, jobs, workers, "ingest ScanNet", progress)

    manifest_path = out_root / "manifest.json"
    old = {}
    if merge and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text()).get("scenes", {})
        except (OSError, ValueError):
            old = {}
    per_split: dict[str, dict[str, dict]] = {
        s: {i: st for i, st in ids.items() if (out_root / s / i).is_dir()} for s, ids in old.items()
    }
    for scene_id, st in zip(chosen, stats):
        for ids in per_split.values():
            ids.pop(scene_id, None)
        per_split.setdefault(split_of[scene_id], {})[scene_id] = st
    manifest = _manifest(per_split, out_root, options, table is not None)
    write_json(manifest_path, manifest)
    return manifest


def _manifest(per_split: dict[str, dict[str, dict]], out_root: Path, options: ScanNetOptions,
              has_table: bool) -> dict:
    manifest: dict = {
        "dataset": "scannet", "num_classes": 20, "class_names": list(SCANNET20_NAMES),
        "frame_step": options.frame_step, "axis_align": options.axis_align, "export_frames": options.export_frames,
        "segment200": has_table,
        "splits": {}, "scenes": {}, "class_histogram": {}, "ignored_points": {}, "skipped_frames": {},
    }
    for split in sorted(per_split):
        ids = sorted(per_split[split])
        st = per_split[split]
        manifest["splits"][split] = ids
        manifest["scenes"][split] = {i: st[i] for i in ids}
        manifest["class_histogram"][split] = np.sum(
            [st[i]["class_histogram"] for i in ids], axis=0, dtype=np.int64).tolist() if ids else [0] * 20
        manifest["ignored_points"][split] = int(sum(st[i]["ignored_points"] for i in ids))
        manifest["skipped_frames"][split] = int(sum(st[i]["skipped_frames"] for i in ids))
    manifest["data_hash"] = hash_scenes([out_root / s / i for s in manifest["splits"] for i in manifest["splits"][s]])
    return manifest
