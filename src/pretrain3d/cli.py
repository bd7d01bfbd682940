"""`pretrain3d <stage> ...` — parse arguments, load the config, call a stage. Nothing else."""

from __future__ import annotations

import argparse
import logging
import sys

from pretrain3d.errors import Pretrain3DError

log = logging.getLogger("pretrain3d")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", action="append", metavar="YAML",
                   help="params.yaml and overlays, later ones win (default: params.yaml)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pretrain3d", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("validate-config", help="validate params.yaml (+ overlays) and print the resolved config")
    _add_config(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("schema", help="write the JSON schema of params.yaml")
    p.add_argument("--out", default=None, help="file to write (default: stdout)")

    p = sub.add_parser("generate", help="generate the embedded procedural-room dataset (raw layout)")
    _add_config(p)

    p = sub.add_parser("preprocess", help="raw scenes → processed-scene folders")
    _add_config(p)
    p.add_argument("dataset", nargs="?", choices=["config", "sevenscenes"], default="config",
                   help="'config' (default): data.dataset of the config; 'sevenscenes': fuse a 7-Scenes sequence")
    p.add_argument("--raw-root", help="sevenscenes: the sequence folder (default data.sevenscenes.root)")
    p.add_argument("--out-root", help="sevenscenes: output scene folder")

    p = sub.add_parser("features", help="cache the frozen 2D teacher's features of every frame")
    _add_config(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("pretrain", help="pre-train a backbone (scratch: a seeded random initialisation)")
    _add_config(p)
    p.add_argument("--method", required=True, choices=["scratch", "ppkt"])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("finetune", help="train a segmentation model (from scratch or a pre-trained backbone)")
    _add_config(p)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--init-backbone", default=None, help="backbone checkpoint from pre-training (strict keys)")
    p.add_argument("--protocol", default="full", choices=["full", "la", "lr", "probe"])
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("evaluate", help="evaluate a segmentation model on every val point")
    _add_config(p)
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--protocol", default="full", choices=["full", "la", "lr", "probe"])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("report", help="summary.json + report.md from metrics files")
    _add_config(p)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out-dir", default="results")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pretrain3d.stages.common import load, setup_logging

    setup_logging(args.verbose)
    try:
        return _dispatch(args, load)
    except Pretrain3DError as err:
        print(f"pretrain3d {args.cmd}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args, load) -> int:
    if args.cmd == "schema":
        import json

        from pretrain3d.config import json_schema
        from pretrain3d.stages.data import write_schema

        if args.out:
            write_schema(args.out)
        else:
            print(json.dumps(json_schema(), indent=2, sort_keys=True))
        return 0

    cfg = load(args.config)
    if args.cmd == "validate-config":
        from pretrain3d.config import config_hash, dump_yaml

        if not args.quiet:
            print(dump_yaml(cfg), end="")
        print(f"config OK (hash {config_hash(cfg)})", file=sys.stderr)
        return 0
    if args.cmd == "generate":
        from pretrain3d.stages.data import generate

        generate(cfg)
    elif args.cmd == "preprocess":
        from pretrain3d.stages import data

        if args.dataset == "sevenscenes":
            if not args.out_root:
                raise SystemExit("pretrain3d preprocess sevenscenes: --out-root is required")
            data.fuse_sevenscenes(args.raw_root or cfg.data.sevenscenes.root, args.out_root,
                                  cfg.data.sevenscenes.frame_step, cfg.data.sevenscenes.voxel_size)
        else:
            data.preprocess(cfg)
    elif args.cmd == "features":
        from pretrain3d.stages.features import cache_features

        cache_features(cfg, progress=not args.no_progress)
    elif args.cmd == "pretrain":
        if args.method == "scratch":
            from pretrain3d.stages.init_backbone import init_backbone

            init_backbone(cfg, args.seed, args.out_dir)
        else:
            from pretrain3d.stages.pretrain import pretrain

            pretrain(cfg, args.method, args.seed, args.out_dir, progress=not args.no_progress)
    elif args.cmd == "finetune":
        from pretrain3d.stages.finetune import finetune

        finetune(cfg, args.method, args.seed, args.out_dir, init_backbone=args.init_backbone,
                 protocol=args.protocol, progress=not args.no_progress)
    elif args.cmd == "evaluate":
        from pretrain3d.stages.evaluate import evaluate

        evaluate(cfg, args.model, args.out_dir, args.method, args.seed, protocol=args.protocol)
    elif args.cmd == "report":
        from pretrain3d.stages.report import report

        report(cfg, args.metrics, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
