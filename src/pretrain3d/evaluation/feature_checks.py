"""Feature checks for 2D/3D co-embedding methods (ConDense): does a 2D network give the same feature
to a surface point seen from two views, do its pixel features still segment, does a classifier
trained on one modality work unchanged on the other, and what do the features look like.

Library only: every function takes processed scenes (``data.scene.ProcessedScene`` with a frame
index) and feature sources, computes, and returns numbers or arrays; writing JSON, logging to
MLflow and choosing parameters is the calling stage's business (the one exception,
``plot_feature_pca_row``, writes the PNG it is asked for, atomically, like ``evaluation.plots``).

Feature sources are generic. A *2D feature function* is::

    fn(images: uint8 ndarray (B, H, W, 3)) -> torch.Tensor (B, D, h, w)

together with the cell ``geometry`` of its map (``teachers.cache.cell_geometry(teacher.metadata())``;
``None`` when the map's cells tile the frame, e.g. a map at frame resolution). A frame pixel
``(u, v)`` (column, row; pixel centres at integers, see ``geometry.camera``) reads the map through
``teachers.cache.pixel_to_grid`` and ``F.grid_sample(bilinear, align_corners=False,
padding_mode="border")`` -- the same sampling PPKT uses. ``feature_fn_from_teacher`` makes the pair
for a frozen teacher; a ConDense 2D network wraps its forward the same way.

Everything is deterministic on CPU for a given seed / ``numpy.random.Generator``.

The checks live in one module each, and this module gathers their names: ``evaluation.feature_sources``
(feature functions, sampling a map at pixels), ``evaluation.cross_view`` (matched pixels of two
views, cross-view consistency), ``evaluation.feature_probes`` (pixel labels, the pixel probe,
co-embedding transfer) and ``evaluation.feature_pca`` (PCA images of feature maps).
"""

from __future__ import annotations

from pretrain3d.evaluation.cross_view import (MatchedPixels, cross_view_consistency, cross_view_pairs,
                                              select_view_pairs)
from pretrain3d.evaluation.feature_pca import pca_rgb, plot_feature_pca_row
from pretrain3d.evaluation.feature_probes import (co_embedding_both_ways, co_embedding_transfer,
                                                  collect_pixel_features, pixel_labels, pixel_probe,
                                                  probe_on_features)
from pretrain3d.evaluation.feature_sources import (FeatureFn, feature_fn_from_teacher, frame_feature_maps,
                                                   sample_features)

__all__ = [
    "FeatureFn",
    "MatchedPixels",
    "feature_fn_from_teacher",
    "cross_view_pairs",
    "select_view_pairs",
    "sample_features",
    "frame_feature_maps",
    "cross_view_consistency",
    "pixel_labels",
    "collect_pixel_features",
    "pixel_probe",
    "probe_on_features",
    "co_embedding_transfer",
    "co_embedding_both_ways",
    "pca_rgb",
    "plot_feature_pca_row",
]
