"""jaxdet.ops.keypoints against torchvision's ``keypoints_to_heatmap``, ``keypointrcnn_loss`` and
``heatmaps_to_keypoints`` (torchvision/models/detection/roi_heads.py) on random inputs, and the pieces of the
static argmax (PyTorch's bicubic bits, cell windows, Bernstein bounds) against brute force."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torchvision.models.detection import roi_heads as tv_roi_heads  # noqa: E402

from jaxdet.ops import keypoints as kp_ops  # noqa: E402

torch.set_num_threads(2)
S = 56


def _rois(rng, n, max_w=1333.0, max_h=800.0, min_side=0.3):
    x1 = rng.uniform(0, max_w * 0.6, n)
    y1 = rng.uniform(0, max_h * 0.6, n)
    w = np.exp(rng.uniform(np.log(min_side), np.log(max_w * 0.4), n))
    h = np.exp(rng.uniform(np.log(min_side), np.log(max_h * 0.4), n))
    return np.stack([x1, y1, np.minimum(x1 + w, max_w), np.minimum(y1 + h, max_h)], 1).astype(np.float32)


def _heatmaps(rng, r, k, noise=0.3):
    """Smooth random logit maps (a coarse grid upsampled, plus noise): several competing local maxima."""
    base = torch.from_numpy(rng.standard_normal((r, k, 8, 8)).astype(np.float32) * 3)
    maps = F.interpolate(base, size=(S, S), mode="bilinear", align_corners=False).numpy()
    return (maps + rng.standard_normal((r, k, S, S)).astype(np.float32) * noise).astype(np.float32)


# ------------------------------------------------------------------------------------------------ targets, loss
def test_keypoints_to_heatmap_matches_torchvision():
    rng = np.random.default_rng(0)
    r, k = 300, 17
    rois = _rois(rng, r, min_side=2.0)
    x1, y1, x2, y2 = (rois[:, i:i + 1] for i in range(4))
    # inside, outside, exactly on every edge, unlabelled
    u = rng.uniform(-0.2, 1.2, (r, k, 2)).astype(np.float32)
    kp = np.stack([x1 + u[..., 0] * (x2 - x1), y1 + u[..., 1] * (y2 - y1), rng.integers(0, 3, (r, k))], -1)
    kp = kp.astype(np.float32)
    kp[:, :4, :2] = (rois[:, None, :2] + rois[:, None, 2:]) / 2   # the box centre, then one coordinate on an edge:
    kp[:, 0, 0], kp[:, 1, 1] = rois[:, 2], rois[:, 3]          # right / bottom edge: the last cell
    kp[:, 2, 0], kp[:, 3, 1] = rois[:, 0], rois[:, 1]          # left / top edge: cell 0
    kp[:, :4, 2] = 2
    ref_t, ref_v = tv_roi_heads.keypoints_to_heatmap(torch.from_numpy(kp), torch.from_numpy(rois), S)
    targets, valid = jax.jit(kp_ops.keypoints_to_heatmap, static_argnums=2)(kp, rois, S)
    np.testing.assert_array_equal(np.asarray(valid), ref_v.numpy().astype(bool))
    np.testing.assert_array_equal(np.asarray(targets), ref_t.numpy())
    assert 0.2 < np.asarray(valid).mean() < 0.8
    assert np.asarray(valid)[:, :4].all() and (np.asarray(targets)[:, 0] % S == S - 1).all()


def test_keypoint_rcnn_loss_matches_torchvision():
    rng = np.random.default_rng(1)
    k, n_img, m = 17, 2, 5
    props, gts, midx, logits_t = [], [], [], []
    for i in range(n_img):
        rois = _rois(rng, 20 + 7 * i, min_side=8.0)
        gt = np.zeros((m, k, 3), np.float32)
        gt[..., 0] = rng.uniform(0, 1000, (m, k))
        gt[..., 1] = rng.uniform(0, 700, (m, k))
        gt[..., 2] = rng.integers(0, 3, (m, k))
        mi = rng.integers(0, m, len(rois))
        # place half of the matched keypoints inside their RoI
        inside = rng.random((len(rois), k)) < 0.5
        for j in range(len(rois)):
            g = gt[mi[j]].copy()
            pos = rois[j, :2] + rng.uniform(0, 1, (k, 2)) * (rois[j, 2:] - rois[j, :2])
            g[inside[j], :2] = pos[inside[j]]
            gt[mi[j]] = g
        props.append(rois)
        gts.append(gt)
        midx.append(mi)
        logits_t.append(rng.standard_normal((len(rois), k, S, S)).astype(np.float32) * 2)
    logits = np.concatenate(logits_t)
    ref = tv_roi_heads.keypointrcnn_loss(torch.from_numpy(logits), [torch.from_numpy(p) for p in props],
                                         [torch.from_numpy(g) for g in gts], [torch.from_numpy(i) for i in midx])
    # jaxdet: padded to a static count per image, the padding masked out by roi_valid
    pad = 40
    lg = np.zeros((n_img, pad, k, S, S), np.float32)
    rr = np.zeros((n_img, pad, 4), np.float32)
    gg = np.zeros((n_img, pad, k, 3), np.float32)
    vv = np.zeros((n_img, pad), bool)
    for i in range(n_img):
        n = len(props[i])
        lg[i, :n], rr[i, :n], gg[i, :n], vv[i, :n] = logits_t[i], props[i], gts[i][midx[i]], True
        gg[i, n:] = 5.0  # padding keypoints that would count if the mask were ignored
        rr[i, n:] = [0, 0, 100, 100]
    ours = jax.jit(kp_ops.keypoint_rcnn_loss)(lg, rr, gg, vv)
    np.testing.assert_allclose(float(ours), float(ref), rtol=2e-6)
    assert float(jax.jit(kp_ops.keypoint_rcnn_loss)(lg, rr, np.zeros_like(gg), vv)) == 0.0


# ------------------------------------------------------------------------------------------------ bicubic pieces
@pytest.mark.parametrize("out_h,out_w", [(1, 1), (5, 1), (3, 56), (56, 57), (73, 211), (560, 1333), (800, 29)])
def test_bicubic_taps_are_pytorchs_bits(out_h, out_w):
    """The full resize assembled from bicubic_source_taps (the same FMA-shaped sums as heatmaps_to_keypoints)
    equals F.interpolate(mode='bicubic', align_corners=False) bit for bit."""
    rng = np.random.default_rng(out_h * 1000 + out_w)
    m = rng.standard_normal((S, S)).astype(np.float32) * 4

    @jax.jit
    def resize(m, size_h, size_w):  # sizes as runtime values: XLA's constant folding does not contract FMAs
        oy = jnp.arange(out_h, dtype=jnp.float32) + 0.0 * size_h
        ox = jnp.arange(out_w, dtype=jnp.float32) + 0.0 * size_w
        cy, wy = kp_ops.bicubic_source_taps(oy, kp_ops._axis_scale(S, size_h), S)
        cx, wx = kp_ops.bicubic_source_taps(ox, kp_ops._axis_scale(S, size_w), S)
        ty = jnp.clip(cy[:, None] + jnp.arange(4) - 1, 0, S - 1)              # [H, 4]
        tx = jnp.clip(cx[:, None] + jnp.arange(4) - 1, 0, S - 1)              # [W, 4]
        v = m[ty[:, :, None, None], tx[None, None, :, :]]                     # [H, 4 (j), W, 4 (i)]
        inner = kp_ops._sum4(v, wx[None, None, :, :])                         # [H, 4, W]
        return kp_ops._sum4(jnp.moveaxis(inner, 1, -1), wy[:, None, :])       # [H, W]

    ref = F.interpolate(torch.from_numpy(m)[None, None], size=(out_h, out_w), mode="bicubic",
                        align_corners=False)[0, 0].numpy()
    np.testing.assert_array_equal(np.asarray(resize(m, np.float32(out_h), np.float32(out_w))), ref)


def test_cell_windows_cover_every_output_size():
    """For every output size up to 1344 px, the start of each source cell equals brute force, and no cell holds
    more output pixels than heatmaps_to_keypoints' static window (ceil(max / S) + 2)."""
    max_out = 1344
    sizes = np.arange(1, max_out + 1, dtype=np.float32)
    starts = np.asarray(jax.jit(lambda o: kp_ops._axis_starts(S, o, kp_ops._axis_scale(S, o), max_out))(sizes))
    scale = np.float32(S) / sizes
    o = np.arange(max_out)
    src = (scale[:, None].astype(np.float64) * (o[None] + 0.5) - 0.5).astype(np.float32)   # PyTorch: double
    cell = np.minimum(np.floor(src), S - 1).astype(np.int64)
    cell = np.where(o[None] < sizes[:, None], cell, S + 5)
    brute = np.stack([(cell < c).sum(1) for c in range(-1, S + 1)], 1)
    brute[:, -1] = sizes
    np.testing.assert_array_equal(starts, brute)
    counts = np.diff(starts, axis=1)
    assert counts.max() <= -(-max_out // S) + 2
    assert (counts.sum(1) == sizes).all()


@pytest.mark.parametrize("out_h,out_w", [(200, 300), (57, 1000), (20, 33), (1, 700)])
def test_cell_bounds_are_upper_bounds(out_h, out_w):
    """Each cell's bound is >= every resized pixel of the cell (PyTorch's values): exact for cells of one pixel,
    tight for dense ones."""
    rng = np.random.default_rng(out_h + out_w)
    m = _heatmaps(rng, 1, 3)
    size_h, size_w = np.float32([out_h]), np.float32([out_w])

    @jax.jit
    def bounds(m, size_h, size_w):
        sy, sx = kp_ops._axis_scale(S, size_h), kp_ops._axis_scale(S, size_w)
        starts_y = kp_ops._axis_starts(S, size_h, sy, 1344)
        starts_x = kp_ops._axis_starts(S, size_w, sx, 1344)
        return kp_ops._cell_bounds(m, starts_y, starts_x, sy, sx), starts_y, starts_x

    b, sy, sx = (np.asarray(x) for x in bounds(m, size_h, size_w))
    full = F.interpolate(torch.from_numpy(m), size=(out_h, out_w), mode="bicubic", align_corners=False)[0].numpy()
    gaps = []
    for cy in range(S + 1):
        for cx in range(S + 1):
            y0, y1, x0, x1 = int(sy[0, cy]), int(sy[0, cy + 1]), int(sx[0, cx]), int(sx[0, cx + 1])
            if y1 == y0 or x1 == x0:
                continue
            vals = full[:, y0:y1, x0:x1].max(axis=(1, 2))
            scale = np.abs(m).max(axis=(2, 3))[0]
            assert np.all(vals <= b[0, :, cy, cx] + 1e-6 * scale), (cy, cx)
            gaps.append((b[0, :, cy, cx] - vals) / scale)
            if y1 - y0 == 1 and x1 - x0 == 1:
                np.testing.assert_allclose(b[0, :, cy, cx], vals, rtol=0, atol=1e-5 * scale.max())
    assert np.median(gaps) < 0.02


# ------------------------------------------------------------------------------------------------ decoding
def test_heatmaps_to_keypoints_matches_torchvision():
    """Random smooth maps with noise, boxes from 0.3 px to the whole canvas (800 x 1344): with the default 16
    candidate cells every keypoint is certified exact and equals torchvision's: same argmax pixel, bit-identical
    x, y and score (8 candidates certify them all too, 4 all but one)."""
    rng = np.random.default_rng(4)
    r, k = 64, 17
    maps = _heatmaps(rng, r, k)
    rois = _rois(rng, r)
    rois[0] = [10.0, 20.0, 10.6, 20.2]             # < 1 px: clamped to 1
    rois[1] = [0.0, 0.0, 1333.0, 800.0]            # the whole canvas
    rois[2] = [100.0, 50.0, 156.0, 106.0]          # exactly 56 x 56
    ref_xy, ref_s = tv_roi_heads.heatmaps_to_keypoints(torch.from_numpy(maps), torch.from_numpy(rois))
    fn = jax.jit(kp_ops.heatmaps_to_keypoints, static_argnums=(2, 3))
    kps, exact = jax.device_get(fn(maps, rois, (800, 1344), kp_ops.DEFAULT_NUM_CANDIDATES))
    assert exact.all()
    np.testing.assert_array_equal(kps[..., :2], ref_xy.numpy()[..., :2])
    np.testing.assert_array_equal(kps[..., 2], ref_s.numpy())


def test_exactness_flag_with_few_candidates():
    """With one candidate cell and rough maps the bound often fails to certify: certified keypoints still equal
    torchvision's, uncertified ones are the best of the evaluated cell (never better than torchvision's maximum,
    sometimes worse)."""
    rng = np.random.default_rng(5)
    r, k = 40, 17
    maps = _heatmaps(rng, r, k, noise=1.0)
    rois = _rois(rng, r, min_side=20.0)
    ref_xy, ref_s = tv_roi_heads.heatmaps_to_keypoints(torch.from_numpy(maps), torch.from_numpy(rois))
    ref_xy, ref_s = ref_xy.numpy(), ref_s.numpy()
    fn = jax.jit(kp_ops.heatmaps_to_keypoints, static_argnums=(2, 3))
    kps, exact = jax.device_get(fn(maps, rois, (800, 1344), 1))
    assert 0.05 < exact.mean() < 0.95
    np.testing.assert_array_equal(kps[exact][:, :2], ref_xy[exact][:, :2])
    np.testing.assert_array_equal(kps[exact][:, 2], ref_s[exact])
    assert (kps[..., 2] <= ref_s).all()
    assert (kps[~exact][:, 2] < ref_s[~exact]).any()
