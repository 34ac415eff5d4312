"""jaxdet.ops.matcher.match against torchvision's Matcher."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import Matcher

from jaxdet.ops.matcher import match


def torchvision_match(iou, high, low, allow):
    m = Matcher(high, low, allow)(torch.tensor(iou)).numpy()
    labels = np.where(m >= 0, 1, np.where(m == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
    return m, labels


def test_hand_case_thresholds_and_low_quality():
    # 2 gt x 5 predictions
    iou = np.array(
        [
            [0.8, 0.5, 0.2, 0.1, 0.0],
            [0.1, 0.65, 0.35, 0.35, 0.0],
        ],
        np.float32,
    )
    valid = np.array([True, True])
    idx, labels = match(iou, valid, 0.7, 0.3, False)
    np.testing.assert_array_equal(labels, [1, -1, -1, -1, 0])
    np.testing.assert_array_equal(idx[:4], [0, 1, 1, 1])
    # low quality: gt 1's best is 0.65 (prediction 1) -> foreground, matched to its own argmax (gt 1)
    idx, labels = match(iou, valid, 0.7, 0.3, True)
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0])
    np.testing.assert_array_equal(idx[:2], [0, 1])


def test_low_quality_ties_all_become_positive():
    iou = np.array([[0.4, 0.4, 0.1], [0.0, 0.2, 0.1]], np.float32)
    _, labels = match(iou, np.array([True, True]), 0.7, 0.3, True)
    # gt0 best 0.4 attained by predictions 0 and 1 (tie); gt1 best 0.2 at prediction 1
    np.testing.assert_array_equal(labels, [1, 1, 0])
    ref_m, ref_labels = torchvision_match(iou, 0.7, 0.3, True)
    np.testing.assert_array_equal(labels, ref_labels)


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_random_matches_torchvision(allow, thresholds):
    rng = np.random.default_rng(0)
    for _ in range(5):
        m, n = rng.integers(1, 8), 300
        iou = rng.uniform(0, 1, (m, n)).astype(np.float32) ** 3
        iou[rng.uniform(size=iou.shape) < 0.3] = 0.0
        iou = np.round(iou, 2)  # creates ties, also on the argmax over gt
        ref_m, ref_labels = torchvision_match(iou, *thresholds, allow)
        # pad with 3 invalid gt rows holding large IoUs: they must be ignored entirely
        pad = np.full((3, n), 0.99, np.float32)
        idx, labels = jax.jit(match, static_argnums=(2, 3, 4))(
            np.concatenate([iou, pad]), np.arange(m + 3) < m, *thresholds, allow
        )
        np.testing.assert_array_equal(np.asarray(labels), ref_labels)
        fg = ref_m >= 0
        np.testing.assert_array_equal(np.asarray(idx)[fg], ref_m[fg])
        np.testing.assert_array_equal(np.asarray(idx), iou.argmax(0))  # first max among ties


def test_no_valid_gt_is_all_background():
    iou = np.full((4, 6), 0.9, np.float32)
    idx, labels = match(iou, np.zeros(4, bool), 0.7, 0.3, True)
    np.testing.assert_array_equal(labels, np.zeros(6))
    np.testing.assert_array_equal(idx, np.zeros(6))


def test_pred_valid_marks_padding_ignored_and_excludes_it_from_low_quality():
    iou = np.array([[0.5, 0.2, 0.6]], np.float32)
    valid_pred = np.array([True, True, False])
    idx, labels = match(iou, np.array([True]), 0.7, 0.3, True, pred_valid=valid_pred)
    # the padded prediction 2 has the highest IoU but is ignored; the best valid one (0) is fg
    np.testing.assert_array_equal(labels, [1, 0, -1])


def test_vmap_over_batch():
    rng = np.random.default_rng(2)
    iou = rng.uniform(0, 1, (3, 4, 50)).astype(np.float32)
    valid = rng.uniform(size=(3, 4)) < 0.7
    valid[:, 0] = True
    f = jax.vmap(lambda a, v: match(a, v, 0.7, 0.3, True))
    idx, labels = f(jnp.asarray(iou), jnp.asarray(valid))
    for b in range(3):
        ref_m, ref_labels = torchvision_match(iou[b][valid[b]], 0.7, 0.3, True)
        np.testing.assert_array_equal(np.asarray(labels[b]), ref_labels)
        fg = ref_m >= 0
        np.testing.assert_array_equal(np.asarray(idx[b])[fg], np.nonzero(valid[b])[0][ref_m[fg]])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="gt_valid"):
        match(np.zeros((2, 3)), np.ones(3, bool), 0.7, 0.3, False)
    with pytest.raises(ValueError, match="low_threshold"):
        match(np.zeros((2, 3)), np.ones(2, bool), 0.3, 0.7, False)
