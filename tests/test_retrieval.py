"""Keypoint selection, set similarity, PnP pose and retrieval metrics (retrieval/*), on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain3d.retrieval import keypoints as kp
from pretrain3d.retrieval import metrics as rm
from pretrain3d.retrieval import search as rs


def _room(seed: int = 0, n: int = 6000):
    """Points on a floor and two walls with a small 'object' (a box) whose features differ."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 4, n // 2), rng.uniform(0, 3, n // 2), np.zeros(n // 2)]
    wall = np.c_[rng.uniform(0, 4, n // 4), np.zeros(n // 4), rng.uniform(0, 2.5, n // 4)]
    wall2 = np.c_[np.zeros(n // 4), rng.uniform(0, 3, n // 4), rng.uniform(0, 2.5, n // 4)]
    obj = np.c_[rng.uniform(2.0, 2.3, 300), rng.uniform(1.5, 1.8, 300), rng.uniform(0, 0.3, 300)]
    xyz = np.concatenate([floor, wall, wall2, obj]).astype(np.float32)
    feats = np.zeros((len(xyz), 8), np.float32)
    feats[: n // 2, 0] = 1.0
    feats[n // 2: n, 1] = 1.0
    feats[n:, 2] = 1.0  # the object
    feats += rng.normal(0, 0.05, feats.shape).astype(np.float32)
    return xyz, feats


@pytest.mark.parametrize("rule", kp.RULES)
def test_keypoints_are_k_spread_unit_and_deterministic(rule):
    xyz, feats = _room()
    a = kp.select_keypoints("s", xyz, feats, 32, rule)
    b = kp.select_keypoints("s", xyz[::-1].copy(), feats[::-1].copy(), 32, rule) if rule == "fps" else None
    assert len(a) == 32 and a.desc.shape == (32, 8)
    np.testing.assert_allclose(np.linalg.norm(a.desc, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.xyz, xyz[a.point_index])
    assert len(np.unique(a.point_index)) == 32
    again = kp.select_keypoints("s", xyz, feats, 32, rule)
    np.testing.assert_array_equal(a.point_index, again.point_index)
    # spread: no two keypoints closer than a few cm
    d = np.linalg.norm(a.xyz[:, None] - a.xyz[None], axis=2) + np.eye(32) * 9
    assert d.min() > 0.05
    if b is not None:  # FPS does not depend on the order of the points (up to the voxel thinning)
        assert len(b) == 32


def test_distinct_rule_puts_a_keypoint_on_the_small_object():
    xyz, feats = _room()
    d = kp.select_keypoints("s", xyz, feats, 16, "distinct", min_spacing=0.2)
    # the object's points and the floor/wall seams are the distinctive ones: the top-scored keypoint is at the object
    # or on a seam, and at least one keypoint sits on the object
    on_obj = (d.xyz[:, 0] >= 1.95) & (d.xyz[:, 0] <= 2.35) & (d.xyz[:, 1] >= 1.45) & (d.xyz[:, 1] <= 1.85)
    assert on_obj.any()
    assert d.score[0] >= d.score[-1]
    s = kp.distinctiveness(xyz[:500], feats[:500], 0.3)
    assert s.shape == (500,) and np.all(s >= -1e-6)


def test_too_few_points_for_k_keypoints_names_the_scene():
    xyz, feats = _room(n=400)
    with pytest.raises(ValueError, match="scene tiny: .* fewer than the 5000 keypoints"):
        kp.select_keypoints("tiny", xyz, feats, 5000)
    with pytest.raises(ValueError, match="unknown keypoint rule"):
        kp.select_keypoints("s", xyz, feats, 4, "best")


def test_set_similarity_ranks_the_scene_that_contains_the_query():
    rng = np.random.default_rng(1)
    bank = rs.normalise(rng.normal(size=(50, 64, 32)))
    truth = 17
    query = bank[truth, rng.choice(64, 20, replace=False)] + rng.normal(0, 0.05, (20, 32))
    scores = rs.scores_against(query, bank)
    assert int(np.argmax(scores)) == truth and rm.rank_of(scores, truth) == 1
    # chunking does not change the numbers
    np.testing.assert_allclose(rs.scores_against(query, bank, max_floats=100), scores, rtol=1e-6)
    assert scores[truth] == pytest.approx(rs.set_similarity(query, bank[truth]), rel=1e-6)
    sym = rs.scores_against(bank[3], bank, symmetric=True)
    assert int(np.argmax(sym)) == 3 and sym[3] == pytest.approx(1.0, abs=1e-5)


def test_mutual_matches_are_mutual():
    rng = np.random.default_rng(2)
    b = rs.normalise(rng.normal(size=(40, 16)))
    a = b[[5, 9, 30]] + rng.normal(0, 0.01, (3, 16))
    i, j, c = rs.mutual_matches(a, b)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 5), (1, 9), (2, 30)]
    assert np.all(np.diff(c) <= 0)
    i, j, c = rs.mutual_matches(a, b, min_cos=1.01)
    assert len(i) == 0


def _look_at(eye, target):
    f = (target - eye) / np.linalg.norm(target - eye)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([r, d, f], 1)  # camera x right, y down, z forward (OpenCV)
    pose[:3, 3] = eye
    return pose


def test_pnp_recovers_a_known_pose_with_outliers():
    rng = np.random.default_rng(3)
    K = np.array([[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]])
    pose = _look_at(np.array([0.5, -2.0, 1.4]), np.array([1.5, 1.5, 0.6]))
    xyz = np.c_[rng.uniform(0, 3, 200), rng.uniform(0, 3, 200), rng.uniform(0, 2, 200)]
    w2c = np.linalg.inv(pose)
    cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    front = cam[:, 2] > 0.3
    xyz, cam = xyz[front], cam[front]
    uv = (cam @ K.T)[:, :2] / cam[:, 2:3]
    uv += rng.normal(0, 0.5, uv.shape)
    bad = rng.choice(len(uv), len(uv) // 4, replace=False)  # 25 % wrong matches
    uv[bad] = rng.uniform(0, 160, (len(bad), 2))
    out = rs.estimate_pose(uv, xyz, K, reproj_px=4.0)
    assert out is not None and len(out["inliers"]) >= 0.6 * len(uv)
    rot, trans = rs.pose_errors(out["pose"], pose)
    assert rot < 1.0 and trans < 0.05, (rot, trans)
    assert rs.estimate_pose(uv[:3], xyz[:3], K) is None
    with pytest.raises(ValueError, match="pixels but"):
        rs.estimate_pose(uv[:5], xyz[:6], K)


def test_pose_errors():
    a = _look_at(np.array([0.0, 0, 1]), np.array([1.0, 0, 1]))
    b = a.copy()
    b[:3, 3] += [0.3, 0.4, 0.0]
    c = np.cos(np.radians(10)), np.sin(np.radians(10))
    Rz = np.array([[c[0], -c[1], 0], [c[1], c[0], 0], [0, 0, 1]])
    b[:3, :3] = Rz @ b[:3, :3]
    rot, trans = rs.pose_errors(b, a)
    assert rot == pytest.approx(10.0, abs=1e-6) and trans == pytest.approx(0.5)


def test_retrieval_metrics():
    assert rm.rank_of(np.array([0.1, 0.9, 0.5]), 1) == 1
    assert rm.rank_of(np.array([0.5, 0.5, 0.5]), 2) == 3  # ties count against the right answer
    assert rm.recall_at([1, 2, 6, 1], 1) == 0.5 and rm.recall_at([1, 2, 6, 1], 5) == 0.75
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert rm.average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    assert rm.average_precision(np.ones(4), np.array([1, 0, 0, 0])) == pytest.approx(0.25)  # ties: pessimistic
    assert np.isnan(rm.average_precision(np.ones(3), np.zeros(3)))


def test_index_round_trip_and_refusals(tmp_path):
    from pretrain3d.errors import DataError
    from pretrain3d.retrieval import index as ri

    root = tmp_path / "index"
    xyz, feats = _room()
    sets = [kp.select_keypoints(f"scene{i}", xyz + i, feats, 16, "fps") for i in range(3)]
    for ks in sets:
        ri.write_scene(root, ks)
    with pytest.raises(DataError, match="no index here"):
        ri.load_index(root)
    fp = {"method": "condense", "backbone_sha256": "abc", "rule": "fps", "k": 16}
    ri.write_index(root, fp, [s.scene_id for s in sets])
    idx = ri.load_index(root, expect={"method": "condense", "backbone_sha256": "abc"})
    assert idx.scene_ids == ["scene0", "scene1", "scene2"] and idx.desc.shape == (3, 16, 8)
    assert idx.desc.dtype == np.float16 and idx.position("scene2") == 2
    np.testing.assert_allclose(idx.xyz[1], sets[1].xyz)
    np.testing.assert_allclose(idx.desc[1].astype(np.float32), sets[1].desc, atol=1e-3)
    # another model's index is refused, naming the key
    with pytest.raises(DataError, match="another model or config.*backbone_sha256"):
        ri.load_index(root, expect={"backbone_sha256": "def"})
    with pytest.raises(KeyError, match="not in the index"):
        idx.position("scene9")
    # an empty repository, and a corrupt scene file
    ri.write_index(tmp_path / "empty", fp, [])
    with pytest.raises(DataError, match="repository is empty"):
        ri.load_index(tmp_path / "empty")
    (root / "scene1.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="scene1.npz.*not a readable keypoint file"):
        ri.load_index(root)
    # scenes of different K cannot share an index
    ri.write_scene(root, kp.select_keypoints("scene1", xyz, feats, 8, "fps"))
    with pytest.raises(ValueError, match="differ in keypoints"):
        ri.write_index(root, fp, ["scene0", "scene1"])


def test_text_head_maps_features_to_their_class_text_and_ranks_scenes_with_the_class():
    from pretrain3d.retrieval import language as rl

    rng = np.random.default_rng(4)
    C, D, T = 5, 16, 12
    proto = rs.normalise(rng.normal(size=(C, D)))  # class prototypes in feature space
    text = rs.normalise(rng.normal(size=(C, T)))   # class-name embeddings (unrelated space)
    y = rng.integers(0, C, 3000)
    x = proto[y] + rng.normal(0, 0.2, (3000, D))
    y[:100] = -1  # ignored rows
    P = rl.fit_text_head(x, y, text, epochs=30, seed=0)
    assert P.shape == (T, D)
    np.testing.assert_array_equal(P, rl.fit_text_head(x, y, text, epochs=30, seed=0))  # deterministic
    mapped = rs.normalise(x[100:] @ P.T)
    acc = float(((mapped @ text.T).argmax(1) == y[100:]).mean())
    assert acc > 0.9, acc
    # scenes: scene s holds keypoints of classes {s, s+1} only; the query for class 2 ranks scenes 1 and 2 first
    bank = np.stack([rs.normalise(proto[[s % C, (s + 1) % C] * 8] + rng.normal(0, 0.1, (16, D))) for s in range(C)])
    sc = rl.text_scores(text[2], bank, P)
    assert set(np.argsort(-sc)[:2].tolist()) == {1, 2}
    assert rm.average_precision(sc, np.isin(np.arange(C), [1, 2])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no text embedding"):
        rl.fit_text_head(x[:200], np.full(200, C), text)
