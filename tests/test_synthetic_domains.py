"""The generator's domains (data.synthetic.domain: scannet | s3dis | structured3d): each generates
posed RGB-D scenes in its own label space, preprocesses into the processed-scene contract, is
deterministic, differs measurably from the others; scannet stays byte for byte what it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open3d")
from PIL import Image  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from pretrain3d.config import SYNTHETIC_DOMAIN_CLASSES, validate_config  # noqa: E402
from pretrain3d.data import synthetic as syn  # noqa: E402
from pretrain3d.data.labels import (  # noqa: E402
    SCANNET20_NAMES,
    STRUCTURED3D_NAMES,
    dataset_class_names,
    label_space,
)
from pretrain3d.data.s3dis import S3DIS_NAMES  # noqa: E402
from pretrain3d.data.scannet_like import preprocess_scannet_like  # noqa: E402
from pretrain3d.data.scene import load_processed_scene  # noqa: E402
from pretrain3d.data.synthetic.domains import domain_spec  # noqa: E402
from pretrain3d.errors import ConfigError, DataError  # noqa: E402

DOMAINS = ("scannet", "s3dis", "structured3d")
PREFIX = {"scannet": "synth", "s3dis": "s3dis", "structured3d": "st3d"}
TINY = dict(num_train=2, num_val=1, seed=3, frames_per_scene=2, width=48, height=36, points_per_m2=150.0,
            workers=1, progress=False)


def _generate(root: Path, domain: str, **kw) -> Path:
    syn.generate_dataset(root, **dict(TINY, **kw), domain=domain)
    return root


def _file_hashes(root: Path, suffixes=None) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and (suffixes is None or p.suffix in suffixes)}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Per domain: (raw root, processed root) of a tiny dataset (2 train + 1 val, 2 frames)."""
    out = {}
    for dom in DOMAINS:
        base = tmp_path_factory.mktemp(dom)
        raw = _generate(base / "raw", dom)
        preprocess_scannet_like(raw, base / "processed", workers=1, progress=False,
                                num_classes=label_space(dom).num_classes)
        out[dom] = (raw, base / "processed")
    return out


@pytest.fixture(scope="module")
def scenes():
    """Per domain: one point cloud per room type, twice (no frames, low density)."""
    out = {}
    for dom in DOMAINS:
        themes = syn.THEMES if dom == "scannet" else domain_spec(dom).themes
        out[dom] = [syn.generate_scene(syn.scene_seed(11, "train", i, dom), domain=dom, theme=th, num_frames=0,
                                       points_per_m2=100.0)
                    for i, th in enumerate(themes * 2)]
    return out


# ------------------------------------------------------------------ generate + preprocess


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_generates_frames_and_preprocesses_into_its_label_space(datasets, domain):
    raw, processed = datasets[domain]
    space = label_space(domain)
    meta = json.loads((raw / "meta.json").read_text())
    assert meta["class_names"] == list(space.names)
    assert meta.get("domain", "scannet") == domain
    manifest = json.loads((processed / "manifest.json").read_text())
    assert manifest["class_names"] == list(space.names) and manifest["num_classes"] == space.num_classes
    ids = {s: [f"{PREFIX[domain]}_{s}_{i:04d}" for i in range(n)] for s, n in (("train", 2), ("val", 1))}
    assert manifest["splits"] == ids
    for split, sids in ids.items():
        for sid in sids:
            gen = json.loads((raw / "scans" / sid / "generator.json").read_text())
            assert gen.get("domain", "scannet") == domain
            s = load_processed_scene(processed / split / sid, num_classes=space.num_classes)
            assert s.segment.min() >= -1 and s.segment.max() < space.num_classes
            assert (s.segment >= 0).mean() > 0.9
            assert len(s.frames) == 2 and s.frames.width == 48 and s.frames.height == 36
            depth = np.asarray(Image.open(s.frames.depth_path(0)))
            assert (depth > 0).mean() > 0.9  # rendered from inside a closed room


def test_labels_follow_each_domains_conventions(scenes):
    """bookshelf / bookcase / shelves, desk -> table in S3DIS, ceilings labelled outside ScanNet."""
    def names(dom, cls):
        sp = label_space(dom)
        found = set()
        for s in scenes[dom]:
            seg = s.segment
            m = np.array([o["class"] == cls for o in s.objects])[s.instance]
            found |= {sp.names[k] if k >= 0 else "<ignore>" for k in np.unique(seg[m])}
        return found

    assert names("scannet", "bookshelf") == {"bookshelf"}
    assert names("s3dis", "bookshelf") == {"bookcase"}
    assert names("structured3d", "bookshelf") == {"shelves"}
    assert names("s3dis", "desk") == {"table"}
    assert names("structured3d", "desk") == {"desk"}
    assert names("s3dis", "otherprop") == {"clutter"} and names("structured3d", "otherprop") == {"otherprop"}
    assert names("scannet", "otherprop") == {"<ignore>"}
    assert names("s3dis", "ceiling") == {"ceiling"} and names("structured3d", "ceiling") == {"ceiling"}
    assert not any(o["class"] == "ceiling" for s in scenes["scannet"] for o in s.objects)


@pytest.mark.parametrize("domain", ["s3dis", "structured3d"])
def test_the_recipes_cover_the_whole_label_space(scenes, domain):
    space = label_space(domain)
    seen = np.zeros(space.num_classes, bool)
    for s in scenes[domain]:
        seg = s.segment
        seen[np.unique(seg[seg >= 0])] = True
    assert seen.all(), [space.names[k] for k in np.flatnonzero(~seen)]


# ------------------------------------------------------------------ determinism, scannet unchanged


def test_same_seed_same_bytes_and_no_dependence_on_workers(tmp_path, datasets):
    a = _file_hashes(_generate(tmp_path / "a", "s3dis"))
    assert a == _file_hashes(datasets["s3dis"][0])
    b = _file_hashes(_generate(tmp_path / "b", "structured3d", workers=2))
    assert b == _file_hashes(datasets["structured3d"][0])
    c = _file_hashes(_generate(tmp_path / "c", "s3dis", seed=4), suffixes={".ply"})
    assert c != {k: v for k, v in a.items() if k.endswith(".ply")}


# sha256 over the "<path> <sha256>" lines of the non-image files (json, ply, npy, txt: 36 files) of
# generate_dataset(seed=5, 2 train + 1 val, 2 frames of 64x48, 120 points/m^2, rescans=1), computed
# with the generator as it was before domains existed (commit b5a5121). Images (JPEG/PNG) are left out:
# their bytes depend on the Pillow/zlib build; the arrays they come from are covered by the PLYs.
SCANNET_BEFORE = "092d63ba3b5286b5fbcf78258d900ce1f3ff1a3f908168228ec42b8929a5f2d8"
SCANNET_BEFORE_FILES = 36


def test_scannet_default_is_byte_identical_to_before_domains(tmp_path):
    kw = dict(num_train=2, num_val=1, seed=5, frames_per_scene=2, width=64, height=48, points_per_m2=120.0,
              workers=1, progress=False, rescans=1)
    syn.generate_dataset(tmp_path / "default", **kw)
    syn.generate_dataset(tmp_path / "explicit", **kw, domain="scannet")
    got = _file_hashes(tmp_path / "default")
    assert got == _file_hashes(tmp_path / "explicit")
    sel = {k: v for k, v in got.items() if k.rsplit(".", 1)[-1] in ("json", "ply", "npy", "txt")}
    assert len(sel) == SCANNET_BEFORE_FILES
    digest = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(sel.items())).encode()).hexdigest()
    assert digest == SCANNET_BEFORE


# ------------------------------------------------------------------ the domain gap


def _density(coord, k=10) -> float:
    r = cKDTree(coord).query(coord, k=k + 1)[0][:, -1]
    return float(np.median(k / (np.pi * r ** 2)))


def test_the_domain_gap_is_measurable(scenes, capsys):
    stats = {}
    for dom in DOMAINS:
        cols = np.concatenate([s.color for s in scenes[dom]]).astype(np.float64)
        floor = label_space(dom).names.index("floor")
        fz = np.concatenate([s.coord[s.segment == floor, 2] for s in scenes[dom]]).astype(np.float64)
        stats[dom] = {
            "density": float(np.mean([_density(s.coord) for s in scenes[dom]])),
            "rgb": cols.mean(0),
            "warmth": float(cols[:, 0].mean() - cols[:, 2].mean()),
            "brightness": float(cols.mean()),
            "floor_z_std_mm": float(fz.std() * 1000),
            "exact": all(np.array_equal(s.coord, s.coord_clean) for s in scenes[dom]),
        }
    with capsys.disabled():
        for dom, st in stats.items():
            print(f"\n{dom:>12}: {st['density']:.0f} pts/m2, mean RGB {st['rgb'].round(1)}, R-B {st['warmth']:.1f}, "
                  f"floor z std {st['floor_z_std_mm']:.2f} mm, noise-free {st['exact']}")
    sc, s3, st3 = stats["scannet"], stats["s3dis"], stats["structured3d"]
    assert s3["density"] > 1.6 * sc["density"]  # 2x points_per_m2
    assert st3["density"] < 0.85 * sc["density"]  # 0.75x
    assert s3["warmth"] > sc["warmth"] + 15  # grey offices under warm light
    assert st3["brightness"] > sc["brightness"] + 10  # bright, saturated renders
    assert st3["exact"] and st3["floor_z_std_mm"] == 0.0  # synthetic-perfect geometry
    assert not sc["exact"] and 3.0 < sc["floor_z_std_mm"] < 7.0
    assert s3["floor_z_std_mm"] > sc["floor_z_std_mm"] + 1.5
    # holes: S3DIS-like scans miss parts of the surfaces
    s = syn.generate_scene(syn.scene_seed(11, "train", 0, "s3dis"), domain="s3dis", theme="office", num_frames=0,
                           points_per_m2=100.0, room_size=(5.0, 4.0, 3.0))
    gaps = cKDTree(s.coord_clean).query(np.c_[np.random.default_rng(0).uniform([0, 0], [5, 4], (4000, 2)),
                                              np.zeros(4000)])[0]
    assert (gaps > 0.15).any()


# ------------------------------------------------------------------ names and bad input


def test_class_names_of_each_domain():
    assert dataset_class_names("synthetic", 20) == list(SCANNET20_NAMES)
    assert dataset_class_names("synthetic", 13) == list(S3DIS_NAMES)
    assert dataset_class_names("synthetic", 25) == list(STRUCTURED3D_NAMES)
    assert dataset_class_names("scannet_like", 25, domain="structured3d") == list(STRUCTURED3D_NAMES)
    assert dataset_class_names("s3dis", 13) == list(S3DIS_NAMES)
    assert len(STRUCTURED3D_NAMES) == 25 and STRUCTURED3D_NAMES[16] == "ceiling"
    assert S3DIS_NAMES[:4] == ("ceiling", "floor", "wall", "beam")
    with pytest.raises(ValueError, match="13 classes"):
        dataset_class_names("synthetic", 20, domain="s3dis")


def test_bad_domain_and_class_count_are_clear_errors(tmp_path, datasets):
    with pytest.raises(ValueError, match="unknown synthetic domain 'matterport'"):
        syn.generate_dataset(tmp_path / "x", num_train=1, num_val=1, progress=False, domain="matterport")
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        syn.generate_scene(0, domain="matterport", num_frames=0)
    with pytest.raises(ValueError, match="unknown room type 'bedroom' for domain 's3dis'"):
        syn.generate_scene(0, domain="s3dis", theme="bedroom", num_frames=0)
    with pytest.raises(ConfigError, match="data.synthetic.domain"):
        validate_config({"data": {"synthetic": {"domain": "matterport"}}})
    with pytest.raises(ConfigError) as e:
        validate_config({"data": {"num_classes": 20, "synthetic": {"domain": "s3dis"}}})
    assert "data.num_classes is 20" in str(e.value) and "set data.num_classes: 13" in str(e.value)
    assert validate_config({"data": {"num_classes": 25, "synthetic": {"domain": "structured3d"}}})
    assert SYNTHETIC_DOMAIN_CLASSES == {d: label_space(d).num_classes for d in DOMAINS}
    raw = datasets["s3dis"][0]
    with pytest.raises(ValueError, match="data.num_classes is 20 .* s3dis13"):
        preprocess_scannet_like(raw, tmp_path / "p1", workers=1, progress=False, num_classes=20)
    with pytest.raises(DataError, match="data.synthetic.domain is 'structured3d'"):
        preprocess_scannet_like(raw, tmp_path / "p2", workers=1, progress=False, num_classes=25,
                                domain="structured3d")


def test_generate_and_preprocess_stages_follow_the_configured_domain(tmp_path):
    """data.synthetic.domain reaches the generator and the preprocessing (label space, ids, rescans)."""
    from conftest import tiny_overrides

    from pretrain3d.data.scene import list_scenes
    from pretrain3d.stages.data import generate, preprocess

    over = tiny_overrides(tmp_path)
    over["data"]["num_classes"] = 25
    over["data"]["synthetic"].update({"num_train": 1, "num_val": 1, "frames_per_scene": 1, "rescans": 1,
                                      "domain": "structured3d"})
    over["tracking"]["enabled"] = False
    cfg = validate_config(over)
    generate(cfg)
    preprocess(cfg)
    root = Path(cfg.data.processed_root)
    assert [p.name for p in list_scenes(root, "train")] == ["st3d_train_0000"]
    assert [p.name for p in list_scenes(root, "rescan")] == ["st3d_val_0000_r1"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["class_names"] == list(STRUCTURED3D_NAMES) and manifest["domain"] == "structured3d"
    s = load_processed_scene(root / "train" / "st3d_train_0000", num_classes=25)
    assert s.segment.max() < 25 and (s.segment == STRUCTURED3D_NAMES.index("ceiling")).any()
