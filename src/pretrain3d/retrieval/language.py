"""Text -> scene: how language enters a feature space that was never trained on text.

The offline text encoder (``teachers.text``, MiniLM) is not image-aligned, so nothing makes a 3D or 2D
feature comparable to a sentence embedding by itself. A **linear head aligned with ground-truth labels**
does it: ``P`` (D -> text width) is fitted on labelled training points so that ``cos(P f, t_c) / tau``
classifies each point's class ``c`` among the class-name embeddings ``t`` (cross-entropy; the PonderV2
semantic term and PPT's language-guided classifier use the same form). Everything downstream of such a
head has seen ground-truth labels: runs that use it are tagged ``uses_gt_labels=true``.

A text query is embedded by the same encoder; a scene's score is the best cosine over its keypoints,
``max_k cos(P d_k, q)``: a scene "has a bathtub" when one of its keypoints looks like one. Queries may
be any sentence; the class names are what the head was fitted on, so sentences near them work best.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pretrain3d.data.labels import IGNORE_INDEX

__all__ = ["fit_text_head", "text_scores"]


def fit_text_head(feats: np.ndarray, labels: np.ndarray, text: np.ndarray, *, tau: float = 0.07,
                  epochs: int = 100, lr: float = 0.01, batch_size: int = 4096, seed: int = 0) -> np.ndarray:
    """``P`` (T, D) float32 fitted so that ``cos(P f, text[c]) / tau`` classifies ``labels`` (-1 ignored) of
    ``feats`` (n, D) among ``text`` (C, T). Deterministic for a seed (CPU)."""
    x = F.normalize(torch.as_tensor(np.asarray(feats), dtype=torch.float32), dim=1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    keep = y != IGNORE_INDEX
    x, y = x[keep], y[keep]
    if len(y) < 2:
        raise ValueError("fit_text_head: fewer than 2 labelled rows")
    t = F.normalize(torch.as_tensor(np.asarray(text), dtype=torch.float32), dim=1)
    if int(y.max()) >= len(t):
        raise ValueError(f"label {int(y.max())} has no text embedding ({len(t)} classes)")
    g = torch.Generator().manual_seed(int(seed))
    P = torch.nn.Parameter(torch.randn(t.shape[1], x.shape[1], generator=g) * (1.0 / x.shape[1] ** 0.5))
    opt = torch.optim.Adam([P], lr=lr)
    for _ in range(int(epochs)):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch_size):
            i = order[s:s + batch_size]
            logits = F.normalize(x[i] @ P.T, dim=1) @ t.T / tau
            loss = F.cross_entropy(logits, y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return P.detach().numpy().astype(np.float32)


def text_scores(query: np.ndarray, bank: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(S,) best cosine between the text embedding ``query`` (T,) and the head-mapped keypoint descriptors of
    every scene of ``bank`` (S, K, D)."""
    q = np.asarray(query, np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    m = np.einsum("skd,td->skt", np.asarray(bank, np.float32), np.asarray(head, np.float32), optimize=True)
    m /= np.maximum(np.linalg.norm(m, axis=2, keepdims=True), 1e-12)
    return (m @ q).max(1).astype(np.float64)
