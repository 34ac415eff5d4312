"""jaxdet.ops.roi_align against torchvision.ops.roi_align / MultiScaleRoIAlign (values and gradients)."""
from collections import OrderedDict
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops.poolers import LevelMapper

from jaxdet.ops.roi_align import assign_levels, multilevel_roi_align, roi_align

ATOL = 1e-5


def random_rois(rng, n, img_hw, min_size=0.3, max_size=None):
    """RoIs of log-uniform size (sub-pixel to larger than the image), many partly outside the image."""
    h, w = img_hw
    max_size = max_size or 1.5 * max(h, w)
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (n, 2)))
    ctr = rng.uniform(-0.2, 1.2, (n, 2)) * np.array([w, h])
    return np.concatenate([ctr - size / 2, ctr + size / 2], 1).astype(np.float32)


def tv_roi_align(feats_nhwc, rois, bidx, out_size, scale, sr, aligned):
    x = torch.tensor(np.ascontiguousarray(feats_nhwc.transpose(0, 3, 1, 2)))
    r = torch.tensor(np.concatenate([bidx[:, None].astype(np.float32), rois], 1))
    return torchvision.ops.roi_align(x, r, out_size, scale, sr, aligned).numpy().transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def jit_roi_align(out_size, scale, sr, aligned, cap=4):
    return jax.jit(lambda f, r, b: roi_align(f, r, b, out_size, scale, sr, aligned, max_sampling_ratio=cap))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [1, 2, 4])
@pytest.mark.parametrize("out_size,scale", [((7, 7), 0.25), ((5, 3), 1.0)])
def test_roi_align_matches_torchvision(aligned, sr, out_size, scale):
    rng = np.random.default_rng(sr * 10 + aligned)
    b, h, w, c = 2, 19, 23, 5
    feats = rng.standard_normal((b, h, w, c)).astype(np.float32)
    img = (h / scale, w / scale)
    rois = random_rois(rng, 150, img)
    rois[0] = [0, 0, img[1], img[0]]  # whole image
    rois[1] = [-50, -50, -10, -10]  # fully outside (samples < -1 -> 0) ...
    rois[2] = [img[1] + 5, 0, img[1] + 40, 9]  # ... and beyond the far edge
    rois[3] = [3.3, 4.1, 3.35, 4.12]  # tiny
    bidx = rng.integers(0, b, 150).astype(np.int32)
    ref = tv_roi_align(feats, rois, bidx, out_size, scale, sr, aligned)
    out = np.asarray(jit_roi_align(out_size, scale, sr, aligned)(feats, rois, bidx))
    assert out.shape == (150, *out_size, c) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)
    assert np.abs(ref[:1]).max() > 0.1  # the reference is not trivially 0


@pytest.mark.parametrize("aligned", [False, True])
def test_adaptive_sampling_exact_below_cap(aligned):
    rng = np.random.default_rng(7)
    b, h, w, c = 1, 30, 30, 3
    feats = rng.standard_normal((b, h, w, c)).astype(np.float32)
    rois = random_rois(rng, 100, (h, w), max_size=28)  # grid = ceil(size / 7) <= 4
    bidx = np.zeros(100, np.int32)
    ref = tv_roi_align(feats, rois, bidx, (7, 7), 1.0, 0, aligned)
    out = np.asarray(jit_roi_align((7, 7), 1.0, 0, aligned, 4)(feats, rois, bidx))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)
    # a different adaptive grid per RoI really is used: sampling_ratio=2 everywhere differs
    fixed = tv_roi_align(feats, rois, bidx, (7, 7), 1.0, 2, aligned)
    assert np.abs(fixed - ref).max() > 1e-2


def test_adaptive_sampling_above_cap_uses_cap_samples():
    rng = np.random.default_rng(8)
    feats = rng.standard_normal((1, 40, 40, 3)).astype(np.float32)
    rois = np.array([[0, 0, 39, 39], [2, 1, 30, 38]], np.float32)  # grid ceil(39/4) = 10 > cap 3
    bidx = np.zeros(2, np.int32)
    out = np.asarray(jit_roi_align((4, 4), 1.0, 0, False, 3)(feats, rois, bidx))
    np.testing.assert_allclose(out, tv_roi_align(feats, rois, bidx, (4, 4), 1.0, 3, False), atol=ATOL)
    np.testing.assert_allclose(
        np.asarray(jit_roi_align((4, 4), 1.0, 0, False, 16)(feats, rois, bidx)),
        tv_roi_align(feats, rois, bidx, (4, 4), 1.0, 0, False),
        atol=ATOL,
    )


def test_assign_levels_matches_level_mapper():
    rng = np.random.default_rng(0)
    rois = random_rois(rng, 2000, (800, 1200), min_size=1, max_size=1500)
    rois[:3] = [[5, 5, 5, 5], [0, 0, 112, 112], [0, 0, 448, 448]]  # empty, exact boundaries
    ref = LevelMapper(2, 5)([torch.tensor(rois)]).numpy() + 2
    out = np.asarray(assign_levels(rois))
    np.testing.assert_array_equal(out, ref)
    assert set(out.tolist()) == {2, 3, 4, 5}
    np.testing.assert_array_equal(out[:3], [2, 3, 5])


def make_pyramid(rng, b, canvas, c, strides=(4, 8, 16, 32)):
    return [rng.standard_normal((b, canvas[0] // s, canvas[1] // s, c)).astype(np.float32) for s in strides]


def tv_multiscale(feats, rois, canvas):
    pooler = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    x = OrderedDict(
        (n, torch.tensor(np.ascontiguousarray(f.transpose(0, 3, 1, 2)), requires_grad=True))
        for n, f in zip(["p2", "p3", "p4", "p5"], feats)
    )
    out = pooler(x, [torch.tensor(r) for r in rois], [canvas] * len(rois))
    return out, x


def test_multilevel_matches_multiscale_roi_align():
    rng = np.random.default_rng(1)
    b, canvas, c = 2, (256, 320), 6
    feats = make_pyramid(rng, b, canvas, c)
    rois = np.stack([random_rois(rng, 80, canvas, min_size=4, max_size=700) for _ in range(b)])
    levels = np.asarray(assign_levels(rois))
    assert set(levels.ravel().tolist()) == {2, 3, 4, 5}  # every level is exercised
    ref, _ = tv_multiscale(feats, rois, canvas)
    ref = ref.detach().numpy().transpose(0, 2, 3, 1).reshape(b, 80, 7, 7, c)
    f = jax.jit(lambda fs, r: multilevel_roi_align(fs, r, (4, 8, 16, 32), 7, 2, False))
    out = np.asarray(f(feats, rois))
    assert out.shape == (b, 80, 7, 7, c)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_multilevel_aligned_matches_per_level_torchvision():
    rng = np.random.default_rng(2)
    b, canvas, c = 2, (128, 192), 4
    strides = (4, 8, 16, 32)
    feats = make_pyramid(rng, b, canvas, c)
    size = np.exp(rng.uniform(np.log(2), np.log(700), (b, 50, 1)))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), (b, 50, 1)))
    wh = np.concatenate([size * np.sqrt(aspect), size / np.sqrt(aspect)], -1)
    ctr = rng.uniform(0, 1, (b, 50, 2)) * np.array([canvas[1], canvas[0]])
    rois = np.concatenate([ctr - wh / 2, ctr + wh / 2], -1).astype(np.float32)
    levels = np.asarray(assign_levels(rois))
    stride = np.asarray(strides)[levels - 2]
    grid = np.ceil((rois[..., 2:] - rois[..., :2]) / stride[..., None] / 14)
    assert grid.max() > 2 and grid.max() <= 6  # adaptive grids differ per RoI, all within the cap
    assert set(levels.ravel().tolist()) == {2, 3, 4, 5}
    out = np.asarray(multilevel_roi_align(feats, rois, strides, (14, 14), 0, True, max_sampling_ratio=6))
    bidx = np.repeat(np.arange(b, dtype=np.int32), 50)
    flat_rois, flat_levels, flat_out = rois.reshape(-1, 4), levels.reshape(-1), out.reshape(b * 50, 14, 14, c)
    for l in range(4):
        sel = flat_levels == l + 2
        ref = tv_roi_align(feats[l], flat_rois[sel], bidx[sel], (14, 14), 1.0 / strides[l], 0, True)
        np.testing.assert_allclose(flat_out[sel], ref, atol=ATOL, rtol=0)


def test_gradient_wrt_features_matches_torch_autograd():
    rng = np.random.default_rng(3)
    b, canvas, c = 2, (128, 160), 3
    feats = make_pyramid(rng, b, canvas, c)
    rois = np.stack([random_rois(rng, 40, canvas, min_size=4, max_size=1000) for _ in range(b)])
    assert set(np.asarray(assign_levels(rois)).ravel().tolist()) == {2, 3, 4, 5}
    cot = rng.standard_normal((b, 40, 7, 7, c)).astype(np.float32)
    ref_out, x = tv_multiscale(feats, rois, canvas)
    ref_out.backward(torch.tensor(cot.reshape(b * 40, 7, 7, c).transpose(0, 3, 1, 2)))
    ref_grads = [t.grad.numpy().transpose(0, 2, 3, 1) for t in x.values()]

    def loss(fs):
        return jnp.sum(multilevel_roi_align(fs, rois, (4, 8, 16, 32), 7, 2, False) * cot)

    grads = jax.jit(jax.grad(loss))([jnp.asarray(f) for f in feats])
    for g, rg in zip(grads, ref_grads):
        assert np.abs(rg).max() > 0
        np.testing.assert_allclose(np.asarray(g), rg, atol=1e-4, rtol=1e-5)


def test_single_level_gradient_matches_torch_autograd():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((2, 12, 14, 3)).astype(np.float32)
    rois = random_rois(rng, 30, (48, 56))
    bidx = rng.integers(0, 2, 30).astype(np.int32)
    cot = rng.standard_normal((30, 4, 4, 3)).astype(np.float32)
    x = torch.tensor(feats.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    r = torch.tensor(np.concatenate([bidx[:, None].astype(np.float32), rois], 1))
    torchvision.ops.roi_align(x, r, (4, 4), 0.25, 2, True).backward(torch.tensor(cot.transpose(0, 3, 1, 2).copy()))
    g = jax.jit(jax.grad(lambda f: jnp.sum(roi_align(f, rois, bidx, 4, 0.25, 2, True) * cot)))(jnp.asarray(feats))
    np.testing.assert_allclose(np.asarray(g), x.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-5)


def test_gradient_wrt_rois_matches_finite_differences():
    rng = np.random.default_rng(5)
    feats = jnp.asarray(rng.standard_normal((1, 16, 16, 2)).astype(np.float32))
    rois = np.array([[2.3, 3.1, 11.7, 9.4], [0.6, 5.2, 7.9, 14.3]], np.float32)
    bidx = np.zeros(2, np.int32)
    cot = jnp.asarray(rng.standard_normal((2, 3, 3, 2)).astype(np.float32))
    f = jax.jit(lambda r: jnp.sum(roi_align(feats, r, bidx, 3, 1.0, 2, True) * cot))
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(rois)))
    eps = 1e-2
    fd = np.zeros_like(rois)
    for i in range(2):
        for j in range(4):
            d = np.zeros_like(rois)
            d[i, j] = eps
            fd[i, j] = (f(jnp.asarray(rois + d)) - f(jnp.asarray(rois - d))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=2e-3)
    assert np.abs(g).max() > 0.05


def test_bfloat16_features():
    rng = np.random.default_rng(6)
    feats = rng.standard_normal((1, 10, 10, 4)).astype(np.float32)
    rois = random_rois(rng, 20, (10, 10))
    bidx = np.zeros(20, np.int32)
    out = roi_align(jnp.asarray(feats, jnp.bfloat16), rois, bidx, 3, 1.0, 2, False)
    assert out.dtype == jnp.bfloat16
    ref = tv_roi_align(feats, rois, bidx, (3, 3), 1.0, 2, False)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)


def test_bad_input_raises():
    f = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="NHWC"):
        roi_align(np.zeros((4, 4, 2)), np.zeros((1, 4)), np.zeros(1, np.int32), 2, 1.0, 2, False)
    with pytest.raises(ValueError, match="batch_idx"):
        roi_align(f, np.zeros((3, 4)), np.zeros(2, np.int32), 2, 1.0, 2, False)
    with pytest.raises(ValueError, match="powers of 2"):
        multilevel_roi_align([f, f], np.zeros((1, 3, 4)), (4, 12), 2, 2, False)
    with pytest.raises(ValueError, match="rois"):
        multilevel_roi_align([f], np.zeros((2, 3, 4)), (4,), 2, 2, False)
