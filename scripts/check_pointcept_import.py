#!/usr/bin/env python
"""Check `pretrain3d import-checkpoint` against Pointcept's own models: same input, same outputs.

Pointcept cannot be installed here (compiled ops, CLIP downloads), so this script loads its *real*
model source files -- SpUNet-v1m1 (``spconv_unet_v1m1_base.py``), SpUNet-v1m3 with PDNorm
(``spconv_unet_v1m3_pdnorm.py``) and the PPT-v1m1 wrapper -- from a checkout or a git directory
(read with ``git show <rev>:<path>``) into a temporary package, with tiny shims for the imports it
does not need here (``pointcept.models.builder``, ``...utils``, ``...losses``, ``torch_geometric``,
``timm``, ``clip``: a fake text encoder with random weights, only so that the language head exists
with Pointcept's own key names and shapes).

Variants (random weights and BatchNorm statistics, eval mode):

* ``v1m1``: DefaultSegmentor-style ``backbone.*`` of SpUNetBase(num_classes=K): seg logits (our
  backbone + the kept 1x1 head) and features (Pointcept's SpUNetBase(num_classes=0) with the same
  weights vs our backbone);
* ``v1m3``: PPT-v1m1 (language guided) around SpUNet-v1m3 with adaptive, decoupled, affine PDNorm
  and the released configs' two condition orders; per condition: features with PDNorm kept, features
  folded (``--condition``), and the PPT seg logits rebuilt from the kept language head.

Each checkpoint is saved in the trainer's format (``{"state_dict": {"module." + k: v}, "epoch", ...}``)
and converted with the CLI. Prints the max abs difference per variant; exits 1 above ``--tol``.

    python scripts/check_pointcept_import.py --pointcept-src /path/to/Pointcept[.git] [--full-size]
        [--ponderv2-src /path/to/PonderV2[.git]]   # + PonderV2's own v1m3 in its pre-training layout
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

FILES = {
    "v1m1": "pointcept/models/sparse_unet/spconv_unet_v1m1_base.py",
    "v1m3": "pointcept/models/sparse_unet/spconv_unet_v1m3_pdnorm.py",
    "ppt": "pointcept/models/point_prompt_training/point_prompt_training_v1m1_language_guided.py",
}

# Shims: only what the three files import and call.
SHIMS = {
    "pointcept/__init__.py": "",
    "pointcept/models/__init__.py": "",
    "pointcept/models/sparse_unet/__init__.py": "",
    "pointcept/models/point_prompt_training/__init__.py": "",
    "pointcept/models/builder.py": """
        class _Registry:
            def __init__(self):
                self.classes = {}

            def register_module(self, name=None, module=None):
                def deco(cls):
                    self.classes[name or cls.__name__] = cls
                    return cls
                return deco

            def build(self, cfg):
                cfg = dict(cfg)
                return self.classes[cfg.pop("type")](**cfg)

        MODELS = _Registry()
    """,
    "pointcept/models/utils/__init__.py": """
        import torch

        def offset2batch(offset):
            counts = torch.diff(offset, prepend=offset.new_zeros(1))
            return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)
    """,
    "pointcept/models/utils/structure.py": """
        class Point(dict):
            pass
    """,
    "pointcept/models/losses/__init__.py": """
        def build_criteria(cfg):
            return None
    """,
    "torch_geometric/__init__.py": "",
    "torch_geometric/utils.py": """
        def scatter(*args, **kwargs):
            raise NotImplementedError("enc_mode is not used by this check")
    """,
    "timm/__init__.py": "",
    "timm/layers.py": """
        from torch.nn.init import trunc_normal_
    """,
    "clip.py": """
        # a stand-in for OpenAI CLIP: random text embeddings of the right width, logit_scale = ln(100)
        import math
        import torch
        from torch import nn

        class _Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.text_projection = nn.Parameter(torch.zeros(512, 512))
                self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

            def encode_text(self, tokens):
                g = torch.Generator().manual_seed(7)
                return torch.randn(len(tokens), 512, generator=g)

        def load(name, device="cpu", download_root=None):
            return _Model(), None

        def tokenize(texts):
            return torch.zeros(len(texts), 77, dtype=torch.long)
    """,
}


PONDER_FILES = {"v1m3": "ponder/models/sparse_unet/spconv_unet_v1m3_pdnorm.py"}
PONDER_SHIMS = {
    "ponder/__init__.py": "",
    "ponder/models/__init__.py": "",
    "ponder/models/sparse_unet/__init__.py": "",
    "ponder/models/builder.py": "from pointcept.models.builder import _Registry\nMODELS = _Registry()\n",
    "ponder/models/utils/__init__.py": "from pointcept.models.utils import offset2batch\n",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": "from torch.nn.init import trunc_normal_\n",
}


class AttrDict(dict):
    """Pointcept's configs are attribute-accessible (``backbone.type``)."""

    __getattr__ = dict.__getitem__


def read_source(src: Path, rel: str, rev: str) -> str:
    if (src / rel).is_file():
        return (src / rel).read_text()
    try:
        return subprocess.run(["git", "--git-dir", str(src if not (src / ".git").exists() else src / ".git"),
                               "show", f"{rev}:{rel}"], check=True, capture_output=True, text=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise SystemExit(f"cannot read {rel} from {src} ({err})") from None


def build_package(src: Path, rev: str, root: Path, ponder_src: Path | None = None) -> None:
    shims = {**SHIMS, **(PONDER_SHIMS if ponder_src else {})}
    for rel, text in shims.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    files = [(src, rel) for rel in FILES.values()] + [(ponder_src, rel) for rel in PONDER_FILES.values() if ponder_src]
    for where, rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(read_source(where, rel, rev if where == src else "HEAD"))


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (eval-mode outputs then depend on every tensor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(100)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("logit_scale") or name.endswith("class_embedding"):
                continue
            elif t.dtype.is_floating_point:
                fan = t[0].numel() if t.ndim > 1 else 1
                scale = 1.0 / math.sqrt(fan) if t.ndim > 1 else 0.1
                base = 1.0 if name.endswith(".weight") and t.ndim == 1 else 0.0
                t.copy_(base + torch.randn(t.shape, generator=g) * scale)


def make_input(n_per_sample=(1500, 1100), extent=40, in_channels=6, seed=3) -> dict:
    g = torch.Generator().manual_seed(seed)
    coords, offset = [], []
    for n in n_per_sample:
        flat = torch.randperm(extent ** 3, generator=g)[:n]
        coords.append(torch.stack([flat // (extent * extent), (flat // extent) % extent, flat % extent], 1))
        offset.append(n + (offset[-1] if offset else 0))
    grid = torch.cat(coords).int()
    return {"grid_coord": grid, "coord": grid.float() * 0.02, "feat": torch.randn(len(grid), in_channels, generator=g),
            "offset": torch.tensor(offset)}


def save_trainer_checkpoint(model: torch.nn.Module, path: Path) -> None:
    torch.save({"epoch": 100, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer": {}, "scheduler": {}, "scaler": None}, path)


def cli(*args: str) -> None:
    from pretrain3d.cli import main

    rc = main(["import-checkpoint", *args])
    if rc:
        raise SystemExit(f"import-checkpoint {' '.join(args)} failed ({rc})")


def ours(path: Path):
    from pretrain3d.models.pdnorm import PDNormSpec
    from pretrain3d.models.spunet import SpUNet

    ck = torch.load(path, map_location="cpu", weights_only=True)
    a = ck["architecture"]
    spec = PDNormSpec.from_dict(a["pdnorm"]) if a["pdnorm"] else None
    m = SpUNet(in_channels=a["in_channels"], num_classes=0, stem_channels=a["stem_channels"], channels=a["channels"],
               layers=a["layers"], bn_eps=a["bn_eps"], norm=spec)
    m.load_state_dict(ck["backbone"], strict=True)
    return m.eval(), ck


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@torch.no_grad()
def run(src: Path, rev: str, full_size: bool, work: Path, ponder_src: Path | None = None) -> dict:
    build_package(src, rev, work / "pkg", ponder_src)
    sys.path.insert(0, str(work / "pkg"))
    import importlib

    v1m1 = importlib.import_module("pointcept.models.sparse_unet.spconv_unet_v1m1_base")
    v1m3 = importlib.import_module("pointcept.models.sparse_unet.spconv_unet_v1m3_pdnorm")
    ppt = importlib.import_module("pointcept.models.point_prompt_training.point_prompt_training_v1m1_language_guided")
    if full_size:
        size = dict(base_channels=32, channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2))
    else:
        size = dict(base_channels=16, channels=(16, 32, 64, 64, 64, 64, 48, 48), layers=(1, 2, 2, 2, 1, 1, 1, 2))
    data = make_input()
    results: dict[str, float] = {}

    # --- v1m1: a DefaultSegmentor's backbone with its classifier
    k = 20
    pc = v1m1.SpUNetBase(in_channels=6, num_classes=k, **size).eval()
    randomize(pc, 1)

    class Segmentor(torch.nn.Module):  # DefaultSegmentor's key layout (backbone.*)
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

    save_trainer_checkpoint(Segmentor(pc), work / "v1m1.pth")
    names = ",".join(f"class{i}" for i in range(k))
    cli("--format", "pointcept", "--input", str(work / "v1m1.pth"), "--output", str(work / "v1m1_backbone.pt"),
        "--class-names", names)
    mine, ck = ours(work / "v1m1_backbone.pt")
    head = ck["heads"]["final_conv"]
    logits_ref = pc(dict(data))
    feat = mine(dict(data))
    results["v1m1 seg logits"] = maxdiff(feat @ head["weight"].T + head["bias"], logits_ref)
    pc0 = v1m1.SpUNetBase(in_channels=6, num_classes=0, **size).eval()
    pc0.load_state_dict({n: t for n, t in pc.state_dict().items() if not n.startswith("final.")}, strict=True)
    results["v1m1 features"] = maxdiff(feat, pc0(dict(data)))

    # --- v1m3 (PDNorm) inside PPT-v1m1, the released configs' condition orders
    bb_conditions = ("ScanNet", "S3DIS", "Structured3D")
    ppt_conditions = ("Structured3D", "ScanNet", "S3DIS")
    backbone = AttrDict(type="SpUNet-v1m3", in_channels=6, num_classes=0, context_channels=256,
                        conditions=bb_conditions, zero_init=False, norm_decouple=True, norm_adaptive=True,
                        norm_affine=True, **size)
    valid_index = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 25, 26, 33, 34, 35),
                   (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 20, 22, 24, 25, 27, 34),
                   (0, 1, 4, 5, 6, 7, 8, 10, 19, 29, 30, 31, 32))
    model = ppt.PointPromptTraining(backbone=backbone, backbone_out_channels=size["channels"][-1],
                                    conditions=ppt_conditions, valid_index=valid_index).eval()
    randomize(model, 2)
    save_trainer_checkpoint(model, work / "ppt.pth")
    cli("--format", "pointcept", "--input", str(work / "ppt.pth"), "--output", str(work / "ppt_pdnorm.pt"))
    kept, ck = ours(work / "ppt_pdnorm.pt")
    lang = ck["heads"]["language_head"]
    for cond in bb_conditions:
        sample = dict(data, condition=[cond])
        ref_feat = model.backbone(dict(sample, context=model.embedding_table(
            torch.tensor([ppt_conditions.index(cond)]))))
        ref_logits = model(dict(sample))["seg_logits"]
        f_kept = kept(dict(sample))
        results[f"v1m3 {cond} features (PDNorm kept)"] = maxdiff(f_kept, ref_feat)
        cli("--format", "pointcept", "--input", str(work / "ppt.pth"), "--output", str(work / f"ppt_{cond}.pt"),
            "--condition", cond)
        folded, _ = ours(work / f"ppt_{cond}.pt")
        f_fold = folded(dict(data))
        results[f"v1m3 {cond} features (folded)"] = maxdiff(f_fold, ref_feat)
        z = f_fold @ lang["proj_weight"].T + lang["proj_bias"]
        z = z / z.norm(dim=-1, keepdim=True)
        logits = lang["logit_scale"].exp() * z @ lang["class_embedding"][list(valid_index[ppt_conditions.index(cond)])].T
        results[f"v1m3 {cond} PPT seg logits (folded + kept head)"] = maxdiff(logits, ref_logits)
    if ponder_src:
        results.update(check_ponderv2(work, size, data))
    results["_scale"] = {"v1m1 logits max abs": round(float(logits_ref.abs().max()), 4),
                         "v1m1 features max abs": round(float(feat.abs().max()), 4),
                         "PPT logits max abs": round(float(ref_logits.abs().max()), 2), "points": int(data["offset"][-1]),
                         "size": "full" if full_size else "small"}
    return results


@torch.no_grad()
def check_ponderv2(work: Path, size: dict, data: dict) -> dict:
    """PonderV2's own SpUNet-v1m3 inside a PonderIndoor-v2 key layout: ``backbone.*``, ``embedding_table``
    (the wrapper's condition order, as PonderIndoor.extract_feature indexes it), plus projector and renderer
    tensors (stand-ins with PonderV2's prefixes: the importer must drop them by rule)."""
    import importlib

    pv1m3 = importlib.import_module("ponder.models.sparse_unet.spconv_unet_v1m3_pdnorm")
    bb_conditions = ("ScanNet", "S3DIS", "Structured3D")
    conditions = ("Structured3D", "ScanNet", "S3DIS")

    class PonderLayout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = pv1m3.SpUNetBase(in_channels=6, num_classes=0, context_channels=256,
                                             conditions=bb_conditions, zero_init=False, norm_decouple=True,
                                             norm_adaptive=True, norm_affine=True, **size)
            self.proj_net = torch.nn.Conv3d(size["channels"][-1], 128, 3)
            self.renderer = torch.nn.ModuleDict({"field": torch.nn.Linear(64, 65)})
            self.embedding_table = torch.nn.Embedding(len(conditions), 256)

        def features(self, sample, cond):  # PonderIndoor.extract_feature without masking
            ctx = self.embedding_table(torch.tensor([conditions.index(cond)]))
            return self.backbone(dict(sample, condition=[cond], context=ctx))

    model = PonderLayout().eval()
    randomize(model, 4)
    save_trainer_checkpoint(model, work / "ponder.pth")
    out = {}
    cli("--format", "ponderv2", "--input", str(work / "ponder.pth"), "--output", str(work / "ponder_pd.pt"))
    kept, ck = ours(work / "ponder_pd.pt")
    assert sorted(ck["dropped"]) == sorted(k for k in model.state_dict() if k.startswith(("proj_net.", "renderer.")))
    for cond in bb_conditions:
        ref = model.features(dict(data), cond)
        out[f"ponderv2 {cond} features (PDNorm kept)"] = maxdiff(kept(dict(data, condition=cond)), ref)
        cli("--format", "ponderv2", "--input", str(work / "ponder.pth"), "--output", str(work / f"ponder_{cond}.pt"),
            "--condition", cond)
        folded, _ = ours(work / f"ponder_{cond}.pt")
        out[f"ponderv2 {cond} features (folded)"] = maxdiff(folded(dict(data)), ref)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pointcept-src", required=True, type=Path, help="Pointcept checkout or git directory")
    ap.add_argument("--ponderv2-src", type=Path, default=None,
                    help="also check PonderV2's own SpUNet-v1m3 in the PonderIndoor-v2 layout (checkout or git dir)")
    ap.add_argument("--rev", default="HEAD", help="git revision when --pointcept-src is a git directory")
    ap.add_argument("--full-size", action="store_true", help="SpUNet at its full size (default: a small setting)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json", type=Path, default=None, help="also write the differences as JSON")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.pointcept_src, args.rev, args.full_size, Path(tmp), args.ponderv2_src)
    scale = res.pop("_scale")
    print(f"max abs difference, ours vs Pointcept ({scale})")
    for name, d in res.items():
        print(f"  {name:<55} {d:.3e}")
    if args.json:
        args.json.write_text(json.dumps({"differences": res, "scale": scale}, indent=2))
    bad = {k: v for k, v in res.items() if not v <= args.tol}
    if bad:
        print(f"FAIL: above --tol {args.tol}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
