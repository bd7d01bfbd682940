"""Point Prompt Training (Wu et al., CVPR 2024, arXiv 2308.09718): one backbone, several datasets.

What it does here, and why:

* **Data**: each batch comes from one dataset (``data.multi_dataset``), each dataset's training scenes
  augmented and voxelised exactly like fine-tuning's (``pretrain.augment``, ``train.grid_size``);
  per-dataset sampling ratios are ``multi_dataset.loops`` (Pointcept's ``loop``).
* **Backbone**: SpUNet with PDNorm (``models.pdnorm``: per-dataset BatchNorm + prompt modulation,
  each switchable: ``pretrain.ppt.decouple`` / ``adaptive``), or plain BatchNorm (``pdnorm: false``:
  the naive joint baseline).
* **Head** (``models.ppt_heads``): language-guided categorical alignment (cosine with frozen
  class-name text embeddings, temperature 0.01, each dataset's loss over its own classes only), or a
  linear head per dataset (PPT-v1m2), or one linear head over the union of names (naive joint).
  The text encoder is this project's interface (offline MiniLM by default; CLIP ViT-B/16 = PPT's).
* **Loss**: cross-entropy, ignore -1 (PPT: CE; the Lovász term of some configs is left out).
* **As pre-training** (method ``ppt``): the backbone handed to fine-tuning is the PDNorm backbone
  folded to one dataset's condition (``pretrain.ppt.export_condition``; ``fold_condition`` is exact
  in eval mode), so the single-dataset fine-tuning stage loads it like any other backbone. Our choice:
  by default the pre-training datasets leave the target out (``pretrain.ppt.datasets``), so target labels
  reach the backbone only through the fine-tuning protocol and the limited-annotation comparison with
  the label-free methods stays fair; the run is tagged ``uses_gt_labels=true`` with the datasets it saw.
  The multi-dataset backbone itself (all conditions) and the head are saved beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.data.labels import IGNORE_INDEX
from pretrain3d.models.ppt_heads import DecoupledHeads, JointHead, LabelSpaces, LanguageHead

__all__ = ["PPTModel", "ppt_loss", "dataset_config", "label_spaces", "build_ppt_model", "build"]


class PPTModel(nn.Module):
    """backbone (PDNorm or plain) + a multi-dataset head; ``forward`` gives the training logits
    (the union for the joint head), ``dataset_logits`` the logits over the batch's dataset's classes."""

    def __init__(self, backbone: nn.Module, head: nn.Module, spaces: LabelSpaces):
        super().__init__()
        self.backbone, self.head, self.spaces = backbone, head, spaces

    @staticmethod
    def dataset_of(batch: dict) -> str:
        c = batch.get("condition")
        if c is None:
            raise ValueError("a multi-dataset batch needs batch['condition'] (its dataset's name)")
        return c if isinstance(c, str) else c[0]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone(batch), self.dataset_of(batch))

    def dataset_logits(self, batch: dict) -> torch.Tensor:
        feat = self.backbone(batch)
        if isinstance(self.head, JointHead):
            return self.head.dataset_logits(feat, self.dataset_of(batch))
        return self.head(feat, self.dataset_of(batch))


class ConditionedSegmentor(nn.Module):
    """A PPTModel as a single-dataset segmentor (what evaluation.inference expects)."""

    def __init__(self, model: PPTModel, dataset: str):
        super().__init__()
        self.model, self.dataset = model, dataset

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.dataset_logits({**batch, "condition": self.dataset})


def ppt_loss(model: PPTModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    dataset = model.dataset_of(batch)
    target = batch["segment"]
    model.spaces.check_labels(dataset, target)
    logits = model(batch)
    if isinstance(model.head, JointHead):
        target = model.spaces.to_union(dataset, target)
    valid = target != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0, {f"loss_{dataset}": 0.0}
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        acc = float((logits[valid].argmax(1) == target[valid]).float().mean())
    return loss, {"acc": acc, f"loss_{dataset}": float(loss.detach())}


def dataset_config(cfg, name: str):
    """The `data`-style section of dataset ``name`` (multi_dataset.target is `data` itself)."""
    md = cfg.multi_dataset
    if name == md.target:
        return cfg.data
    if name not in md.datasets:
        raise ValueError(f"unknown dataset {name!r}: multi_dataset has {md.names()}")
    return md.datasets[name]


def class_names_of(data_cfg) -> list[str]:
    from pretrain3d.data.labels import dataset_class_names

    domain = data_cfg.synthetic.domain if data_cfg.dataset == "synthetic" else None
    return dataset_class_names(data_cfg.dataset, data_cfg.num_classes, domain=domain)


def label_spaces(cfg, names: Sequence[str]) -> LabelSpaces:
    return LabelSpaces.build({n: class_names_of(dataset_config(cfg, n)) for n in names})


def text_embeddings(pc, spaces: LabelSpaces) -> torch.Tensor:
    from pretrain3d.teachers.text import build_text_encoder, class_embeddings

    encoder = build_text_encoder(pc.text_encoder, weights=pc.text_encoder_weights)
    emb = class_embeddings(encoder, list(spaces.union), [pc.text_template], cache_dir="data/text_embeddings")
    return torch.as_tensor(emb, dtype=torch.float32)


def build_ppt_model(cfg, names: Sequence[str], head: str, pdnorm: bool) -> PPTModel:
    """The multi-dataset model over datasets ``names``: PDNorm (settings in ``multi_dataset``) or shared BN."""
    from pretrain3d.models.pdnorm import PDNormSpec
    from pretrain3d.models.ppt_heads import init_linear
    from pretrain3d.models.spunet import SpUNet

    pc = cfg.multi_dataset
    m = cfg.model
    spec = PDNormSpec(tuple(names), decouple=pc.decouple, adaptive=pc.adaptive, affine=pc.affine,
                      context_channels=pc.context_channels) if pdnorm else None
    backbone = SpUNet(in_channels=m.in_channels, num_classes=0, stem_channels=m.stem_channels,
                      channels=tuple(m.channels), layers=tuple(m.layers), bn_eps=m.bn_eps,
                      bn_momentum=m.bn_momentum, norm=spec)
    spaces = label_spaces(cfg, names)
    if head == "language":
        h = LanguageHead(backbone.out_channels, spaces, text_embeddings(pc, spaces), pc.temperature)
    elif head == "decoupled":
        h = DecoupledHeads(backbone.out_channels, spaces)
    elif head == "joint":
        h = JointHead(backbone.out_channels, spaces)
    else:
        raise ValueError(f"unknown head {head!r} (language | decoupled | joint)")
    init_linear(h)
    return PPTModel(backbone, h, spaces)


def multi_train_dataset(cfg, names: Sequence[str], augment, max_points: int | None = None):
    """{name: TrainDataset} over each dataset's train split (scenes cropped to ``max_points`` voxels), and
    their data hashes."""
    from pretrain3d.data.dataset import TrainDataset, load_split
    from pretrain3d.data.multi_dataset import MultiDataset
    from pretrain3d.tracking.provenance import data_hash

    datasets, hashes = {}, {}
    for n in names:
        d = dataset_config(cfg, n)
        datasets[n] = TrainDataset(load_split(d.processed_root, "train", d.num_classes), cfg.train.grid_size,
                                   augment, max_points)
        hashes[n] = data_hash(d.processed_root)
    return MultiDataset(datasets), hashes


def export_condition(cfg, section) -> str:
    """The condition a multi-dataset backbone is folded to: ``section.export_condition``, else the target
    when trained on, else the first dataset (``section``: pretrain.ppt or pretrain.ponderv2_ppt)."""
    if section.export_condition:
        return section.export_condition
    return cfg.multi_dataset.target if cfg.multi_dataset.target in section.datasets else section.datasets[0]


def folded_backbone(backbone: nn.Module, condition: str) -> dict:
    """The state handed to fine-tuning: a PDNorm backbone folded to ``condition`` (in eval mode), or as is."""
    from pretrain3d.models.pdnorm import fold_condition

    if backbone.norm_spec is None:
        return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    was = backbone.training
    backbone.eval()
    state = fold_condition(backbone, condition)
    backbone.train(was)
    return {k: v.detach().cpu() for k, v in state.items()}


def multi_dataset_extras(backbone: nn.Module, head: nn.Module, spaces: LabelSpaces) -> dict:
    """What is saved beside the folded backbone: every condition, the head and its class names."""
    return {"multi_dataset_backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "pdnorm": backbone.norm_spec.as_dict() if backbone.norm_spec is not None else None,
            "ppt_head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "label_spaces": {n: list(c) for n, c in spaces.names.items()}}


def build(cfg, method: str, scenes: Sequence):
    """The PPT pre-training plug-in (methods.registry): supervised multi-dataset training; ``scenes``
    (the target's train split) is unused unless the target is one of pretrain.ppt.datasets."""
    from pretrain3d.data.multi_dataset import MultiDatasetBatches, multi_collate
    from pretrain3d.methods.plugin import MethodSetup

    pc = cfg.pretrain.ppt
    names = list(pc.datasets)
    dataset, hashes = multi_train_dataset(cfg, names, cfg.pretrain.augment, cfg.train.max_points)
    model = build_ppt_model(cfg, names, pc.head, pc.pdnorm)
    loops = {n: cfg.multi_dataset.loops.get(n, 1) for n in names}
    sizes = dataset.sizes()
    bs = cfg.pretrain.batch_size
    fold_to = export_condition(cfg, pc)

    def batches(seed: int, epoch: int, start_batch: int):
        return MultiDatasetBatches(sizes, bs, seed, epoch, loops, start=start_batch)

    meta = {"datasets": names, "head": pc.head, "pdnorm": pc.pdnorm, "export_condition": fold_to}
    return MethodSetup(
        dataset=dataset, collate=multi_collate, model=model, loss_fn=ppt_loss,
        tags={"datasets": ",".join(names), "head": pc.head, "pdnorm": str(pc.pdnorm).lower(),
              "export_condition": fold_to, "gt_labels_in": "pretraining:" + ",".join(names)},
        fingerprint={"datasets_data": hashes, "loops": loops},
        checkpoint={"ppt": meta, "datasets": names},
        save_extras=lambda m: multi_dataset_extras(m.backbone, m.head, m.spaces),
        summary={"ppt": meta, "datasets_scenes": sizes},
        batches=batches, steps_per_epoch=MultiDatasetBatches.num_batches(sizes, bs, loops),
        export_backbone=lambda m: folded_backbone(m.backbone, fold_to))


def load_ppt_model(cfg, backbone_pt: str | Path, device="cpu") -> PPTModel:
    """Rebuild the multi-dataset model (all conditions + head) saved by a ``ppt`` pre-training run."""
    from pretrain3d.engine.trainer import load_checkpoint, load_state_strict

    ck = load_checkpoint(backbone_pt)
    meta = ck.get("ppt")
    if meta is None:
        raise ValueError(f"{backbone_pt}: not a PPT pre-training backbone (no 'ppt' entry)")
    model = build_ppt_model(cfg, meta["datasets"], meta["head"], meta["pdnorm"])
    saved = {n: tuple(c) for n, c in ck["label_spaces"].items()}
    if saved != model.spaces.names:
        raise ValueError(f"{backbone_pt}: class names saved with the head {saved} differ from the configured "
                         f"datasets' {model.spaces.names}")
    load_state_strict(model.backbone, ck["multi_dataset_backbone"], f"{backbone_pt} [multi_dataset_backbone]")
    load_state_strict(model.head, ck["ppt_head"], f"{backbone_pt} [ppt_head]")
    return model.to(device).eval()

