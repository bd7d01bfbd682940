"""PonderV2 + PPT: rendering pre-training over several datasets with a PDNorm backbone (PonderV2's
headline recipe, Zhu et al. arXiv 2310.08586, config ``pretrain-ponder-ppt-v1m1-0-sc-s3-st-spunet``).

What it does here, and why:

* **Data**: homogeneous batches over ``pretrain.ponderv2_ppt.datasets`` (``data.multi_dataset``), each
  dataset's scenes with their posed RGB-D views (``PonderDataset``: rays, depth, colour) and per-voxel labels.
* **Model**: PonderV2's volume + neural field (``pretrain.ponderv2`` settings) on a PDNorm SpUNet
  (``multi_dataset``'s PDNorm settings), plus PPT's language-guided head on the same point features.
* **Loss**: PonderV2's rendering loss + ``ppt_weight`` x PPT's cross-entropy over the batch's dataset's
  classes. PonderV2's code computes this ``ppt_loss`` but never adds it to the loss it back-propagates
  (shared/reference/pointcept.md §3, "*verify*"); here it is in the loss, as the recipe intends, and the
  term is logged as ``loss_ppt``. So the run uses ground-truth labels (tagged ``uses_gt_labels=true``).
* **Output**: the backbone folded to ``export_condition`` (the target by default) for fine-tuning;
  the multi-dataset backbone, the renderer and the head beside it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.data.labels import IGNORE_INDEX

__all__ = ["PonderPPTModel", "build"]


class PonderPPTModel(nn.Module):
    def __init__(self, ponder: nn.Module, ppt_head: nn.Module, spaces, ppt_weight: float):
        super().__init__()
        self.ponder, self.head, self.spaces, self.ppt_weight = ponder, ppt_head, spaces, float(ppt_weight)

    @property
    def backbone(self) -> nn.Module:  # the pre-training stage saves model.backbone
        return self.ponder.backbone

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        dataset = batch["condition"] if isinstance(batch["condition"], str) else batch["condition"][0]
        feats = self.ponder.backbone(batch)
        render_loss, logs = self.ponder.loss_from_volumes(batch, self.ponder.volumes(batch, feats))
        target = batch["segment"]
        self.spaces.check_labels(dataset, target)
        logits = self.head(feats, dataset)
        if bool((target != IGNORE_INDEX).any()):
            ppt = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        else:
            ppt = logits.sum() * 0.0
        logs["loss_ppt"] = float(ppt.detach())
        logs[f"loss_ppt_{dataset}"] = logs["loss_ppt"]
        return render_loss + self.ppt_weight * ppt, logs


def ponder_ppt_loss(model: PonderPPTModel, batch: dict):
    return model.loss(batch)


def build(cfg, method: str, scenes: Sequence):
    from functools import partial

    from pretrain3d.data.multi_dataset import MultiDataset, MultiDatasetBatches, multi_collate
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.methods.plugin import MethodSetup, head_state
    from pretrain3d.methods.ponderv2 import PonderDataset, PonderV2Model, ponder_collate
    from pretrain3d.methods.ppt import (build_ppt_model, dataset_config, export_condition, folded_backbone,
                                        multi_dataset_extras)
    from pretrain3d.tracking.provenance import data_hash

    pc = cfg.pretrain.ponderv2_ppt
    names = list(pc.datasets)
    datasets, hashes = {}, {}
    for n in names:
        d = dataset_config(cfg, n)
        split = load_split_scenes(d.processed_root, "train", d.num_classes)
        datasets[n] = PonderDataset(split, cfg.pretrain, cfg.train.grid_size, voxel_labels=True)
        hashes[n] = data_hash(d.processed_root)
    dataset = MultiDataset(datasets)
    ppt = build_ppt_model(cfg, names, "language", pdnorm=True)  # PDNorm backbone + language head
    model = PonderPPTModel(PonderV2Model(ppt.backbone, cfg.pretrain.ponderv2), ppt.head, ppt.spaces, pc.ppt_weight)
    loops = {n: cfg.multi_dataset.loops.get(n, 1) for n in names}
    sizes = dataset.sizes()
    bs = cfg.pretrain.batch_size
    fold_to = export_condition(cfg, pc)

    meta = {"datasets": names, "ppt_weight": pc.ppt_weight, "export_condition": fold_to}
    return MethodSetup(
        dataset=dataset, collate=partial(multi_collate, inner=ponder_collate), model=model, loss_fn=ponder_ppt_loss,
        tags={"datasets": ",".join(names), "ppt_weight": pc.ppt_weight, "export_condition": fold_to,
              "gt_labels_in": "ppt_loss:" + ",".join(names), "views": cfg.pretrain.ponderv2.views},
        fingerprint={"datasets_data": hashes, "loops": loops},
        checkpoint={"ponderv2_ppt": meta, "teacher": None, "datasets": names},
        save_extras=lambda m: {**multi_dataset_extras(m.backbone, m.head, m.spaces), "renderer": head_state(m.ponder)},
        summary={"ponderv2_ppt": meta, "datasets_scenes": sizes},
        batches=lambda seed, epoch, start: MultiDatasetBatches(sizes, bs, seed, epoch, loops, start=start),
        steps_per_epoch=MultiDatasetBatches.num_batches(sizes, bs, loops),
        export_backbone=lambda m: folded_backbone(m.backbone, fold_to))
