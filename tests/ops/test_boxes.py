"""jaxdet.ops.boxes against torchvision.ops and hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxdet.ops import boxes as B


def random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(0, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_box_area_hand():
    boxes = np.array([[0, 0, 10, 5], [2, 3, 2, 9], [1.5, 1, 3, 2]], np.float32)
    np.testing.assert_allclose(B.box_area(boxes), [50, 0, 1.5])
    assert B.box_area(boxes.reshape(1, 3, 4)).shape == (1, 3)


def test_box_iou_hand():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32)
    np.testing.assert_allclose(B.box_iou(a, b), [[50 / 150, 1.0, 0.0, 0.25]], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_box_iou_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 30), random_boxes(rng, 40)
    ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(np.asarray(B.box_iou(a, b)), ref, rtol=1e-6, atol=1e-7)


def test_box_iou_empty_boxes_give_zero_not_nan():
    a = np.array([[3, 3, 3, 3], [0, 0, 1, 1]], np.float32)
    b = np.array([[3, 3, 3, 3], [5, 5, 5, 9]], np.float32)
    iou = np.asarray(B.box_iou(a, b))
    assert np.all(np.isfinite(iou))
    np.testing.assert_array_equal(iou, np.zeros((2, 2)))
    # and the gradient is finite too
    g = jax.grad(lambda x: B.box_iou(x, jnp.asarray(b)).sum())(jnp.asarray(a))
    assert np.all(np.isfinite(np.asarray(g)))


def test_box_iou_batched():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 6).reshape(2, 3, 4), random_boxes(rng, 10).reshape(2, 5, 4)
    out = np.asarray(B.box_iou(a, b))
    assert out.shape == (2, 3, 5)
    for i in range(2):
        np.testing.assert_allclose(out[i], np.asarray(B.box_iou(a[i], b[i])))


def test_box_ioa_hand():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 2, 2], [4, 4, 4, 8]], np.float32)
    np.testing.assert_allclose(B.box_ioa(a, b), [[25 / 100, 1.0, 0.0]])


def test_clip_boxes_matches_torchvision_and_traced_size():
    rng = np.random.default_rng(0)
    boxes = (rng.uniform(-50, 150, (20, 4))).astype(np.float32)
    ref = torchvision.ops.clip_boxes_to_image(torch.tensor(boxes), (60, 80)).numpy()
    np.testing.assert_array_equal(np.asarray(B.clip_boxes(boxes, (60, 80))), ref)
    clip_jit = jax.jit(B.clip_boxes)
    np.testing.assert_array_equal(np.asarray(clip_jit(boxes, jnp.array([60, 80], jnp.int32))), ref)
    # vmapped over a batch of image sizes
    sizes = jnp.array([[60, 80], [10, 20]], jnp.int32)
    out = jax.vmap(B.clip_boxes)(jnp.stack([boxes, boxes]), sizes)
    ref2 = torchvision.ops.clip_boxes_to_image(torch.tensor(boxes), (10, 20)).numpy()
    np.testing.assert_array_equal(np.asarray(out[1]), ref2)


def test_small_boxes_mask_matches_remove_small_boxes():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 100, scale=10)
    keep = torchvision.ops.remove_small_boxes(torch.tensor(boxes), 1.5).numpy()
    mask = np.asarray(B.small_boxes_mask(boxes, 1.5))
    np.testing.assert_array_equal(np.nonzero(mask)[0], keep)
    assert 0 < mask.sum() < 100


def test_format_conversions():
    xyxy = np.array([[1, 2, 4, 8], [0, 0, 0, 0]], np.float32)
    xywh = np.array([[1, 2, 3, 6], [0, 0, 0, 0]], np.float32)
    cxcywh = np.array([[2.5, 5, 3, 6], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(B.box_xyxy_to_xywh(xyxy), xywh)
    np.testing.assert_array_equal(B.box_xywh_to_xyxy(xywh), xyxy)
    np.testing.assert_array_equal(B.box_xyxy_to_cxcywh(xyxy), cxcywh)
    np.testing.assert_array_equal(B.box_cxcywh_to_xyxy(cxcywh), xyxy)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="boxes1"):
        B.box_iou(np.zeros((3, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="image_size"):
        B.clip_boxes(np.zeros((3, 4)), (1, 2, 3))
