"""Keypoint R-CNN heatmap ops (He et al., "Mask R-CNN", ICCV 2017), static shapes, pure jnp.

Semantics of torchvision ``torchvision/models/detection/roi_heads.py``: :func:`keypoints_to_heatmap`,
:func:`keypoint_rcnn_loss` (``keypointrcnn_loss``) and :func:`heatmaps_to_keypoints`. Heatmaps are in
torchvision's layout ``[R, K, S, S]`` (RoI, keypoint, y, x); keypoints are ``(x, y, v)`` in canvas pixels
(continuous coordinates, as torchvision: no half-pixel shift).

:func:`heatmaps_to_keypoints` is where torchvision has a data-dependent shape: per RoI it resizes the
S x S heatmap bicubically to ``ceil(box height) x ceil(box width)`` pixels and takes the argmax. Here the
argmax is found without materialising that map (see the function's docstring for the exactness condition):
the bicubic interpolant is separable and piecewise a bicubic polynomial over each "cell" (the output pixels
whose source coordinate falls between two heatmap samples), so

1. every cell gets an upper bound of the interpolant over its output pixels: the largest of the 16 Bernstein
   control points of its bicubic patch restricted to the range of the pixels' source offsets on each axis (a
   polynomial lies in the convex hull of its Bernstein coefficients; a cell holding one pixel per axis gets its
   exact value), plus a float-rounding margin;
2. the ``num_candidates`` cells with the highest bounds are evaluated exactly, pixel by pixel, with
   torchvision's float32 operations in torchvision's order (see below), and the best pixel is kept (ties:
   the first in raster order, as ``torch.argmax``);
3. the result is torchvision's argmax whenever that best value exceeds the bound of every cell not evaluated.

Bit-level agreement with PyTorch's CPU kernel (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``,
``cpu_upsample_generic`` with ``HelperInterpCubic``; ``UpSample.h``): the source coordinate
``scale * (o + 0.5) - 0.5`` is rounded once (PyTorch computes it in double), the cubic-convolution weights
(A = -0.75) and the 4 x 4 tap sums use the fused multiply-adds that PyTorch's compiled kernel uses (measured
against torch 2.x on x86-64: ``c1(x) = fma(1.25, x, -2.25) * x * x + 1``, ``c2(x) = fma(fma(-0.75, x, 3.75), x,
-6) * x + 3``, each 4-tap sum ``fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 * w1)))``, x taps inside, y taps
outside). XLA on CPU contracts ``a * b + c`` into an FMA; :func:`~jaxdet.ops.boxes.mul_no_fma` keeps the
products that PyTorch rounds separately. tests/ops/test_keypoints.py checks the bits against torch. (XLA's
compile-time constant folding does not contract: bit-exactness needs the boxes to be runtime values, as they are
in a model.)
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import mul_no_fma, true_divide

__all__ = [
    "keypoints_to_heatmap",
    "keypoint_rcnn_loss",
    "heatmaps_to_keypoints",
    "bicubic_source_taps",
    "DEFAULT_NUM_CANDIDATES",
]

#: Cells evaluated exactly per (RoI, keypoint) by :func:`heatmaps_to_keypoints`.
DEFAULT_NUM_CANDIDATES = 16

_A = -0.75  # PyTorch's bicubic (antialias=False) cubic-convolution constant (OpenCV's)


# ------------------------------------------------------------------------------------------------ targets, loss
def keypoints_to_heatmap(keypoints: jax.Array, rois: jax.Array, heatmap_size: int) -> tuple[jax.Array, jax.Array]:
    """Discretises ground-truth keypoints into their RoI's ``heatmap_size`` x ``heatmap_size`` grid.

    torchvision ``keypoints_to_heatmap``: ``x' = floor((x - x1) * (S / (x2 - x1)))`` (the scale as torch
    computes ``S / w``: the reciprocal times S), a keypoint exactly on the right (bottom) box edge goes to
    column (row) ``S - 1``; a keypoint counts when it is labelled (``v > 0``) and falls inside the grid.

    Args:
      keypoints: [..., K, 3] float32 (x, y, v) in canvas pixels.
      rois: [..., 4] float32 xyxy canvas pixels (same leading dims).
      heatmap_size: static S (56).
    Returns:
      ``(targets, valid)``: [..., K] int32 flat index ``y * S + x`` (0 where not valid) and [..., K] bool.
    """
    keypoints = jnp.asarray(keypoints, jnp.float32)
    rois = jnp.asarray(rois, jnp.float32)
    s = float(heatmap_size)
    x1, y1, x2, y2 = (rois[..., i][..., None] for i in range(4))
    scale_x = mul_no_fma(true_divide(jnp.ones_like(x2), x2 - x1), s)  # torch: S / t == t.reciprocal() * S
    scale_y = mul_no_fma(true_divide(jnp.ones_like(y2), y2 - y1), s)
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    gx = jnp.floor(mul_no_fma(x - x1, scale_x))
    gy = jnp.floor(mul_no_fma(y - y1, scale_y))
    gx = jnp.where(x == x2, s - 1, gx)
    gy = jnp.where(y == y2, s - 1, gy)
    valid = (gx >= 0) & (gy >= 0) & (gx < s) & (gy < s) & (v > 0)
    lin = jnp.where(valid, gy * s + gx, 0.0).astype(jnp.int32)
    return lin, valid


def keypoint_rcnn_loss(logits: jax.Array, rois: jax.Array, gt_keypoints: jax.Array,
                       roi_valid: jax.Array) -> jax.Array:
    """torchvision ``keypointrcnn_loss``: cross-entropy over the S*S heatmap positions of each labelled
    keypoint inside its RoI, averaged over those keypoints of the whole batch (0 when there are none).

    Args:
      logits: [..., K, S, S] float heatmap logits of the RoIs.
      rois: [..., 4] float32 xyxy canvas pixels (the sampled positive RoIs).
      gt_keypoints: [..., K, 3] float32 (x, y, v) of each RoI's matched ground truth, canvas pixels.
      roi_valid: [...] bool, the RoIs that count (positives).
    Returns:
      float32 scalar.
    """
    k, s = logits.shape[-3], logits.shape[-1]
    if logits.shape[-2] != s:
        raise ValueError(f"keypoint logits must be square [..., K, S, S], got {tuple(logits.shape)}")
    targets, valid = keypoints_to_heatmap(gt_keypoints, rois, s)
    valid = valid & jnp.asarray(roi_valid, bool)[..., None]
    logp = jax.nn.log_softmax(logits.reshape(*logits.shape[:-3], k, s * s).astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ bicubic pieces
def _c1(x):
    """PyTorch ``cubic_convolution1`` (|d| <= 1) as compiled: ``fma(A + 2, x, -(A + 3)) * x * x + 1``."""
    u = (_A + 2.0) * x - (_A + 3.0)                   # contracted to an FMA by XLA, as in torch's kernel
    return mul_no_fma(u * x, x) + 1.0


def _c2(x):
    """PyTorch ``cubic_convolution2`` (1 < |d| < 2) as compiled: ``fma(fma(A, x, -5A), x, 8A) * x - 4A``."""
    t = _A * x - 5.0 * _A                             # FMA
    t = t * x + 8.0 * _A                              # FMA
    return mul_no_fma(t, x) - 4.0 * _A


def _sum4(v, w):
    """``fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 * w1)))`` over the last axis (size 4) of ``v`` and ``w``."""
    acc = mul_no_fma(v[..., 1], w[..., 1])
    acc = v[..., 0] * w[..., 0] + acc
    acc = v[..., 2] * w[..., 2] + acc
    return v[..., 3] * w[..., 3] + acc


def _axis_scale(in_size: int, out_size: jax.Array) -> jax.Array:
    """PyTorch ``area_pixel_compute_scale`` with align_corners=False and no scale factor: ``in / out`` in
    float32 (also for ``out == 1``)."""
    out_size = jnp.asarray(out_size, jnp.float32)
    return true_divide(jnp.full_like(out_size, float(in_size)), out_size)


def bicubic_source_taps(out_index: jax.Array, scale: jax.Array, in_size: int) -> tuple[jax.Array, jax.Array]:
    """Source cell and the 4 tap weights of output pixels of a PyTorch bicubic resize (align_corners=False).

    ``src = scale * (o + 0.5) - 0.5`` (rounded once), ``cell = min(floor(src), in_size - 1)`` (in
    ``-1 .. in_size - 1``), ``t = clip(src - cell, 0, 1)``; the taps read samples ``clip(cell - 1 + j, 0,
    in_size - 1)``, j = 0..3, with weights ``c2(t + 1), c1(t), c1(1 - t), c2(2 - t)``.

    Args:
      out_index: [...] float32 output pixel indices (integers).
      scale: float32 broadcastable to ``out_index`` (:func:`_axis_scale`).
      in_size: static number of input samples along the axis.
    Returns:
      ``(cell [...] int32, weights [..., 4] float32)``, bit-identical to PyTorch's CPU kernel.
    """
    cell, t = _source(out_index, scale, in_size)
    t2 = 1.0 - t
    w = jnp.stack([_c2(t + 1.0), _c1(t), _c1(t2), _c2(t2 + 1.0)], axis=-1)
    return cell.astype(jnp.int32), w


def _source(out_index, scale, in_size: int):
    """(cell float32 in -1 .. in_size - 1, t in [0, 1]) of output pixels, as PyTorch's ``guard_index_and_lambda``."""
    src = scale * (out_index + 0.5) - 0.5              # one rounding (FMA), as PyTorch's double computation
    cell = jnp.minimum(jnp.floor(src), in_size - 1.0)
    return cell, jnp.clip(src - cell, 0.0, 1.0)


def _tap_polynomials(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Values and derivatives [..., 4] of the tap weights ``c2(t + 1), c1(t), c1(1 - t), c2(2 - t)`` as exact
    real polynomials of t (plain float32 arithmetic: used for bounds, not for PyTorch's bits)."""
    a = _A
    c1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    d1 = lambda x: (3 * (a + 2) * x - 2 * (a + 3)) * x
    d2 = lambda x: (3 * a * x - 10 * a) * x + 8 * a
    val = jnp.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)], axis=-1)
    der = jnp.stack([d2(t + 1), d1(t), -d1(1 - t), -d2(2 - t)], axis=-1)
    return val, der


def _restricted_bernstein(t0: jax.Array, t1: jax.Array) -> jax.Array:
    """[..., 4 taps, 4 control points]: the Bernstein coefficients of each tap weight as a cubic on
    ``[t0, t1]`` (the range of t over a cell's output pixels): ``p(t0), p(t0) + d p'(t0) / 3, p(t1) - d p'(t1) / 3,
    p(t1)`` with ``d = t1 - t0``. A cell with one pixel (t0 = t1) gets its exact weights."""
    v0, d0 = _tap_polynomials(t0)
    v1, d1 = _tap_polynomials(t1)
    d = (t1 - t0)[..., None] / 3.0
    return jnp.stack([v0, v0 + d * d0, v1 - d * d1, v1], axis=-1)


#: Relative margin added to the cell bounds for the float32 rounding of the evaluated values (a 4 x 4 tap
#: sum with weights of total magnitude <= 1.5625 is within ~1e-6 * max|heatmap| of the real interpolant).
_BOUND_MARGIN = 2.0**-16


def _axis_starts(in_size: int, out_size: jax.Array, scale: jax.Array, max_out: int) -> jax.Array:
    """[..., in_size + 2] float32: the first output pixel of cells -1 .. in_size - 1, then ``out_size``
    (so cell c covers ``[starts[c + 1], starts[c + 2])``; empty when equal)."""
    o = jnp.arange(max_out, dtype=jnp.float32)
    cell, _ = bicubic_source_taps(o, scale[..., None], in_size)             # [..., max_out], non-decreasing
    inside = o < out_size[..., None]
    c = jnp.arange(-1, in_size + 1, dtype=jnp.int32)                         # -1 .. in_size
    before = (cell[..., None, :] < c[:, None]) & inside[..., None, :]       # [..., in_size + 2, max_out]
    return jnp.sum(before, axis=-1).astype(jnp.float32)


def _cell_bernstein(starts: jax.Array, scale: jax.Array, in_size: int) -> jax.Array:
    """[R, in_size + 1, 4, 4]: per cell, the Bernstein coefficients of the tap weights on the range of t of its
    first and last output pixel (``starts`` [R, in_size + 2] from :func:`_axis_starts`; empty cells: anything)."""
    first = starts[:, :-1]
    last = jnp.maximum(starts[:, 1:] - 1.0, first)
    _, t0 = _source(first, scale[:, None], in_size)
    _, t1 = _source(last, scale[:, None], in_size)
    return _restricted_bernstein(t0, t1)


def _cell_bounds(maps: jax.Array, starts_y: jax.Array, starts_x: jax.Array, scale_y: jax.Array,
                 scale_x: jax.Array) -> jax.Array:
    """[R, K, S_h + 1, S_w + 1]: per source cell (-1 .. S - 1 on each axis) an upper bound of the bicubic
    interpolant (as a real function) over the cell's output pixels: the largest of the 16 Bernstein control
    points of the bicubic patch restricted to the cell's range of t on each axis (a polynomial lies in the convex
    hull of its Bernstein coefficients). ``maps`` [R, K, S_h, S_w]; ``starts_*`` from :func:`_axis_starts`."""
    _, _, sh, sw = maps.shape
    bern_y = _cell_bernstein(starts_y, scale_y, sh)                       # [R, S_h + 1, 4 taps, 4 ctrl]
    bern_x = _cell_bernstein(starts_x, scale_x, sw)
    pad = jnp.pad(maps, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")     # [R, K, S_h + 4, S_w + 4]
    rows = [pad[:, :, j:j + sh + 1, :] for j in range(4)]                  # tap j of cell c: sample c - 1 + j
    bound = None
    for a in range(4):
        ra = sum(bern_y[:, None, :, j, a, None] * rows[j] for j in range(4))   # [R, K, S_h + 1, S_w + 4]
        cols = [ra[..., i:i + sw + 1] for i in range(4)]
        for b in range(4):
            cb = sum(bern_x[:, None, None, :, i, b] * cols[i] for i in range(4))
            bound = cb if bound is None else jnp.maximum(bound, cb)
    return bound


def _top_cells(bound: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Indices [..., n] int32 of the n largest entries of ``bound`` [..., C] and the largest remaining value
    [...] (-inf when none)."""
    lead, c = bound.shape[:-1], bound.shape[-1]
    m = min(n + 1, c)
    vals, idx = jax.lax.top_k(bound.reshape(-1, c), m)    # 2-D: XLA CPU's TopK kernel instead of a full sort
    vals, idx = vals.reshape(*lead, m), idx.reshape(*lead, m)
    nxt = vals[..., n] if m > n else jnp.full(lead, -jnp.inf, bound.dtype)
    return idx[..., :n].astype(jnp.int32), nxt


def heatmaps_to_keypoints(maps: jax.Array, rois: jax.Array, max_size: tuple[int, int],
                          num_candidates: int = DEFAULT_NUM_CANDIDATES) -> tuple[jax.Array, jax.Array]:
    """Keypoint locations and scores from heatmap logits: torchvision ``heatmaps_to_keypoints``, static shapes.

    torchvision, per RoI: ``w = max(x2 - x1, 1)``, ``W = ceil(w)`` (same for h, H); the heatmap of each keypoint
    is resized bicubically (``align_corners=False``) to H x W; at its argmax ``(iy, ix)`` (first in raster
    order) the keypoint is ``x = (ix + 0.5) * (w / W) + x1``, ``y = (iy + 0.5) * (h / H) + y1``, with score
    the resized map's value there.

    Here (see the module docstring) only ``num_candidates`` source cells per (RoI, keypoint) are evaluated,
    each exactly as PyTorch computes it. **Exactness condition**: the result equals torchvision's (same
    argmax, bit-identical score) whenever the best evaluated value is larger than the upper bound
    (Bernstein bound + ``2**-16 * max|heatmap|``) of every cell that was not evaluated; ``exact`` reports
    it per keypoint. When a map has at most ``num_candidates`` non-empty cells (tiny boxes) it always holds.
    When it fails the returned keypoint is the best among the evaluated cells, i.e. a local maximum of the
    resized map and a valid approximation. (A cell holds at most ``ceil(max_size / S) + 2`` pixels per axis,
    which fixes the static window size.)

    Args:
      maps: [R, K, S_h, S_w] float heatmap logits.
      rois: [R, 4] float32 xyxy canvas pixels.
      max_size: static (max_h, max_w): bound of ``ceil(box height / width)``, e.g. the canvas size; larger
        boxes are treated as that size.
      num_candidates: static number of cells evaluated exactly.
    Returns:
      ``(keypoints, exact)``: [R, K, 3] float32 (x, y, score) in canvas pixels, and [R, K] bool.
    """
    maps = jnp.asarray(maps, jnp.float32)
    rois = jnp.asarray(rois, jnp.float32)
    r, k, sh, sw = maps.shape
    max_h, max_w = int(max_size[0]), int(max_size[1])
    ncell_y, ncell_x = sh + 1, sw + 1                       # cells -1 .. S-1
    x1, y1 = rois[:, 0], rois[:, 1]
    widths = jnp.maximum(rois[:, 2] - rois[:, 0], 1.0)
    heights = jnp.maximum(rois[:, 3] - rois[:, 1], 1.0)
    out_w = jnp.clip(jnp.ceil(widths), 1.0, float(max_w))
    out_h = jnp.clip(jnp.ceil(heights), 1.0, float(max_h))
    scale_x = _axis_scale(sw, out_w)
    scale_y = _axis_scale(sh, out_h)
    starts_y = _axis_starts(sh, out_h, scale_y, max_h)       # [R, S_h + 2]
    starts_x = _axis_starts(sw, out_w, scale_x, max_w)
    has_y = starts_y[:, 1:] > starts_y[:, :-1]                # [R, S_h + 1]: cell has output rows
    has_x = starts_x[:, 1:] > starts_x[:, :-1]

    # ---- 1. an upper bound per cell (+ rounding margin)
    bound = _cell_bounds(maps, starts_y, starts_x, scale_y, scale_x)
    margin = _BOUND_MARGIN * jnp.max(jnp.abs(maps), axis=(-2, -1))         # [R, K]
    bound = bound + margin[..., None, None]
    bound = jnp.where(has_y[:, None, :, None] & has_x[:, None, None, :], bound, -jnp.inf)
    flat_bound = bound.reshape(r, k, ncell_y * ncell_x)
    n_cand = max(1, min(int(num_candidates), ncell_y * ncell_x))
    cand, next_bound = _top_cells(flat_bound, n_cand)                      # [R, K, n], [R, K]
    cy = cand // ncell_x - 1                                               # cell indices -1 .. S-1
    cx = cand % ncell_x - 1

    # ---- 2. exact evaluation of the candidate cells, pixel by pixel
    ny = -(-max_h // sh) + 2
    nx = -(-max_w // sw) + 2
    take = lambda arr, c: jnp.take_along_axis(arr[:, None, :], c + 1, axis=-1)   # arr [R, C], c [R, K, n]
    y0, y_end = take(starts_y[:, :-1], cy), take(starts_y[:, 1:], cy)
    x0, x_end = take(starts_x[:, :-1], cx), take(starts_x[:, 1:], cx)
    oy = y0[..., None] + jnp.arange(ny, dtype=jnp.float32)                  # [R, K, n, ny]
    ox = x0[..., None] + jnp.arange(nx, dtype=jnp.float32)
    _, wy = bicubic_source_taps(oy, scale_y[:, None, None, None], sh)       # [R, K, n, ny, 4]
    _, wx = bicubic_source_taps(ox, scale_x[:, None, None, None], sw)
    tap = jnp.arange(4, dtype=jnp.int32) - 1
    ty = jnp.clip(cy[..., None] + tap, 0, sh - 1)                           # [R, K, n, 4]
    tx = jnp.clip(cx[..., None] + tap, 0, sw - 1)
    flat_maps = maps.reshape(r, k, sh * sw)
    patch_idx = (ty[..., :, None] * sw + tx[..., None, :]).reshape(r, k, -1)
    patch = jnp.take_along_axis(flat_maps, patch_idx, axis=-1).reshape(r, k, n_cand, 4, 4)   # [.., j, i]
    inner = _sum4(patch[..., :, None, :], wx[..., None, :, :])              # [R, K, n, 4 (j), nx]
    inner = jnp.moveaxis(inner, -2, -1)                                     # [R, K, n, nx, 4 (j)]
    vals = _sum4(inner[..., None, :, :], wy[..., :, None, :])               # [R, K, n, ny, nx]
    ok = (oy < y_end[..., None])[..., :, None] & (ox < x_end[..., None])[..., None, :]
    vals = jnp.where(ok, vals, -jnp.inf)

    # ---- 3. the best pixel, first in raster order on ties
    shape = ok.shape
    oy_all = jnp.broadcast_to(oy[..., :, None], shape).reshape(r, k, -1)
    ox_all = jnp.broadcast_to(ox[..., None, :], shape).reshape(r, k, -1)
    vals = vals.reshape(r, k, -1)
    flat_pos = oy_all * out_w[:, None, None] + ox_all                      # exact integers in float32
    best = jnp.max(vals, axis=-1)
    sel = jnp.argmin(jnp.where(vals == best[..., None], flat_pos, jnp.inf), axis=-1)[..., None]
    iy = jnp.take_along_axis(oy_all, sel, axis=-1)[..., 0]
    ix = jnp.take_along_axis(ox_all, sel, axis=-1)[..., 0]
    wcorr = true_divide(widths, out_w)[:, None]
    hcorr = true_divide(heights, out_h)[:, None]
    x = mul_no_fma(ix + 0.5, wcorr) + x1[:, None]
    y = mul_no_fma(iy + 0.5, hcorr) + y1[:, None]
    exact = best > next_bound
    return jnp.stack([x, y, best], axis=-1), exact
