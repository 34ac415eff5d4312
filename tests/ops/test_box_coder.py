"""jaxdet.ops.box_coder against torchvision's BoxCoder."""
import math

import jax
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from jaxdet.ops.box_coder import decode_boxes, encode_boxes


def random_boxes(rng, n):
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(1, 300, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_torchvision(weights):
    rng = np.random.default_rng(0)
    gt, anchors = random_boxes(rng, 200), random_boxes(rng, 200)
    ref = BoxCoder(weights).encode_single(torch.tensor(gt), torch.tensor(anchors)).numpy()
    out = np.asarray(jax.jit(encode_boxes, static_argnums=2)(gt, anchors, weights))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_matches_torchvision_including_clamp(weights):
    rng = np.random.default_rng(1)
    anchors = random_boxes(rng, 300)
    deltas = rng.normal(0, 2, (300, 4)).astype(np.float32)
    deltas[:20, 2:] = 50.0  # far above log(1000/16) * weight: exercises the clamp
    ref = BoxCoder(weights).decode_single(torch.tensor(deltas), torch.tensor(anchors)).numpy()
    out = np.asarray(decode_boxes(deltas, anchors, weights))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)
    # clamp reached: width = exp(log(1000/16)) * anchor width
    w = out[:20, 2] - out[:20, 0]
    np.testing.assert_allclose(w, (anchors[:20, 2] - anchors[:20, 0]) * 1000 / 16, rtol=1e-5)


def test_class_specific_deltas_by_reshape():
    rng = np.random.default_rng(2)
    anchors = random_boxes(rng, 10)
    deltas = rng.normal(0, 1, (10, 3 * 4)).astype(np.float32)
    ref = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(torch.tensor(deltas), [torch.tensor(anchors)]).numpy()
    out = decode_boxes(deltas.reshape(10, 3, 4), anchors[:, None, :], (10.0, 10.0, 5.0, 5.0))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-3)


def test_roundtrip_and_hand_case():
    anchor = np.array([[0, 0, 10, 20]], np.float32)
    box = np.array([[5, 0, 25, 20]], np.float32)
    d = np.asarray(encode_boxes(box, anchor))
    np.testing.assert_allclose(d, [[1.0, 0.0, math.log(2.0), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(decode_boxes(d, anchor)), box, rtol=1e-6)


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="weights"):
        encode_boxes(np.zeros((1, 4)), np.ones((1, 4)), (1.0, 1.0))
