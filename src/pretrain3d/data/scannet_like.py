"""Ingest ScanNet-like raw scenes (synthetic generator output, ScanNet exports) into processed scenes.

Raw layout (per scene)::

    <raw_root>/scans/<id>/<id>_vh_clean_2.ply          vertex x,y,z[,nx,ny,nz],red,green,blue[,alpha] (+faces)
    <raw_root>/scans/<id>/<id>_vh_clean_2.labels.ply   vertex `label` (NYU40 id, 0 = unannotated)
    <raw_root>/scans/<id>/<id>_instance.npy            optional (N,) int
    <raw_root>/scans/<id>/frames/intrinsic/intrinsic_depth.txt, color/<i>.jpg, depth/<i>.png, pose/<i>.txt
    <raw_root>/splits/<split>.txt

The building blocks (`build_processed_scene` here; `read_vertex_ply`, `read_label_ply`,
`read_instance_npy`, `read_exported_frames` in ``scannet_like_files``, with the folder's writer)
are public so that a real-ScanNet reader (.sens / aggregation / segs) can reuse them.

Label spaces: the labels PLY holds raw ids of a generator domain's label space
(``labels.label_space``): NYU40 -> ScanNet-20 by default (real ScanNet exports, the scannet
domain); a generated root whose ``meta.json`` names another ``domain`` (s3dis: S3DIS index + 1 ->
S3DIS-13; structured3d: NYU40 -> Structured3D-25) is mapped into that space instead, and
``num_classes`` must be that space's size.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np

from pretrain3d.atomic import write_json
from pretrain3d.data.frames import FrameIndex
from pretrain3d.data.labels import label_space
from pretrain3d.data.ply import vertex_normals_from_faces
from pretrain3d.data.scannet_like_files import (  # the raw folder's files; importable from here as before
    NYU40_MAX,
    instance_path,
    label_ply_path,
    read_exported_frames,
    read_instance_npy,
    read_label_ply,
    read_vertex_ply,
    vertex_ply_path,
    write_scannet_like_scene,
)
from pretrain3d.data.scene import (
    ProcessedScene,
    check_labels,
    estimate_normals,
    hash_scenes,
    write_processed_scene,
)
from pretrain3d.errors import DataError

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- ingest


def _normals_for(mesh: dict) -> np.ndarray:
    """Vertex normals from the file, else from the faces, else estimated from the points."""
    coord = mesh["coord"]
    if mesh["normal"] is not None:
        return mesh["normal"]
    if mesh["faces"] is not None and len(mesh["faces"]):
        normal = vertex_normals_from_faces(coord, mesh["faces"])
        lonely = np.linalg.norm(normal, axis=1) == 0  # vertices no face touches
        if lonely.any():
            normal[lonely] = estimate_normals(coord)[lonely]
        return normal
    return estimate_normals(coord)


def build_processed_scene(
    scene_id: str,
    mesh: dict,
    nyu40: np.ndarray | None,
    instance: np.ndarray | None,
    frames: FrameIndex | None,
    num_classes: int = 20,
    label_source: str | Path = "<labels>",
    domain: str = "scannet",
) -> ProcessedScene:
    """Assemble a ProcessedScene from already-read parts: raw labels (``nyu40``: NYU40 ids for
    the scannet and structured3d domains, S3DIS index + 1 for s3dis) → the domain's label space."""
    space = label_space(domain)
    if num_classes != space.num_classes:
        if domain == "scannet":
            raise ValueError(f"ScanNet-like ingest maps NYU40 to ScanNet-20; num_classes={num_classes} is not supported")
        raise ValueError(f"domain {domain!r} labels {space.num_classes} classes ({space.name}); "
                         f"num_classes={num_classes} does not fit")
    n = len(mesh["coord"])
    if nyu40 is None:
        segment = np.full(n, -1, dtype=np.int64)
    else:
        raw = np.asarray(nyu40, dtype=np.int64)
        if raw.size and raw.max() > space.raw_max:
            raise DataError(label_source, f"labels above {space.raw_max} (max {int(raw.max())}) in a "
                            f"{space.name} scene: its raw ids are {space.raw_set} (0..{space.raw_max})")
        segment = check_labels(label_source, space.to_segment(raw), n, num_classes)
    return ProcessedScene(scene_id, mesh["coord"], mesh["color"], _normals_for(mesh), segment, instance, frames)


def ingest_scannet_like_scene(
    scan_dir: str | Path,
    scene_id: str,
    out_dir: str | Path,
    num_classes: int = 20,
    frame_step: int = 1,
    domain: str = "scannet",
) -> ProcessedScene:
    """Read one raw scene folder and write the processed scene to ``out_dir`` (atomically).

    Everything is read and validated before anything is written, so a bad input leaves no
    partial output. Returns the written scene (``path`` set, frames pointing into ``out_dir``).
    ``domain``: the generator domain whose label space the labels PLY holds; a scene whose
    generator.json names another domain is an error.
    """
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise DataError(scan_dir, "raw scene folder not found")
    gen = scan_dir / "generator.json"
    if gen.is_file():
        try:
            scene_domain = json.loads(gen.read_text()).get("domain", "scannet")
        except ValueError as e:
            raise DataError(gen, f"not valid JSON ({e})") from e
        if scene_domain != domain:
            raise DataError(gen, f"scene of generator domain {scene_domain!r} among {domain!r} scenes",
                            "one raw root holds one domain: generate each domain into its own raw_root")
    mesh = read_vertex_ply(vertex_ply_path(scan_dir, scene_id))
    n = len(mesh["coord"])
    lpath = label_ply_path(scan_dir, scene_id)
    nyu40 = read_label_ply(lpath, num_vertices=n)
    ipath = instance_path(scan_dir, scene_id)
    instance = read_instance_npy(ipath, n) if ipath.is_file() else None
    frames = None
    if (scan_dir / "frames").exists():
        frames = read_exported_frames(scan_dir / "frames", frame_step=frame_step)
    scene = build_processed_scene(scene_id, mesh, nyu40, instance, frames, num_classes, lpath, domain)
    write_processed_scene(out_dir, scene, num_classes=num_classes)
    scene.path = Path(out_dir)
    if frames is not None:
        scene.frames = FrameIndex.load(Path(out_dir) / "frames.json", check_files=False)
    return scene


def read_split_file(raw_root: str | Path, split: str) -> list[str]:
    path = Path(raw_root) / "splits" / f"{split}.txt"
    if not path.is_file():
        raise DataError(path, f"split file for {split!r} not found")
    ids = [ln.strip() for ln in path.read_text().splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(path, f"scene ids listed more than once: {dup}")
    return ids


def raw_label_space(raw_root: str | Path, domain: str | None = None):
    """The label space of a raw root: its meta.json's ``domain`` (absent: scannet); ``domain``, when
    given, must agree (a DataError names both)."""
    meta_path = Path(raw_root) / "meta.json"
    found = "scannet"
    if meta_path.is_file():
        try:
            found = json.loads(meta_path.read_text()).get("domain", "scannet")
        except ValueError as e:
            raise DataError(meta_path, f"not valid JSON ({e})") from e
    if domain is not None and domain != found:
        raise DataError(meta_path, f"raw scenes of generator domain {found!r}, but data.synthetic.domain is {domain!r}",
                        "regenerate raw_root (pretrain3d generate) or set data.synthetic.domain to match")
    try:
        return label_space(found)
    except ValueError as e:
        raise DataError(meta_path, str(e)) from e


def _ingest_job(job: tuple) -> tuple:
    """Worker: ingest one scene; return stats, or the error as plain picklable values."""
    split, scene_id, scan_dir, out_dir, num_classes, frame_step, domain = job
    try:
        s = ingest_scannet_like_scene(scan_dir, scene_id, out_dir, num_classes, frame_step, domain)
        hist = np.bincount(s.segment[s.segment >= 0], minlength=num_classes)[:num_classes]
        stats = {
            "num_points": s.num_points,
            "num_frames": len(s.frames) if s.frames is not None else 0,
            "ignored_points": int((s.segment < 0).sum()),
            "class_histogram": hist.astype(int).tolist(),
        }
        return ("ok", split, scene_id, stats)
    except DataError as e:  # DataError's custom __init__ does not survive pickling: send fields
        return ("data_error", split, scene_id, (str(e.path), e.problem, e.hint))
    except Exception as e:
        return ("error", split, scene_id, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")


def _remove_temporaries(out_dirs: Sequence[Path]) -> None:
    """Remove the hidden temporaries (``.<name>.*.tmp``) that an atomic write of one of
    ``out_dirs`` leaves when its process is killed (a terminated worker runs no cleanup)."""
    import shutil

    for d in out_dirs:
        d = Path(d)
        if d.parent.is_dir():
            for tmp in d.parent.glob(f".{d.name}.*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)


def preprocess_scannet_like(
    raw_root: str | Path,
    out_root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    workers: int = 2,
    progress: bool = True,
    num_classes: int = 20,
    frame_step: int = 1,
    domain: str | None = None,
) -> dict:
    """Ingest every scene of ``splits`` into ``out_root/<split>/<scene_id>`` in parallel.

    The label space is that of the generator domain named by ``raw_root/meta.json`` (no meta.json or
    no ``domain`` in it: scannet, NYU40 → ScanNet-20). ``domain``, when given (the config's
    data.synthetic.domain), must be that one; ``num_classes`` (data.num_classes) must be its size.

    Writes ``out_root/manifest.json`` (atomically, last) and returns it as a dict::

        {"splits": {split: [scene ids]}, "scenes": {split: {id: {num_points, num_frames,
          ignored_points}}}, "class_histogram": {split: [count per class]},
         "ignored_points": {split: n}, "num_classes", "class_names", "data_hash"}

    ``data_hash`` covers exactly the listed scene folders (stale folders are ignored).
    The first failing scene raises (its DataError re-raised as is) once the scenes in flight have
    finished; scenes already written stay, complete, and no manifest is written.
    """
    from tqdm import tqdm

    raw_root, out_root = Path(raw_root), Path(out_root)
    space = raw_label_space(raw_root, domain)
    if num_classes != space.num_classes:
        raise ValueError(f"data.num_classes is {num_classes} but the scenes in {raw_root} are labelled in the "
                         f"{space.name} label space of generator domain {space.domain!r} ({space.num_classes} "
                         f"classes): set data.num_classes: {space.num_classes}")
    ids_by_split = {s: read_split_file(raw_root, s) for s in splits}
    seen: dict[str, str] = {}
    for s, ids in ids_by_split.items():
        for i in ids:
            if i in seen:
                raise DataError(raw_root / "splits" / f"{s}.txt",
                                f"scene {i!r} is also listed in split {seen[i]!r}")
            seen[i] = s
    jobs = [(s, i, str(raw_root / "scans" / i), str(out_root / s / i), num_classes, frame_step, space.domain)
            for s, ids in ids_by_split.items() for i in ids]

    out_dirs = [Path(j[3]) for j in jobs]
    _remove_temporaries(out_dirs)  # left by an earlier run that was killed
    results = []
    bar = tqdm(total=len(jobs), desc="ingest scenes", unit="scene", disable=not progress)

    def consume(res):
        status, split, scene_id, payload = res
        if status == "data_error":
            path, problem, hint = payload
            raise DataError(path, problem, hint)
        if status == "error":
            raise RuntimeError(f"ingesting scene {scene_id} ({split}) failed: {payload}")
        results.append(res)
        bar.update(1)

    try:
        if workers <= 1 or len(jobs) <= 1:
            for j in jobs:
                consume(_ingest_job(j))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: no fork of a parent that may hold threads (torch, BLAS). A worker that dies
            # raises BrokenProcessPool instead of hanging (as multiprocessing.Pool would).
            ex = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"))
            try:
                for fut in as_completed([ex.submit(_ingest_job, j) for j in jobs]):
                    consume(fut.result())
            finally:
                # On error: pending scenes are cancelled, running ones finish (complete, atomic).
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()

    stats = {(s, i): st for _, s, i, st in results}
    manifest: dict = {
        "dataset": "scannet_like",
        "num_classes": num_classes,
        "class_names": list(space.names),
        **({} if space.domain == "scannet" else {"domain": space.domain, "label_space": space.name}),
        "frame_step": frame_step,
        "splits": {s: list(ids) for s, ids in ids_by_split.items()},
        "scenes": {},
        "class_histogram": {},
        "ignored_points": {},
    }
    for s, ids in ids_by_split.items():
        manifest["scenes"][s] = {
            i: {k: stats[(s, i)][k] for k in ("num_points", "num_frames", "ignored_points")} for i in ids
        }
        hist = np.zeros(num_classes, dtype=np.int64)
        for i in ids:
            hist += np.asarray(stats[(s, i)]["class_histogram"], dtype=np.int64)
        manifest["class_histogram"][s] = hist.tolist()
        manifest["ignored_points"][s] = int(sum(stats[(s, i)]["ignored_points"] for i in ids))
    manifest["data_hash"] = hash_scenes([out_root / s / i for s, ids in ids_by_split.items() for i in ids])
    write_json(out_root / "manifest.json", manifest)
    return manifest
