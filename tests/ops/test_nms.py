"""jaxdet.ops.nms against torchvision.ops.nms / batched_nms."""
import jax
import numpy as np
import pytest
import torch
import torchvision

from jaxdet.ops.nms import batched_nms, nms


def clustered_boxes(rng, n, n_clusters=15, size=400.0):
    """Boxes jittered around a few centres, so many pairs overlap around typical thresholds."""
    centres = rng.uniform(0, size, (n_clusters, 2))
    c = centres[rng.integers(0, n_clusters, n)] + rng.normal(0, 8, (n, 2))
    wh = rng.uniform(10, 60, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def kept(keep, valid):
    keep, valid = np.asarray(keep), np.asarray(valid)
    assert np.all(valid[: valid.sum()]) and not np.any(valid[valid.sum():])  # valid prefix
    assert np.all(keep[~valid] == 0)
    return keep[valid]


def test_hand_case():
    boxes = np.array(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5], [21, 20, 31, 30]], np.float32
    )
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1], np.float32)
    # 3 (0.95) suppresses 0 (IoU 0.952) and 1 (0.78 > 0.5); 2 kept; 4 suppressed by 2 (IoU 0.818)
    keep, valid = nms(boxes, scores, 0.5, 4)
    np.testing.assert_array_equal(kept(keep, valid), [3, 2])
    keep, valid = nms(boxes, scores, 0.8, 5)  # 1 survives (IoU with 3 is 0.78), 4 is suppressed
    np.testing.assert_array_equal(kept(keep, valid), [3, 1, 2])
    np.testing.assert_array_equal(kept(*nms(boxes, scores, 0.8, 2)), [3, 1])  # truncated


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_random_matches_torchvision(seed, thr):
    rng = np.random.default_rng(seed)
    n = 600
    boxes = clustered_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if seed % 2:
        scores = np.round(scores, 1)  # ties: torchvision's stable sort keeps input order
    ref = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), thr).numpy()
    keep, valid = jax.jit(nms, static_argnums=(2, 3))(boxes, scores, thr, 200)
    got = kept(keep, valid)
    assert 20 < len(ref)
    np.testing.assert_array_equal(got, ref[:200])


def test_threshold_compared_like_the_double_in_torchvision():
    # IoU exactly float32(0.3) = 0.30000001192...: torchvision compares it with the double 0.3 -> suppressed
    a = np.array([[0, 0, 10, 10]], np.float32)
    # find a box whose float32 IoU with `a` equals float32(0.3)
    cand = np.array([[0, 0, 10, x] for x in np.linspace(2.9, 3.1, 20001, dtype=np.float32)], np.float32)
    iou = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(cand)).numpy()[0]
    hit = np.nonzero(iou == np.float32(0.3))[0]
    assert len(hit) > 0
    boxes = np.concatenate([a, cand[hit[:1]]])
    scores = np.array([1.0, 0.5], np.float32)
    ref = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.3).numpy()
    np.testing.assert_array_equal(kept(*nms(boxes, scores, 0.3, 2)), ref)
    assert len(ref) == 1


def test_valid_mask_equals_running_on_the_subset():
    rng = np.random.default_rng(5)
    n = 400
    boxes = clustered_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    valid = rng.uniform(size=n) < 0.6
    scores_with_junk = np.where(valid, scores, 10.0).astype(np.float32)  # invalid boxes score highest
    sub = np.nonzero(valid)[0]
    ref = sub[torchvision.ops.nms(torch.tensor(boxes[sub]), torch.tensor(scores[sub]), 0.5).numpy()]
    got = kept(*nms(boxes, scores_with_junk, 0.5, n, valid=valid))
    np.testing.assert_array_equal(got, ref)


def test_empty_and_all_invalid():
    keep, valid = nms(np.zeros((5, 4), np.float32), np.ones(5, np.float32), 0.5, 3, valid=np.zeros(5, bool))
    assert not np.any(np.asarray(valid))
    keep, valid = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, 3)
    assert keep.shape == (3,) and not np.any(np.asarray(valid))


def test_vmap():
    rng = np.random.default_rng(6)
    boxes = np.stack([clustered_boxes(rng, 200) for _ in range(3)])
    scores = rng.uniform(0, 1, (3, 200)).astype(np.float32)
    keep, valid = jax.jit(jax.vmap(lambda b, s: nms(b, s, 0.5, 50)))(boxes, scores)
    for i in range(3):
        ref = torchvision.ops.nms(torch.tensor(boxes[i]), torch.tensor(scores[i]), 0.5).numpy()[:50]
        np.testing.assert_array_equal(kept(keep[i], valid[i]), ref)


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_matches_torchvision_vanilla(seed):
    # N > 1000 boxes: torchvision's CPU batched_nms runs per-class NMS (_batched_nms_vanilla)
    rng = np.random.default_rng(seed)
    n = 1500
    boxes = clustered_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    idxs = rng.integers(0, 5, n).astype(np.int32)
    ref = torchvision.ops.batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(idxs), 0.5).numpy()
    got = kept(*jax.jit(batched_nms, static_argnums=(3, 4))(boxes, scores, idxs, 0.5, 1500))
    np.testing.assert_array_equal(got, ref)
    # it really is per class: plain NMS keeps fewer
    assert len(kept(*nms(boxes, scores, 0.5, 1500))) < len(got)


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_coordinate_trick_matches_torchvision(seed):
    # N <= 1000: torchvision uses the coordinate trick
    rng = np.random.default_rng(seed)
    n = 800
    boxes = clustered_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    idxs = rng.integers(0, 4, n).astype(np.int32)
    valid = rng.uniform(size=n) < 0.8
    sub = np.nonzero(valid)[0]
    ref = sub[
        torchvision.ops.batched_nms(
            torch.tensor(boxes[sub]), torch.tensor(scores[sub]), torch.tensor(idxs[sub]), 0.6
        ).numpy()
    ]
    got = kept(*batched_nms(boxes, scores, idxs, 0.6, n, valid=valid, coordinate_trick=True))
    np.testing.assert_array_equal(got, ref)
    got_mask = kept(*batched_nms(boxes, scores, idxs, 0.6, n, valid=valid))
    np.testing.assert_array_equal(got_mask, ref)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="scores"):
        nms(np.zeros((3, 4)), np.zeros(4), 0.5, 2)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2, np.int32), 0.5, 2)
