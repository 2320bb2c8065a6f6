"""Metrics: the spec's worked example, brute-force equality, batch-split invariance, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ovrsisbench.errors import UserError
from ovrsisbench.metrics import ConfusionMatrix, compute_scores

# shared/spec/metrics.md section 3: K = 4 (road, tree, car, water), ignore 255.
IMAGE_A = ([0] * 5 + [0] + [1] * 3 + [1], [0] * 5 + [1] + [1] * 3 + [2])  # (gt, pred)
IMAGE_B = ([0, 0, 255, 255], [0, 0, 2, 2])


def worked_example() -> ConfusionMatrix:
    cm = ConfusionMatrix(4)
    for gt, pred in (IMAGE_A, IMAGE_B):
        cm.update(np.array(pred), np.array(gt, dtype=np.uint8))
    return cm


def test_worked_example_detectron2_policy():
    cm = worked_example()
    expected = np.array([[7, 1, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.ignored_pixels == 2
    scores = compute_scores(cm.matrix)
    assert scores.miou == pytest.approx(73.75)
    assert scores.fwiou == pytest.approx(78.333333, abs=1e-4)
    assert scores.macc == pytest.approx(81.25)
    assert scores.pacc == pytest.approx(83.333333, abs=1e-4)
    assert scores.iou == pytest.approx([87.5, 60.0, None, None])
    assert scores.acc == pytest.approx([87.5, 75.0, None, None])


def test_worked_example_mmseg_policy():
    scores = compute_scores(worked_example().matrix, policy="mmseg")
    assert scores.miou == pytest.approx(49.166667, abs=1e-4)
    assert scores.macc == pytest.approx(81.25)
    assert scores.pacc == pytest.approx(83.333333, abs=1e-4)
    assert scores.iou == pytest.approx([87.5, 60.0, 0.0, None])


def test_smaller_case_from_spec():
    # GT entirely class 0, 10 % predicted as class 1, K = 3 -> detectron2 90.0, mmseg 45.0
    gt = np.zeros(100, dtype=np.uint8)
    pred = np.zeros(100, dtype=np.int64)
    pred[:10] = 1
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert compute_scores(cm.matrix).miou == pytest.approx(90.0)
    assert compute_scores(cm.matrix, "mmseg").miou == pytest.approx(45.0)


def brute_force(pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    for p, g in zip(pred.ravel(), gt.ravel(), strict=True):
        if g != 255:
            matrix[g, p] += 1
    return matrix


@st.composite
def labelled_batches(draw):
    k = draw(st.integers(1, 20))
    n = draw(st.integers(0, 300))
    labels = st.one_of(st.integers(0, k - 1), st.just(255))
    gt = np.array(draw(st.lists(labels, min_size=n, max_size=n)), dtype=np.uint8)
    pred = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return k, gt, pred, cuts


@settings(max_examples=150, deadline=None)
@given(labelled_batches())
def test_equals_brute_force_and_is_split_invariant(case):
    k, gt, pred, cuts = case
    whole = ConfusionMatrix(k)
    whole.update(pred, gt)
    np.testing.assert_array_equal(whole.matrix, brute_force(pred, gt, k))

    # any split into batches, fed in reverse order, and merged from two accumulators
    bounds = [0, *cuts, len(gt)]
    parts = [(pred[a:b], gt[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    first, second = ConfusionMatrix(k), ConfusionMatrix(k)
    for index, (p, g) in enumerate(reversed(parts)):
        (first if index % 2 else second).update(torch.from_numpy(p), torch.from_numpy(g))
    first.merge(second)
    np.testing.assert_array_equal(first.matrix, whole.matrix)


@settings(max_examples=50, deadline=None)
@given(labelled_batches())
def test_scores_match_definitions(case):
    k, gt, pred, _ = case
    cm = ConfusionMatrix(k)
    cm.update(pred.astype(np.uint8), gt)
    scores = compute_scores(cm.matrix)
    valid = gt != 255
    ious = []
    for c in range(k):
        g, p = gt[valid] == c, pred[valid] == c
        if g.any():
            ious.append((g & p).sum() / (g | p).sum())
    if ious:
        assert scores.miou == pytest.approx(100 * np.mean(ious))
        assert scores.pacc == pytest.approx(100 * (gt[valid] == pred[valid]).mean())
    else:
        assert math.isnan(scores.miou)


def test_large_counts_stay_exact():
    # beyond 2**24 pixels of one class, where float32 counting goes wrong
    cm = ConfusionMatrix(2)
    block = np.zeros((4096, 4096), dtype=np.uint8)
    for _ in range(3):
        cm.update(block, block)
    assert cm.matrix[0, 0] == 3 * 4096 * 4096


def test_predictions_out_of_range_are_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="predictions must lie in 0..2"):
        cm.update(np.array([0, 3]), np.array([0, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match="predictions must lie in 0..2"):
        cm.update(np.array([-1, 0]), np.array([0, 1], dtype=np.uint8))


def test_labels_out_of_range_are_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="found 7"):
        cm.update(np.array([0, 1]), np.array([0, 7], dtype=np.uint8))
    np.testing.assert_array_equal(cm.matrix, np.zeros((3, 3)))  # nothing half-added


def test_shape_mismatch_and_unknown_policy():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(np.zeros(3, dtype=np.uint8), np.zeros(4, dtype=np.uint8))
    with pytest.raises(UserError, match="unknown absent-class policy"):
        compute_scores(np.eye(2, dtype=np.int64), policy="pangaea")


def test_load_restores_counts():
    cm = worked_example()
    other = ConfusionMatrix(4)
    other.load(cm.matrix)
    np.testing.assert_array_equal(other.matrix, cm.matrix)


def test_device_path_counts_like_the_cpu_path():
    # the bincount path used for tensors on an accelerator, exercised here on CPU tensors
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, 5000).astype(np.uint8)
    gt[:300] = 255
    pred = rng.integers(0, 6, 5000)
    cm = ConfusionMatrix(6)
    counts = cm._count_torch(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_array_equal(counts[:6], brute_force(pred, gt, 6))
    assert counts[255].sum() == 300


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_count_exactly():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 9, (2, 300, 300)).astype(np.uint8)
    pred = rng.integers(0, 9, (2, 300, 300))
    cm = ConfusionMatrix(9)
    cm.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
    np.testing.assert_array_equal(cm.matrix, brute_force(pred, gt, 9))


def test_images_larger_than_one_chunk_count_exactly():
    from ovrsisbench.metrics import _CHUNK

    rng = np.random.default_rng(3)
    size = 2 * _CHUNK + 12345  # several chunks and a ragged tail
    gt = rng.integers(0, 12, size).astype(np.uint8)
    gt[rng.random(size) < 0.1] = 255
    pred = rng.integers(0, 12, size)
    cm = ConfusionMatrix(12)
    cm.update(pred, gt)
    valid = gt != 255
    expected = np.bincount(gt[valid].astype(np.int64) * 12 + pred[valid], minlength=144)
    np.testing.assert_array_equal(cm.matrix, expected.reshape(12, 12))
    bad = pred.copy()
    bad[-1] = 12  # out of range in the last chunk only
    with pytest.raises(ValueError, match="predictions must lie in 0..11"):
        ConfusionMatrix(12).update(bad, gt)
