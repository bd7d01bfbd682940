"""`pretrain3d <stage> ...` — parse arguments, load the config, call a stage. Nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pretrain3d import profiling
from pretrain3d.config import IMPORT_FORMATS
from pretrain3d.errors import Pretrain3DError
from pretrain3d.methods.registry import REGISTRY, method_names
from pretrain3d.retrieval import SOURCES

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

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the pipeline's step declarations (one graph)")
    p.add_argument("--params", default="params.yaml", help="the params file DVC reads (default params.yaml)")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="only check that --out is current (exit 1 if not)")

    p = sub.add_parser("generate", help="generate the embedded procedural-room dataset (raw layout)")
    _add_config(p)

    p = sub.add_parser("dataset-data", help="generate (when embedded) and preprocess one of multi_dataset.datasets")
    _add_config(p)
    p.add_argument("name", help="its prompt name (a key of multi_dataset.datasets)")

    p = sub.add_parser("preprocess", help="raw scenes → processed-scene folders")
    _add_config(p)
    p.add_argument("dataset", nargs="?", choices=["config", "sevenscenes", "scannet", "scannet_npy", "s3dis"],
                   default="config",
                   help="'config' (default): data.dataset of the config into data.processed_root; 'sevenscenes': "
                   "fuse a 7-Scenes sequence; 'scannet': the official ScanNet v2 release; 'scannet_npy': a folder "
                   "preprocessed by Pointcept; 's3dis': Stanford3dDataset_v1.2_Aligned_Version (options from the "
                   "config's data.scannet / data.s3dis)")
    p.add_argument("--raw-root", help="the raw dataset folder (default data.raw_root; sevenscenes: "
                   "data.sevenscenes.root)")
    p.add_argument("--out-root", help="output folder, written scene by scene (default: data.processed_root, "
                   "replaced as a whole); required for sevenscenes")
    p.add_argument("--scenes", nargs="+", metavar="ID", help="scannet: only these scene ids (any split)")

    p = sub.add_parser("features", help="cache the frozen 2D teacher's features of every frame")
    _add_config(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("pretrain", help="pre-train a backbone (scratch: a seeded random initialisation)")
    _add_config(p)
    p.add_argument("--method", required=True, choices=method_names())
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("import-checkpoint", help="convert a released trainer checkpoint (Pointcept's layout) into a "
                       "backbone file, strictly (every backbone tensor mapped, every other key kept as a head or "
                       "dropped by a named rule, else an error)")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS,
                   help="the checkpoint's origin (models/pointcept_import.py lists each format's rules; README "
                   "'Scoring a released checkpoint')")
    p.add_argument("--input", required=True, metavar="CKPT", help="the checkpoint (.pth)")
    p.add_argument("--output", required=True, metavar="BACKBONE", help="the backbone file to write")
    p.add_argument("--condition", default=None, metavar="NAME",
                   help="PDNorm (SpUNet-v1m3): fold the norm layers under this dataset into a plain backbone "
                   "(what fine-tuning loads); without it the PDNorm backbone is kept")
    p.add_argument("--conditions", default=None, metavar="A,B,C",
                   help="the backbone config's PDNorm conditions order (default ScanNet,S3DIS,Structured3D)")
    p.add_argument("--prompt-conditions", default=None, metavar="A,B,C",
                   help="the prompt wrapper's conditions order, rows of embedding_table (default Structured3D,ScanNet,S3DIS)")
    p.add_argument("--class-names", default=None, metavar="FILE|A,B,...",
                   help="class names, checked against the checkpoint's classifier rows and kept with the head")
    p.add_argument("--uses-gt-labels", default="true", choices=["true", "false"],
                   help="record whether the checkpoint's training used ground-truth labels (default true: a "
                   "checkpoint cannot prove it did not)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load with weights_only=False (only for a file you trust)")

    p = sub.add_parser("real-check", help="run a method briefly on a real RGB-D sequence (the 7-Scenes fixture) "
                       "and draw its check (methods.registry real_check)")
    _add_config(p)
    p.add_argument("--method", required=True, choices=[n for n, s in REGISTRY.items() if s.real_check])
    p.add_argument("--root", default=None, help="7-Scenes sequence folder (default data.sevenscenes.root)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--steps", type=int, default=None, help="default: the method's real_check_steps")
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
    p.add_argument("--model", required=True, nargs="+",
                   help="one model, or several of one method evaluated in one process (each into its own "
                   "folder; protocol and seed read from each checkpoint)")
    p.add_argument("--method", required=True)
    p.add_argument("--protocol", default="full", choices=["full", "la", "lr", "probe"])
    p.add_argument("--seed", type=int, default=None, help="with --out-dir")
    p.add_argument("--out-dir", default=None, help="one model's results folder; without it every --model writes "
                   "beside its model.pt")
    p.add_argument("--export-dir", default=None,
                   help="also write the val predictions as ScanNet <scene>.txt files (NYU40 ids) into this folder")

    p = sub.add_parser("export-benchmark",
                       help="write a split's predictions and/or ground truth as ScanNet <scene>.txt files")
    _add_config(p)
    p.add_argument("--split", default="val", help="processed split (test scenes need no labels for predictions)")
    p.add_argument("--model", default=None, help="segmentation model (needed for --pred-dir); eval.tta applies")
    p.add_argument("--pred-dir", default=None, help="folder for predictions (replaced as a whole)")
    p.add_argument("--gt-dir", default=None, help="folder for ground truth: segment20 → NYU40, ignore → 0")

    p = sub.add_parser("eval-benchmark", help="score <scene>.txt predictions with the official benchmark rules")
    p.add_argument("--format", default="scannet", choices=["scannet"])
    p.add_argument("--gt-dir", required=True, help="one <scene>.txt of NYU40 ids per scene")
    p.add_argument("--pred-dir", required=True, help="one <scene>.txt per ground-truth scene")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON")

    p = sub.add_parser("report", help="summary.json + report.md from metrics files")
    _add_config(p)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out-dir", default="results")
    p.add_argument("--references", default=None, metavar="JSON",
                   help="paper references table from `log-references` (adds the 'Paper references' section)")
    p.add_argument("--renders", nargs="*", default=[], metavar="BACKBONE",
                   help="backbone.pt files of methods with report figures (methods.registry report_visual)")
    p.add_argument("--real-check", nargs="*", default=[], metavar="FILE",
                   help="outputs of `real-check` (<dir>/<method>/render.png, render.json) to show")
    p.add_argument("--queries", nargs="*", default=[], metavar="JSON",
                   help="metrics.json files of `query-benchmark` (adds the 'Scene queries' section)")
    p.add_argument("--study", nargs="*", default=[], metavar="JSON",
                   help="metrics.json files of `multi-dataset-study` (adds the 'Several datasets' section)")
    p.add_argument("--no-tracking", action="store_true",
                   help="write the files only (the pipeline's early method-comparison report; the full report is tracked)")

    p = sub.add_parser("multi-dataset-study", help="one variant of the multi-dataset experiment (single-<dataset> | joint "
                       "| prompt variants, see ppt_study): train on the multi_dataset datasets, score each one's val split")
    _add_config(p)
    p.add_argument("--variant", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("download", help="build data.raw_root from data.download (URLs with sha256, or your script)")
    _add_config(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("index", help="index a split's scenes as keypoints (a scene repository for `query`)")
    _add_config(p)
    p.add_argument("--source", required=True, choices=list(SOURCES),
                   help="; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    p.add_argument("--backbone", default=None, help="the pre-training run's backbone.pt (sources that need one)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--k", type=int, default=128, help="keypoints per scene")
    p.add_argument("--rule", default="fps", choices=["fps", "distinct"])
    p.add_argument("--text-head", action="store_true",
                   help="also fit the text head for `query text` (on the train split's ground-truth labels)")

    p = sub.add_parser("query", help="rank an index's scenes for a query (image: an RGB file; scene: a processed "
                       "scene folder, i.e. duplicate detection; text: a sentence)")
    _add_config(p)
    p.add_argument("kind", choices=["image", "scene", "text"])
    p.add_argument("--source", required=True, choices=list(SOURCES))
    p.add_argument("--backbone", default=None)
    p.add_argument("--index", required=True, help="index folder made by `pretrain3d index` with the same source")
    p.add_argument("--image", default=None, help="query image: an RGB image file (PNG / JPEG)")
    p.add_argument("--scene", default=None, help="query scene: a processed scene folder (coord.npy, frames.json)")
    p.add_argument("--text", default=None, help="query sentence, e.g. 'a room with a bathtub' (needs the index's "
                   "text head, fitted on ground-truth labels)")
    p.add_argument("--top", type=int, default=5)

    p = sub.add_parser("query-benchmark", help="index the val repository (val + rescans) with one source and score "
                       "the image, duplicate and text query benchmarks")
    _add_config(p)
    p.add_argument("--source", required=True, choices=list(SOURCES))
    p.add_argument("--backbone", default=None)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("log-references", help="log the papers' numbers as MLflow reference runs + a JSON table")
    _add_config(p)
    p.add_argument("--out", default="results/references.json")
    p.add_argument("--references", default=None, metavar="YAML",
                   help="reference file (default: the packaged pretrain3d/tracking/paper_references.yaml)")
    return ap


def main(argv: list[str] | None = None) -> int:
    profiling.start()
    args = build_parser().parse_args(argv)
    from pretrain3d.stages.common import load, setup_logging

    setup_logging(args.verbose)
    status = 1  # an exception that escapes
    try:
        status = _dispatch(args, load)
        return status
    except Pretrain3DError as err:
        print(f"pretrain3d {args.cmd}: error: {err}", file=sys.stderr)
        status = 2
        return status
    finally:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 speaks for the job
            profiling.write(args.cmd, _job_name(args), status)


def _job_name(args) -> str:
    """The job within its command, for the profile file: the wildcard-like arguments it got."""
    parts = [str(getattr(args, k)) for k in ("method", "variant", "source", "protocol", "name", "dataset")
             if getattr(args, k, None) not in (None, "")]
    if getattr(args, "seed", None) is not None:
        parts.append(f"seed{args.seed}")
    return "-".join(parts)


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
    if args.cmd == "dvc-yaml":
        from pretrain3d.atomic import write_text
        from pretrain3d.config import load_config
        from pretrain3d.workflow.dvc_yaml import generate

        text = generate(load_config(args.params), args.params)
        out = Path(args.out)
        if args.check:
            if out.is_file() and out.read_text() == text:
                return 0
            print(f"{out} is not what `pretrain3d dvc-yaml` makes of {args.params}: run `pretrain3d dvc-yaml`",
                  file=sys.stderr)
            return 1
        write_text(out, text)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    if args.cmd == "import-checkpoint":  # needs no config
        from pretrain3d.stages.import_checkpoint import import_checkpoint

        def names(v):
            return [x.strip() for x in v.split(",") if x.strip()] if v else None

        import_checkpoint(args.input, args.output, args.format, condition=args.condition,
                          conditions=names(args.conditions), prompt_conditions=names(args.prompt_conditions),
                          class_names=args.class_names, uses_gt_labels=args.uses_gt_labels == "true",
                          allow_pickle=args.allow_pickle)
        return 0
    if args.cmd == "eval-benchmark":  # needs no config
        from pretrain3d.stages.evaluate import eval_benchmark

        eval_benchmark(args.format, args.gt_dir, args.pred_dir, args.json)
        return 0

    if args.cmd == "preprocess" and args.dataset != "config" and not args.config and not Path("params.yaml").is_file():
        # Standalone use outside a project: the defaults and the flags, no tracking store in cwd.
        from pretrain3d.config import Params

        cfg = Params.model_validate({"tracking": {"enabled": False}})
    else:
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
    elif args.cmd == "dataset-data":
        from pretrain3d.stages.data import dataset_data

        dataset_data(cfg, args.name)
    elif args.cmd == "preprocess":
        from pretrain3d.stages import data

        if args.dataset == "sevenscenes":
            if not args.out_root:
                raise SystemExit("pretrain3d preprocess sevenscenes: --out-root is required")
            data.fuse_sevenscenes(args.raw_root or cfg.data.sevenscenes.root, args.out_root,
                                  cfg.data.sevenscenes.frame_step, cfg.data.sevenscenes.voxel_size)
        elif args.dataset == "config":
            data.preprocess(cfg)
        else:
            data.preprocess(cfg, args.dataset, args.raw_root, args.out_root, args.scenes)
    elif args.cmd == "features":
        from pretrain3d.stages.features import cache_features

        cache_features(cfg, progress=not args.no_progress)
    elif args.cmd == "pretrain":
        if REGISTRY[args.method].plugin is None:  # not trained: its stage makes the file (seeded init, import)
            import importlib

            importlib.import_module(REGISTRY[args.method].stage).build_backbone_file(
                cfg, args.method, args.seed, args.out_dir)
        else:
            from pretrain3d.stages.pretrain import pretrain

            pretrain(cfg, args.method, args.seed, args.out_dir, progress=not args.no_progress)
    elif args.cmd in ("index", "query"):
        from pretrain3d.stages import scene_queries as sq

        source = sq.build_source(cfg, args.source, args.backbone)
        if args.cmd == "index":
            sq.index_split(cfg, source, args.split, args.out, k=args.k, rule=args.rule)
            if args.text_head:
                sq.fit_text_head_for(cfg, source, args.out)
        else:
            what = getattr(args, args.kind)
            if what is None:
                raise SystemExit(f"pretrain3d query {args.kind}: --{args.kind} is required")
            if args.kind == "image":
                res = sq.query_image(source, args.index, sq.read_image(what), top=args.top)
            elif args.kind == "scene":
                res = sq.query_scene(source, args.index, what, top=args.top)
            else:
                res = sq.query_text(cfg, source.fingerprint, args.index, what, top=args.top)
                print("(text head fitted on ground-truth labels: uses_gt_labels=true)")
            for rank, (scene, score) in enumerate(res["top"], 1):
                print(f"{rank:>3}  {scene}  {score:.4f}")
    elif args.cmd == "query-benchmark":
        from pretrain3d.stages.query_benchmark import score_queries

        score_queries(cfg, args.source, args.seed, args.out_dir, backbone=args.backbone,
                      progress=not args.no_progress)
    elif args.cmd == "real-check":
        from pretrain3d.stages.real_check import real_check

        real_check(cfg, args.method, args.out_dir, steps=args.steps, progress=not args.no_progress, root=args.root)
    elif args.cmd == "finetune":
        from pretrain3d.stages.finetune import finetune

        finetune(cfg, args.method, args.seed, args.out_dir, init_backbone=args.init_backbone,
                 protocol=args.protocol, progress=not args.no_progress)
    elif args.cmd == "evaluate":
        from pretrain3d.stages.evaluate import evaluate, evaluate_models

        if args.out_dir is None:  # each model's results beside its model.pt (the workflow's job per method)
            if args.export_dir or args.seed is not None:
                raise SystemExit("pretrain3d evaluate: --export-dir and --seed go with --out-dir (one model)")
            evaluate_models(cfg, args.model, args.method)
        else:
            if len(args.model) > 1 or args.seed is None:
                raise SystemExit("pretrain3d evaluate: --out-dir takes one --model and its --seed")
            evaluate(cfg, args.model[0], args.out_dir, args.method, args.seed, protocol=args.protocol,
                     export_dir=args.export_dir)
    elif args.cmd == "export-benchmark":
        from pretrain3d.stages.evaluate import export_benchmark

        if not (args.pred_dir or args.gt_dir):
            raise SystemExit("pretrain3d export-benchmark: give --pred-dir and/or --gt-dir")
        if args.pred_dir and not args.model:
            raise SystemExit("pretrain3d export-benchmark: --pred-dir needs --model")
        export_benchmark(cfg, args.split, pred_dir=args.pred_dir, gt_dir=args.gt_dir, model_path=args.model)
    elif args.cmd == "report":
        from pretrain3d.stages.report import report

        report(cfg, args.metrics, args.out_dir, references=args.references, renders=args.renders,
               real_check=args.real_check, queries=args.queries, ppt_study=args.study, track=not args.no_tracking)
    elif args.cmd == "multi-dataset-study":
        from pretrain3d.stages.ppt_study import run_variant

        run_variant(cfg, args.variant, args.seed, args.out_dir, progress=not args.no_progress)
    elif args.cmd == "download":
        from pretrain3d.stages.download import download_raw

        download_raw(cfg, progress=not args.no_progress)
    elif args.cmd == "log-references":
        from pretrain3d.stages.references import log_references

        log_references(cfg, args.out, args.references)
    return 0


if __name__ == "__main__":
    sys.exit(main())
