"""PPKT's shared embedding as a scene-query baseline: points through backbone + projection head, image
cells through the frozen teacher + UPL's 1x1 projection (both L2-normalised), the pair PPKT's InfoNCE
aligned. Needs the heads saved beside the backbone (``ppkt_heads`` in ``backbone.pt``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.errors import DataError

__all__ = ["PPKTSource", "load_ppkt_model", "point_features", "image_cells"]


class PPKTSource:
    """A PPKT run as a scene-query source (``retrieval.sources``): backbone + projection head for scenes,
    the configured teacher + UPL for images. The teacher must be the one the run distilled."""

    name = "ppkt"

    def __init__(self, cfg, backbone, device="cpu"):
        from pretrain3d.retrieval.sources import configured_teacher, file_sha256, teacher_tag
        from pretrain3d.teachers.cache import cell_geometry

        t = cfg.teacher
        self.device, self.grid_size = device, cfg.train.grid_size
        self.model = load_ppkt_model(cfg, backbone, device)
        self.teacher = configured_teacher(cfg, device)
        if self.teacher.dim != self.model.upl.in_dim:
            raise DataError(Path(backbone), f"was distilled from a {self.model.upl.in_dim}-wide teacher, but the "
                            f"configured teacher {t.name}:{t.layer} is {self.teacher.dim} wide",
                            "configure the teacher of that run")
        self.geometry = cell_geometry(self.teacher.metadata(), "teacher")
        self.fingerprint = {"source": self.name, "backbone_sha256": file_sha256(backbone),
                            "teacher": teacher_tag(self.teacher)}

    def point_features(self, scene) -> np.ndarray:
        return point_features(self.model, scene, self.grid_size, self.device)

    @torch.no_grad()
    def image_cells(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from pretrain3d.retrieval.search import check_query_image

        img = check_query_image(image)
        fmap = self.teacher(self.teacher.preprocess([img])).float().cpu()[0]
        return image_cells(self.model, fmap, self.geometry, img.shape[1], img.shape[0])


def load_ppkt_model(cfg, backbone_pt_path: str | Path, device="cpu"):
    """``PPKTModel`` with the backbone and the saved projection head + UPL of a PPKT pre-training run."""
    from pretrain3d.engine.trainer import load_checkpoint, load_state_strict
    from pretrain3d.methods.ppkt import PPKTModel
    from pretrain3d.models.segmentor import build_backbone

    path = Path(backbone_pt_path)
    ckpt = load_checkpoint(path)
    if "ppkt_heads" not in ckpt:
        raise DataError(path, "checkpoint has no 'ppkt_heads' (PPKT's projection head and UPL)",
                        "re-run its PPKT pre-training (older runs did not save them)")
    teacher = ckpt.get("teacher") or {}
    if "dim" not in teacher:
        raise DataError(path, "checkpoint does not record the teacher's feature width", "re-run its pre-training")
    pc = cfg.pretrain.ppkt
    model = PPKTModel(build_backbone(cfg.model), int(teacher["dim"]), pc.embed_dim, tau=pc.tau)
    state = {f"backbone.{k}": v for k, v in ckpt["backbone"].items()}
    state.update(ckpt["ppkt_heads"])
    load_state_strict(model, state, str(path))
    return model.to(device).eval()


@torch.no_grad()
def point_features(model, scene, grid_size: float, device="cpu") -> np.ndarray:
    """(N, embed_dim) unit embedding of every scene point (its voxel's, unaugmented)."""
    from pretrain3d.data.dataset import EvalDataset

    model.eval()
    sample = EvalDataset([scene], grid_size)[0]
    batch = {"grid_coord": sample["grid_coord"].to(device), "feat": sample["feat"].to(device),
             "offset": torch.tensor([len(sample["grid_coord"])], device=device)}
    emb = model(batch)  # unit rows per voxel
    return emb[sample["inverse"].to(device)].cpu().numpy().astype(np.float32)


@torch.no_grad()
def image_cells(model, fmap: torch.Tensor, geometry: dict | None, width: int, height: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(desc (h*w, embed_dim), uv (h*w, 2))`` of one teacher feature map ``fmap`` (D, h, w) of a
    ``width`` x ``height`` image: UPL's projection at every cell, and the cell centres' pixels."""
    from pretrain3d.retrieval.search import map_cells

    fmap = torch.as_tensor(fmap, dtype=torch.float32)
    if fmap.ndim != 3 or fmap.shape[0] != model.upl.in_dim:
        raise ValueError(f"a teacher map (D={model.upl.in_dim}, h, w) is needed, got {tuple(fmap.shape)}")
    z = F.normalize(model.upl.project(fmap[None])[0], dim=0)
    return map_cells(z.numpy(), width, height, geometry)
