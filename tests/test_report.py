"""Summary statistics of the report stage: difference of means and the paired difference."""

import json
import math

import pytest

from pretrain3d.stages.report import paired_difference, summarize


def _write(tmp_path, method, protocol, seed, miou):
    f = tmp_path / f"{method}-{protocol}-{seed}.json"
    f.write_text(json.dumps({"method": method, "protocol": protocol, "seed": seed, "mIoU": miou,
                             "mAcc": miou + 0.1, "allAcc": 0.5, "iou_per_class": {}}))
    return f


def test_paired_difference_removes_the_shared_seed_effect(tmp_path):
    # A large per-seed effect common to both methods and a constant +0.02 gain: the independent
    # standard error is dominated by the seed spread, the paired one is zero.
    seed_effect = {0: 0.00, 1: 0.10, 2: 0.20}
    files = [_write(tmp_path, "scratch", "la", s, 0.3 + e) for s, e in seed_effect.items()]
    files += [_write(tmp_path, "ppkt", "la", s, 0.32 + e) for s, e in seed_effect.items()]
    (c,) = summarize(files)["comparisons"]
    assert c["mIoU_diff"] == pytest.approx(0.02)
    assert c["mIoU_diff_se"] == pytest.approx(math.sqrt(2 * 0.1 ** 2 / 3))
    assert c["mIoU_paired_diff"] == pytest.approx(0.02)
    assert c["mIoU_paired_diff_se"] == pytest.approx(0.0, abs=1e-12)
    assert c["paired_seeds"] == [0, 1, 2]


def test_paired_difference_values_and_unshared_seeds():
    runs = [{"method": "scratch", "protocol": "probe", "seed": s, "mIoU": v, "mAcc": v, "allAcc": v}
            for s, v in [(0, 0.10), (1, 0.20), (2, 0.30), (5, 0.9)]]
    runs += [{"method": "ppkt", "protocol": "probe", "seed": s, "mIoU": v, "mAcc": v, "allAcc": v}
             for s, v in [(0, 0.15), (1, 0.21), (2, 0.39), (7, 0.0)]]
    out = paired_difference(runs, "ppkt", "scratch", "probe")
    d = [0.05, 0.01, 0.09]  # seeds 5 and 7 have no partner
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert out["paired_seeds"] == [0, 1, 2]
    assert out["mIoU_paired_diff"] == pytest.approx(mean)
    assert out["mIoU_paired_diff_se"] == pytest.approx(sd / math.sqrt(3))


def test_paired_difference_single_seed_has_no_standard_error():
    runs = [{"method": m, "protocol": "la", "seed": 0, "mIoU": v, "mAcc": v, "allAcc": v}
            for m, v in [("scratch", 0.1), ("ppkt", 0.3)]]
    out = paired_difference(runs, "ppkt", "scratch", "la")
    assert out["mIoU_paired_diff"] == pytest.approx(0.2)
    assert out["mIoU_paired_diff_se"] is None
