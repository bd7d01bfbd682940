"""Measure the gap between the generator's domains (data.synthetic.domain).

Generates N train scenes per domain (scannet, s3dis, structured3d) into a temporary folder,
preprocesses them into the processed-scene contract and prints, per domain: points per scene,
point density (points per m^2 of surface: median of k / (pi r_k^2) over points, r_k the distance
to the 10th nearest neighbour), mean RGB, chroma (mean max-min channel), the position noise seen
on the floor (std of floor points' z; the floor is the plane z = 0) and the class frequencies of
its label space.

    PYTHONPATH=src python scripts/domain_stats.py --scenes 6 --points-per-m2 600
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from pretrain3d.data.labels import SYNTHETIC_DOMAINS, label_space
from pretrain3d.data.scannet_like import preprocess_scannet_like
from pretrain3d.data.synthetic import generate_dataset

K_NEIGHBOURS = 10


def surface_density(coord: np.ndarray, k: int = K_NEIGHBOURS) -> float:
    """Points per m^2 of surface: the median over points of k / (pi r_k^2), r_k the distance to the
    k-th nearest neighbour (the surfaces being locally planar)."""
    from scipy.spatial import cKDTree

    r = cKDTree(coord).query(coord, k=k + 1)[0][:, -1]
    return float(np.median(k / (np.pi * np.maximum(r, 1e-6) ** 2)))


def domain_stats(processed: Path, domain: str) -> dict:
    space = label_space(domain)
    scenes = sorted(p for p in (processed / "train").iterdir() if p.is_dir())
    dens, npts, colours, chroma, floor_z = [], [], [], [], []
    hist, ignored = np.zeros(space.num_classes, np.int64), 0
    floor = space.names.index("floor")
    for d in scenes:
        coord, color, seg = (np.load(d / f"{k}.npy") for k in ("coord", "color", "segment"))
        dens.append(surface_density(coord))
        npts.append(len(coord))
        colours.append(color.astype(np.float64).mean(0))
        chroma.append(float((color.max(1).astype(np.float64) - color.min(1)).mean()))
        floor_z.append(coord[seg == floor, 2])
        hist += np.bincount(seg[seg >= 0], minlength=space.num_classes)
        ignored += int((seg < 0).sum())
    total = hist.sum() + ignored
    return {
        "domain": domain,
        "label_space": space.name,
        "scenes": len(scenes),
        "points_per_scene": float(np.mean(npts)),
        "points_per_m2": float(np.mean(dens)),
        "mean_rgb": np.mean(colours, axis=0).round(1).tolist(),
        "chroma": float(np.mean(chroma)),
        "floor_z_std_mm": float(np.concatenate(floor_z).std() * 1000.0),
        "class_freq": {n: float(hist[i] / total) for i, n in enumerate(space.names)},
        "ignored": float(ignored / total),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6, help="train scenes per domain")
    ap.add_argument("--points-per-m2", type=float, default=600.0, help="the base density (params.yaml: 600)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--domains", nargs="+", default=list(SYNTHETIC_DOMAINS), choices=SYNTHETIC_DOMAINS)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dom in args.domains:
            raw, out = Path(tmp) / dom / "raw", Path(tmp) / dom / "processed"
            generate_dataset(raw, num_train=args.scenes, num_val=1, seed=args.seed, frames_per_scene=1, width=32,
                             height=24, points_per_m2=args.points_per_m2, workers=1, progress=False, domain=dom)
            preprocess_scannet_like(raw, out, workers=1, progress=False, num_classes=label_space(dom).num_classes,
                                    splits=("train",))
            rows.append(domain_stats(out, dom))
    print(f"{'domain':<13} {'labels':<15} {'scenes':>6} {'pts/scene':>10} {'pts/m2':>8} {'mean RGB':>20} "
          f"{'chroma':>6} {'floor z std':>11}")
    for r in rows:
        rgb = "(" + ", ".join(f"{c:.0f}" for c in r["mean_rgb"]) + ")"
        print(f"{r['domain']:<13} {r['label_space']:<15} {r['scenes']:>6} {r['points_per_scene']:>10.0f} "
              f"{r['points_per_m2']:>8.0f} {rgb:>20} {r['chroma']:>6.1f} {r['floor_z_std_mm']:>8.2f} mm")
    for r in rows:
        print(f"\n{r['domain']} class frequencies (% of points; ignored {100 * r['ignored']:.1f}%):")
        items = [f"{n} {100 * f:.1f}" for n, f in r["class_freq"].items()]
        for i in range(0, len(items), 7):
            print("  " + ", ".join(items[i:i + 7]))


if __name__ == "__main__":
    main()
