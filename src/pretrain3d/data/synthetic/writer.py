"""Writing: one scene in the ScanNet-like raw layout (``write_raw_scene``), and a whole dataset,
scenes in parallel plus split lists and meta.json (``generate_dataset``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pretrain3d.atomic import atomic_dir, write_json, write_text
from pretrain3d.data.labels import SCANNET20_NAMES, SCANNET20_NYU40_IDS, label_space
from pretrain3d.data.synthetic.domains import domain_spec
from pretrain3d.data.synthetic.generator import (
    DEFAULT_POINTS_PER_M2,
    GENERATOR_VERSION,
    SyntheticScene,
    generate_scene,
    scene_seed,
)
from pretrain3d.data.synthetic.layouts import THEMES
from pretrain3d.data.synthetic.objects import NYU40


def _write_ply(path: Path, elements: list) -> None:
    from plyfile import PlyData

    PlyData(elements, text=False, byte_order="<").write(str(path))


def _matrix_text(M) -> str:
    return "\n".join(" ".join(f"{v:.9f}" for v in row) for row in np.asarray(M, dtype=np.float64)) + "\n"


def write_raw_scene(out_dir_root, scene_id: str, scene: SyntheticScene, write_frame_labels: bool = True) -> Path:
    """Write ``scene`` under ``<root>/scans/<scene_id>/`` in a ScanNet-like raw layout.

    The folder appears atomically (complete or not at all). Layout::

        <id>_vh_clean_2.ply          vertex: float x,y,z,nx,ny,nz; uchar red,green,blue,alpha
                                     (+ an empty ``face`` element, as ScanNet meshes have one)
        <id>_vh_clean_2.labels.ply   vertex: float x,y,z; uchar red,green,blue,alpha; ushort label (NYU40)
        <id>_instance.npy            int64 instance id per vertex (-1 = none)
        frames/intrinsic/intrinsic_depth.txt, intrinsic_color.txt   4x4, K top-left
        frames/color/<i>.jpg         JPEG quality 95
        frames/depth/<i>.png         uint16 millimetres, 0 = invalid
        frames/pose/<i>.txt          4x4 camera-to-world
        frames/label/<i>.png         uint16 NYU40 per pixel, 0 = none (only if write_frame_labels)
        generator.json               generator parameters of this scene

    Another domain than scannet writes its label space's raw ids where NYU40 ids stand above
    (``label_space(domain).raw_set``: NYU40 for structured3d, S3DIS index + 1 for s3dis) and
    records ``domain``, ``label_space`` and ``label_set`` in generator.json.
    """
    from PIL import Image
    from plyfile import PlyElement

    root = Path(out_dir_root)
    final = root / "scans" / scene_id
    N = len(scene.coord)
    with atomic_dir(final) as tmp:
        v = np.empty(
            N,
            dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                   ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")],
        )
        for i, k in enumerate("xyz"):
            v[k] = scene.coord[:, i]
            v["n" + k] = scene.normal[:, i]
        for i, k in enumerate(("red", "green", "blue")):
            v[k] = scene.color[:, i]
        v["alpha"] = 255
        faces = np.empty(0, dtype=[("vertex_indices", "i4", (3,))])
        _write_ply(
            tmp / f"{scene_id}_vh_clean_2.ply",
            [PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face", len_types={"vertex_indices": "u1"})],
        )
        lv = np.empty(
            N,
            dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                   ("alpha", "u1"), ("label", "<u2")],
        )
        for k in ("x", "y", "z", "red", "green", "blue", "alpha"):
            lv[k] = v[k]
        lv["label"] = scene.label.astype(np.uint16)
        _write_ply(tmp / f"{scene_id}_vh_clean_2.labels.ply", [PlyElement.describe(lv, "vertex")])
        np.save(tmp / f"{scene_id}_instance.npy", scene.instance.astype(np.int64))

        fr = tmp / "frames"
        for sub in ("intrinsic", "color", "depth", "pose") + (("label",) if write_frame_labels else ()):
            (fr / sub).mkdir(parents=True)
        K4 = np.eye(4)
        K4[:3, :3] = scene.K
        (fr / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_text(K4))
        (fr / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_text(K4))
        for i in range(len(scene.poses)):
            Image.fromarray(scene.frame_color[i]).save(fr / "color" / f"{i}.jpg", quality=95)
            mm = np.clip(np.rint(scene.frame_depth[i].astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
            Image.fromarray(mm).save(fr / "depth" / f"{i}.png")
            (fr / "pose" / f"{i}.txt").write_text(_matrix_text(scene.poses[i]))
            if write_frame_labels:
                Image.fromarray(scene.frame_label[i].astype(np.uint16)).save(fr / "label" / f"{i}.png")
        info = {
            "generator": "pretrain3d.data.synthetic",
            "version": GENERATOR_VERSION,
            "scene_id": scene_id,
            "theme": scene.theme,
            "room_size": [round(float(x), 6) for x in scene.room_size],
            "num_points": int(N),
            "num_frames": int(len(scene.poses)),
            "params": scene.params,
            "objects": [{k: o[k] for k in ("instance", "class", "nyu40", "label") if k in o} for o in scene.objects],
        }
        if scene.domain != "scannet":
            space = label_space(scene.domain)
            info.update(domain=scene.domain, label_space=space.name, label_set=space.raw_set)
        (tmp / "generator.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return final


def rescan_id(split: str, index: int, rescan: int, prefix: str = "synth") -> str:
    """Scene id of scene ``index`` of ``split``; rescans k > 0 get a suffix (``synth_val_0003_r1``).
    ``prefix`` is the domain's (``synth`` scannet, ``s3dis`` s3dis, ``st3d`` structured3d)."""
    return f"{prefix}_{split}_{index:04d}" + (f"_r{rescan}" if rescan else "")


def _domain_prefix(domain: str) -> str:
    return "synth" if domain == "scannet" else domain_spec(domain).prefix


def _generate_one(job: tuple) -> dict:
    root, split, index, seed, kw, resume = job
    domain = kw.get("domain", "scannet")
    scene_id = rescan_id(split, index, kw.get("rescan", 0), _domain_prefix(domain))
    params = _scene_params(kw, [seed, split, index])
    gpath = Path(root) / "scans" / scene_id / "generator.json"
    if resume and gpath.exists():
        try:
            info = json.loads(gpath.read_text())
            if info.get("version") == GENERATOR_VERSION and info.get("params") == params:
                return {"scene_id": scene_id, "skipped": True, "num_points": info["num_points"], "theme": info["theme"]}
        except (OSError, ValueError, KeyError):
            pass
    t0 = time.perf_counter()
    scene = generate_scene(scene_seed(seed, split, index, domain), scene_id=scene_id, **kw)
    scene.params = params
    t1 = time.perf_counter()
    write_raw_scene(root, scene_id, scene)
    return {
        "scene_id": scene_id,
        "skipped": False,
        "num_points": int(len(scene.coord)),
        "theme": scene.theme,
        "gen_s": t1 - t0,
        "total_s": time.perf_counter() - t0,
    }


def _scene_params(kw: dict, seed_triple) -> dict:
    domain = kw.get("domain", "scannet")
    spec = None if domain == "scannet" else domain_spec(domain)
    return {
        "seed": list(seed_triple),
        "num_frames": kw["num_frames"],
        "width": kw["width"],
        "height": kw["height"],
        "points_per_m2": kw["points_per_m2"],
        "pos_noise": kw.get("pos_noise", 0.005 if spec is None else spec.pos_noise),
        "color_noise": kw.get("color_noise", 3.0 if spec is None else spec.color_noise),
        "theme": kw.get("theme"),
        **({"rescan": kw["rescan"], "moved_objects": kw.get("moved_objects", 3)} if kw.get("rescan") else {}),
        **({} if spec is None else {"domain": domain, "density_factor": spec.density_factor}),
    }


def generate_dataset(
    root,
    num_train: int,
    num_val: int,
    seed: int = 0,
    frames_per_scene: int = 8,
    width: int = 160,
    height: int = 120,
    points_per_m2: float = DEFAULT_POINTS_PER_M2,
    workers: int = 1,
    progress: bool = True,
    resume: bool = True,
    themes: str = "cycle",
    rescans: int = 0,
    domain: str = "scannet",
) -> dict:
    """Write ``num_train`` + ``num_val`` scenes under ``root`` (see ``write_raw_scene``).

    Also writes ``<root>/splits/{train,val}.txt`` and ``<root>/meta.json`` (last, so its
    presence means the dataset is complete). Scene ``i`` of split ``s`` is seeded from
    ``(seed, s, i)``: output does not depend on ``workers``. With ``resume``, scenes whose
    ``generator.json`` records the same seed and parameters are kept rather than rebuilt.
    ``themes="cycle"`` gives scene ``i`` the room type ``THEMES[i % 5]`` (so any 5
    consecutive scenes cover every class family); ``"random"`` draws it from the seed.
    ``rescans`` k > 0 adds k re-captures of every val scene (``generate_scene(rescan=...)``) as the
    split ``rescan`` (``splits/rescan.txt``, ids ``synth_val_<i>_r<k>``), for duplicate-scene and
    image-to-scene queries; train and val are unchanged by it.
    ``domain`` (see ``generate_scene``) sets the room types that ``themes`` cycles through, the scene
    ids' prefix (``synth`` / ``s3dis`` / ``st3d``, so domains can share a folder of scans) and the
    label space, which meta.json records (``domain``, ``label_space``, ``label_set``, ``class_names``,
    ``class_raw_ids``; the scannet meta.json is unchanged) for preprocessing to map.
    Returns the meta dict.
    """
    from tqdm import tqdm

    root = Path(root)
    (root / "scans").mkdir(parents=True, exist_ok=True)
    if themes not in ("cycle", "random"):
        raise ValueError(f"themes must be 'cycle' or 'random', got {themes!r}")
    kw = dict(num_frames=frames_per_scene, width=width, height=height, points_per_m2=points_per_m2)
    theme_list, prefix = THEMES, "synth"
    if domain != "scannet":
        spec = domain_spec(domain)
        kw["domain"] = domain
        theme_list, prefix = spec.themes, spec.prefix

    def job(split, i):
        theme = theme_list[i % len(theme_list)] if themes == "cycle" else None
        return (str(root), split, i, int(seed), dict(kw, theme=theme), resume)

    jobs = [job("train", i) for i in range(num_train)] + [job("val", i) for i in range(num_val)]
    jobs += [(r, sp, i, sd, dict(k, rescan=j), rs) for j in range(1, rescans + 1)
             for (r, sp, i, sd, k, rs) in (job("val", i) for i in range(num_val))]
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="synthetic scenes", unit="scene", disable=not progress)
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            jobs = [(r, s, i, sd, dict(k, nthreads=1), rs) for (r, s, i, sd, k, rs) in jobs]
            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for res in pool.imap_unordered(_generate_one, jobs):
                    results[res["scene_id"]] = res
                    bar.update(1)
        else:
            for job in jobs:
                res = _generate_one(job)
                results[res["scene_id"]] = res
                bar.update(1)
    finally:
        bar.close()
    train_ids = [rescan_id("train", i, 0, prefix) for i in range(num_train)]
    val_ids = [rescan_id("val", i, 0, prefix) for i in range(num_val)]
    (root / "splits").mkdir(exist_ok=True)
    write_text(root / "splits" / "train.txt", "".join(s + "\n" for s in train_ids))
    write_text(root / "splits" / "val.txt", "".join(s + "\n" for s in val_ids))
    rescan_ids = [rescan_id("val", i, j, prefix) for i in range(num_val) for j in range(1, rescans + 1)]
    if rescans:
        write_text(root / "splits" / "rescan.txt", "".join(s + "\n" for s in rescan_ids))
    elif (root / "splits" / "rescan.txt").exists():  # a former run's rescans are not part of this dataset
        (root / "splits" / "rescan.txt").unlink()
    meta = {
        "generator": "pretrain3d.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": num_train,
        "num_val": num_val,
        "frames_per_scene": frames_per_scene,
        "width": width,
        "height": height,
        "points_per_m2": points_per_m2,
        "themes": themes,
        "depth_scale": 1000.0,
        "label_set": "nyu40",
        "class_names": list(SCANNET20_NAMES),
        "class_nyu40_ids": list(SCANNET20_NYU40_IDS),
        "generator_nyu40": dict(NYU40),
        "scenes": {
            sid: {"theme": results[sid]["theme"], "num_points": results[sid]["num_points"]}
            for sid in train_ids + val_ids
        },
    }
    if domain != "scannet":  # only then, so that the scannet meta.json stays byte for byte
        space = label_space(domain)
        meta.update(domain=domain, label_space=space.name, label_set=space.raw_set,
                    class_names=list(space.names), class_raw_ids=list(space.raw_ids),
                    generator_labels=dict(spec.label_ids), density_factor=spec.density_factor)
        for k in ("class_nyu40_ids", "generator_nyu40"):
            del meta[k]
    if rescans:  # only then, so that a dataset without rescans keeps its meta.json byte for byte
        meta["rescans"] = rescans
        meta["rescan_of"] = {rescan_id("val", i, j, prefix): rescan_id("val", i, 0, prefix)
                             for i in range(num_val) for j in range(1, rescans + 1)}
        for sid in rescan_ids:
            meta["scenes"][sid] = {"theme": results[sid]["theme"], "num_points": results[sid]["num_points"]}
    write_json(root / "meta.json", meta)
    return meta
