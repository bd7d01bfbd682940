"""Confusion matrix -> mIoU/mAcc/allAcc semantics, accumulation, and the evaluation plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain3d.evaluation.metrics import ConfusionAccumulator, confusion_matrix, metrics_from_confusion
from pretrain3d.evaluation.plots import plot_confusion, render_segmentation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_hand_example_with_ignore():
    target = [0, 0, 1, 1, 2, -1, 2, -1]
    pred = [0, 1, 1, 1, 0, 2, 2, 7]  # predictions at ignored points are never looked at
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.dtype == np.int64
    expected = np.array([[1, 1, 0],   # gt 0: one right, one as 1
                         [0, 2, 0],   # gt 1: both right
                         [1, 0, 1]])  # gt 2: one as 0, one right
    np.testing.assert_array_equal(cm, expected)

    m = metrics_from_confusion(cm, ["a", "b", "c"])
    # IoU: a = 1/(2+2-1) = 1/3, b = 2/(2+3-2) = 2/3, c = 1/(2+1-1) = 1/2
    assert m["iou_per_class"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 1 / 2})
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["acc_per_class"] == pytest.approx({"a": 1 / 2, "b": 1.0, "c": 1 / 2})
    assert m["mAcc"] == pytest.approx(2 / 3)
    assert m["allAcc"] == pytest.approx(4 / 6)
    assert m["absent_classes"] == []
    assert all(type(v) is float for v in (m["mIoU"], m["mAcc"], m["allAcc"]))


def test_custom_ignore_index():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 255, 1]), num_classes=2, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="-1"):  # -1 is not the ignore index here
        confusion_matrix([0, 1], [0, -1], num_classes=2, ignore_index=255)


def test_absent_class_is_excluded_and_false_positive_class_counts_zero():
    names = ["wall", "floor", "chair", "sofa"]
    target = [0, 0, 1, 1]          # no chair, no sofa in the ground truth
    pred = [0, 2, 1, 1]            # chair predicted once (false positive); sofa never
    m = metrics_from_confusion(confusion_matrix(pred, target, 4), names)
    assert m["iou_per_class"]["sofa"] is None
    assert m["absent_classes"] == ["sofa"]
    assert m["iou_per_class"]["chair"] == 0.0          # predicted but absent in GT: counts as 0
    assert m["iou_per_class"]["wall"] == pytest.approx(1 / 2)
    assert m["iou_per_class"]["floor"] == pytest.approx(1.0)
    assert m["mIoU"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # sofa left out, chair in
    # mAcc only over classes with ground truth
    assert m["acc_per_class"]["chair"] is None and m["acc_per_class"]["sofa"] is None
    assert m["mAcc"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["allAcc"] == pytest.approx(3 / 4)


def test_perfect_prediction_gives_one():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 5, size=1000)
    pred = np.where(target < 0, 3, target)
    m = metrics_from_confusion(confusion_matrix(pred, target, 5), list("abcde"))
    assert m["mIoU"] == 1.0 and m["mAcc"] == 1.0 and m["allAcc"] == 1.0
    assert all(v == 1.0 for v in m["iou_per_class"].values())


def test_out_of_range_prediction_raises_naming_values():
    with pytest.raises(ValueError, match=r"\[-2, 5\]"):
        confusion_matrix([0, 5, -2, 1], [0, 1, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix([0, 1], [0, 9], num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1, 2], [0, 1], num_classes=3)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(1)
    t = rng.integers(-1, 6, size=500)
    p = rng.integers(0, 6, size=500)
    a = confusion_matrix(p, t, 6)
    b = confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), 6)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == (t != -1).sum()


def test_accumulation_equals_one_shot():
    rng = np.random.default_rng(2)
    t = rng.integers(-1, 8, size=5000)
    p = np.where(rng.random(5000) < 0.7, np.clip(t, 0, 7), rng.integers(0, 8, size=5000))
    acc = ConfusionAccumulator(num_classes=8)
    for chunk in np.array_split(np.arange(5000), 7):
        acc.update(torch.from_numpy(p[chunk]), t[chunk])
    one = confusion_matrix(p, t, 8)
    np.testing.assert_array_equal(acc.compute(), one)
    names = [f"c{i}" for i in range(8)]
    assert acc.compute(names) == metrics_from_confusion(one, names)


def test_empty_confusion_matrix_has_no_defined_means():
    m = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"])
    assert m["mIoU"] is None and m["mAcc"] is None and m["allAcc"] is None
    assert m["absent_classes"] == ["a", "b", "c"]


# --------------------------------------------------------------------------- plots


def _assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_plot_confusion_writes_png(tmp_path):
    names = [f"class_{i:02d}_name" for i in range(20)]
    rng = np.random.default_rng(3)
    target = rng.integers(0, 20, size=20_000)
    pred = np.where(rng.random(20_000) < 0.6, target, rng.integers(0, 20, size=20_000))
    cm = confusion_matrix(pred, target, 20)
    out = tmp_path / "cm.png"
    assert plot_confusion(cm, names, out) == out
    _assert_png(out)
    out_log = tmp_path / "cm_log.png"
    plot_confusion(cm, names, out_log, normalize=None, log=True, title="counts")
    _assert_png(out_log)


def test_render_segmentation_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    n = 80_000  # above the 60k cap: exercises the subsampling
    coord = rng.random((n, 3)) * np.array([6.0, 4.0, 2.5])
    gt = (coord[:, 2] * 2).astype(int)  # horizontal bands as classes 0..4
    gt[rng.random(n) < 0.1] = -1        # ignored points drawn grey
    pred = gt.copy()
    flip = rng.random(n) < 0.2
    pred[flip] = rng.integers(0, 6, size=flip.sum())
    palette = (rng.random((20, 3)) * 255).astype(np.uint8)
    out = tmp_path / "seg.png"
    render_segmentation(coord, gt, pred, palette, out, title="scene0000_00",
                        class_names=[f"c{i}" for i in range(20)])
    _assert_png(out, min_bytes=20_000)
    out2 = tmp_path / "seg_default_palette.png"
    render_segmentation(coord[:5000], gt[:5000], pred[:5000], None, out2)
    _assert_png(out2)


def test_class_names_follow_the_dataset():
    from pretrain3d.data.labels import SCANNET20_NAMES
    from pretrain3d.data.s3dis import S3DIS_NAMES
    from pretrain3d.data.scannet200 import SCANNET200_NAMES
    from pretrain3d.stages.finetune import class_names

    assert class_names(13, "s3dis") == list(S3DIS_NAMES) and len(S3DIS_NAMES) == 13
    for ds in ("scannet", "scannet_npy"):
        assert class_names(200, ds) == list(SCANNET200_NAMES) and len(SCANNET200_NAMES) == 200
        assert class_names(20, ds) == list(SCANNET20_NAMES)
    for ds in ("synthetic", "scannet_like"):  # both label with ScanNet-20 indices
        assert class_names(20, ds) == list(SCANNET20_NAMES)
        assert class_names(200, ds) == [f"class{i}" for i in range(200)]
    assert class_names(5, "synthetic") == ["class0", "class1", "class2", "class3", "class4"]


def test_palettes_are_deterministic_and_distinct_for_any_class_count():
    from pretrain3d.data.labels import SCANNET20_PALETTE, dataset_palette, distinct_palette
    from pretrain3d.evaluation.plots import default_palette

    for ds in ("scannet", "scannet_npy", "synthetic", "scannet_like"):
        np.testing.assert_array_equal(dataset_palette(ds, 20), SCANNET20_PALETTE)
    for ds, k in (("s3dis", 13), ("scannet", 200), ("scannet_npy", 200)):
        p = dataset_palette(ds, k)
        assert p.shape == (k, 3) and p.dtype == np.uint8 and len({tuple(c) for c in p}) == k
        np.testing.assert_array_equal(p, dataset_palette(ds, k))
    big = distinct_palette(200).astype(np.int64)
    assert (np.ptp(big, axis=1) >= 64).all()  # no grey (ignored points), black or white (the page)
    dist = np.linalg.norm(big[:, None] - big[None], axis=-1)
    assert dist[~np.eye(200, dtype=bool)].min() >= 30  # neighbours in colour still tell apart
    np.testing.assert_array_equal(distinct_palette(13), big[:13])  # a prefix: colours stable across K
    for k in (1, 13, 20, 21, 200):
        p = default_palette(k)
        assert p.shape == (k, 3) and len({tuple(c) for c in p}) == k


@pytest.mark.parametrize("dataset,k", [("s3dis", 13), ("scannet", 200)])
def test_render_and_confusion_for_13_and_200_classes(tmp_path, dataset, k):
    from PIL import Image

    from pretrain3d.data.labels import dataset_palette
    from pretrain3d.stages.finetune import class_names

    rng = np.random.default_rng(5)
    n = 6000
    coord = rng.random((n, 3)) * np.array([6.0, 4.0, 2.5])
    gt = (coord[:, 0] / 6.0 * k).astype(int)  # every class present: the longest legend
    pred = np.where(rng.random(n) < 0.7, gt, rng.integers(0, k, n))
    palette = dataset_palette(dataset, k)
    out = tmp_path / "render.png"
    render_segmentation(coord, gt, pred, palette, out, title=dataset, class_names=class_names(k, dataset))
    _assert_png(out, min_bytes=20_000)
    pixels = {tuple(c) for c in np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)}
    assert tuple(palette[k - 1]) in pixels  # the last class is drawn in its own colour

    cm = confusion_matrix(pred, gt, k)
    plot_confusion(cm, class_names(k, dataset), tmp_path / "cm.png")
    _assert_png(tmp_path / "cm.png")
    assert max(Image.open(tmp_path / "cm.png").size) < 5000  # 200 classes: a capped figure, not 10k pixels
