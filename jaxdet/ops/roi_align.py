"""RoIAlign (Mask R-CNN) on NHWC features, single-level and FPN multi-level, with static shapes.

Semantics follow torchvision's CPU/CUDA kernel ``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``
exactly (``torchvision.ops.roi_align``):

* a RoI ``(x1, y1, x2, y2)`` in input-image pixels is mapped to feature pixels as
  ``x * spatial_scale - offset`` with ``offset = 0.5`` if ``aligned`` (detectron2 ROIAlignV2)
  else 0; with ``aligned=False`` the RoI width/height are clamped to >= 1 feature pixel;
* each of the ``ph x pw`` bins averages ``grid_h x grid_w`` bilinear samples at
  ``y = y1' + p * bin_h + (iy + 0.5) * bin_h / grid_h`` (same for x);
* bilinear sampling: a sample with ``y < -1`` or ``y > H`` (or the same for x) contributes 0;
  otherwise ``y`` is clamped to ``>= 0`` and, when ``floor(y) >= H - 1``, snapped to row ``H - 1``.
  Pixel centres sit at integer coordinates (the feature value at row ``i`` is at ``y = i``).

``sampling_ratio > 0`` uses exactly that many samples per bin and axis (torchvision's box head: 2)
and is exact. ``sampling_ratio <= 0`` is torchvision/detectron2's adaptive grid
``grid = ceil(roi_size / output_size)``, which is data dependent: it is implemented with a static
cap ``max_sampling_ratio`` (samples beyond a RoI's own grid are masked out). It is exact whenever a
RoI's grid is <= the cap; a RoI whose grid exceeds the cap is averaged over ``cap`` evenly spaced
samples per axis instead (an approximation), so raise the cap for models that pool very large or
elongated RoIs at a fine level. The cost grows as ``(2 * grid)^2`` gathers per bin.

Implementation: all feature maps (all images, and all FPN levels for :func:`multilevel_roi_align`)
are viewed as one table ``[rows, C]``; every bilinear tap of every sample becomes a flat row
index computed from its own RoI's level, stride and image (RoIAlign is separable, so the taps of a
bin are the product of ``2 * grid_h`` row taps and ``2 * grid_w`` column taps), and the output is
accumulated by a ``fori_loop`` over the row taps whose body fuses the column-tap gathers with the
weighted sum (no ``[R, ph, pw, samples, C]`` intermediate, no work on levels a RoI is not assigned
to, one gather serves all levels and images). The gradient w.r.t. the features is a scatter-add
(custom VJP); the gradient w.r.t. the boxes is also provided (through the bilinear weights;
torchvision returns none), and XLA drops it when the boxes are not differentiated.

Float details for bit-level agreement with torchvision's CPU kernel: sample coordinates are formed
with the kernel's operation order, without FMA contraction (:func:`jaxdet.ops.boxes.mul_no_fma`)
and with true divisions (:func:`jaxdet.ops.boxes.true_divide`); only the summation order of the
``(2 * grid)^2`` taps differs (~1e-7 relative).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.ops.boxes import mul_no_fma, true_divide

Array = jnp.ndarray

DEFAULT_MAX_SAMPLING_RATIO = 4


# ----------------------------------------------------------------------------------------------
# fused weighted gather with a scatter-add VJP


@jax.custom_vjp
def _weighted_gather(table: Array, idx: Array, w: Array) -> Array:
    """``out[...] = sum_{a,b} w[a, b, ...] * table[idx[a, b, ...]]``, accumulated in float32.

    table: [T, C]; idx: [Sa, Sb, *batch] int32, all in [0, T); w: [Sa, Sb, *batch] float32.
    Returns [*batch, C] float32.

    A ``fori_loop`` over ``a`` with the ``Sb`` gathers of one step unrolled: XLA fuses the ``Sb``
    gathers and the accumulation into one pass per step, and the loop keeps it from materialising
    every gather or re-fusing (and so recomputing) the sum into its consumers.
    """
    acc = jnp.zeros(idx.shape[2:] + table.shape[-1:], jnp.float32)

    def body(a, acc):
        idx_a = lax.dynamic_index_in_dim(idx, a, 0, keepdims=False)
        w_a = lax.dynamic_index_in_dim(w, a, 0, keepdims=False)
        for b in range(idx.shape[1]):
            v = table.at[idx_a[b]].get(mode="promise_in_bounds").astype(jnp.float32)
            acc = acc + w_a[b][..., None] * v
        return acc

    return lax.fori_loop(0, idx.shape[0], body, acc)


def _weighted_gather_fwd(table, idx, w):
    return _weighted_gather(table, idx, w), (table, idx, w)


def _weighted_gather_bwd(res, g):
    table, idx, w = res
    g = g.astype(jnp.float32)

    def table_body(a, d_table):
        idx_a = lax.dynamic_index_in_dim(idx, a, 0, keepdims=False)
        w_a = lax.dynamic_index_in_dim(w, a, 0, keepdims=False)
        for b in range(idx.shape[1]):
            d_table = d_table.at[idx_a[b]].add(w_a[b][..., None] * g, mode="promise_in_bounds")
        return d_table

    d_table = lax.fori_loop(0, idx.shape[0], table_body, jnp.zeros(table.shape, jnp.float32))

    def w_body(a, d_w):
        idx_a = lax.dynamic_index_in_dim(idx, a, 0, keepdims=False)
        rows = []
        for b in range(idx.shape[1]):
            v = table.at[idx_a[b]].get(mode="promise_in_bounds").astype(jnp.float32)
            rows.append(jnp.sum(v * g, axis=-1))
        return lax.dynamic_update_index_in_dim(d_w, jnp.stack(rows), a, 0)

    # Gradient w.r.t. the bilinear weights (hence the boxes); dead code, removed by XLA, when the
    # boxes are not differentiated.
    d_w = lax.fori_loop(0, idx.shape[0], w_body, jnp.zeros(w.shape, jnp.float32))
    return d_table.astype(table.dtype), None, d_w.astype(w.dtype)


_weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd)


# ----------------------------------------------------------------------------------------------
# sample positions and bilinear weights, one axis at a time (RoIAlign is separable)


def _axis_samples(start, bin_size, grid, num_samples, pooled: int, max_grid: int, length):
    """Bilinear taps along one axis.

    Args:
      start, bin_size: [K] float32, RoI start and bin size in feature pixels.
      grid: [K] float32 divisor (samples per bin that spread over the bin).
      num_samples: [K] int32 or None; samples with index >= num_samples are masked (adaptive mode).
      pooled: static output size along this axis; max_grid: static number of sample slots.
      length: [K] int32 feature size along this axis (H or W of the RoI's level).
    Returns:
      idx [K, pooled, 2*max_grid] int32 in [0, length-1] and weight [K, pooled, 2*max_grid] float32
      (low and high tap of every sample; 0 for samples outside [-1, length] or masked).
    """
    f32 = jnp.float32
    p = jnp.arange(pooled, dtype=f32)[None, :, None]
    i = jnp.arange(max_grid, dtype=f32)[None, None, :]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    grid = grid[:, None, None]
    # torchvision's exact float expression, without FMA contraction
    coord = (start + mul_no_fma(p, bin_size)) + true_divide((i + 0.5) * bin_size, grid)  # [K, pooled, G]
    size = length[:, None, None]
    size_f = size.astype(f32)
    valid = (coord >= -1.0) & (coord <= size_f)
    if num_samples is not None:
        valid = valid & (jnp.arange(max_grid)[None, None, :] < num_samples[:, None, None])
    c = jnp.where(valid, jnp.maximum(coord, 0.0), 0.0)  # also removes NaN/inf of invalid samples
    low = c.astype(jnp.int32)  # c >= 0: truncation == floor
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    c = jnp.where(at_end, low.astype(f32), c)
    frac = c - low.astype(f32)
    w_low = jnp.where(valid, 1.0 - frac, 0.0)
    w_high = jnp.where(valid, frac, 0.0)
    low = jnp.clip(low, 0, size - 1)
    high = jnp.clip(high, 0, size - 1)
    k = coord.shape[0]
    idx = jnp.stack([low, high], axis=-1).reshape(k, pooled, 2 * max_grid)
    wgt = jnp.stack([w_low, w_high], axis=-1).reshape(k, pooled, 2 * max_grid)
    return idx, wgt


def _pair(x, name) -> Tuple[int, int]:
    if isinstance(x, int):
        x = (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2 or min(x) <= 0:
        raise ValueError(f"{name} must be a positive int or (height, width), got {x!r}")
    return x


def _roi_align_table(
    table: Array,
    rois: Array,
    base: Array,
    height: Array,
    width: Array,
    scale: Array,
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    max_sampling_ratio: int,
) -> Array:
    """RoIAlign of K RoIs reading a flat feature table.

    table: [T, C]; rois: [K, 4] float32 xyxy input pixels; base: [K] int32 row of pixel (0, 0) of the
    RoI's feature map in ``table``; height, width: [K] int32 size of that map; scale: [K] float32
    spatial scale. Returns [K, ph, pw, C] in ``table.dtype``.
    """
    ph, pw = output_size
    f32 = jnp.float32
    offset = 0.5 if aligned else 0.0
    x1 = mul_no_fma(rois[:, 0], scale) - offset
    y1 = mul_no_fma(rois[:, 1], scale) - offset
    x2 = mul_no_fma(rois[:, 2], scale) - offset
    y2 = mul_no_fma(rois[:, 3], scale) - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    bin_h = true_divide(roi_h, ph)
    bin_w = true_divide(roi_w, pw)

    if sampling_ratio > 0:
        gh_n = gw_n = None
        grid_h = jnp.full(rois.shape[:1], float(sampling_ratio), f32)
        grid_w = grid_h
        max_h = max_w = int(sampling_ratio)
        count = jnp.asarray(float(max(sampling_ratio * sampling_ratio, 1)), f32)
    else:
        cap = int(max_sampling_ratio)
        if cap <= 0:
            raise ValueError(f"max_sampling_ratio must be a positive int, got {max_sampling_ratio!r}")
        # torchvision: int grid = ceil(roi_size / pooled); <= 0 for empty aligned RoIs -> no sample.
        gh_n = jnp.clip(jnp.ceil(bin_h), 0, cap).astype(jnp.int32)
        gw_n = jnp.clip(jnp.ceil(bin_w), 0, cap).astype(jnp.int32)
        grid_h = jnp.maximum(gh_n, 1).astype(f32)
        grid_w = jnp.maximum(gw_n, 1).astype(f32)
        max_h = max_w = cap
        count = jnp.maximum(gh_n * gw_n, 1).astype(f32)

    iy, wy = _axis_samples(y1, bin_h, grid_h, gh_n, ph, max_h, height)  # [K, ph, 2Gh]
    ix, wx = _axis_samples(x1, bin_w, grid_w, gw_n, pw, max_w, width)  # [K, pw, 2Gw]

    # Flat table row of every (row tap, column tap) pair, tap-major: [2Gh, 2Gw, K, ph, pw].
    rows = base[:, None, None] + iy * width[:, None, None]  # [K, ph, 2Gh]
    rows = jnp.moveaxis(rows, -1, 0)[:, None, :, :, None]  # [2Gh, 1, K, ph, 1]
    cols = jnp.moveaxis(ix, -1, 0)[None, :, :, None, :]  # [1, 2Gw, K, 1, pw]
    idx = rows + cols
    w = jnp.moveaxis(wy, -1, 0)[:, None, :, :, None] * jnp.moveaxis(wx, -1, 0)[None, :, :, None, :]
    out = _weighted_gather(table, idx, w)  # [K, ph, pw, C] float32
    k = rois.shape[0]
    count = jnp.broadcast_to(count, (k,))
    out = true_divide(out, count[:, None, None, None])
    return out.astype(table.dtype)


def _check_rois(rois, name="rois"):
    if rois.ndim < 1 or rois.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4] (x1, y1, x2, y2), got {tuple(rois.shape)}")


# ----------------------------------------------------------------------------------------------
# public API


def roi_align(
    features: Array,
    rois: Array,
    batch_idx: Array,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    max_sampling_ratio: int = DEFAULT_MAX_SAMPLING_RATIO,
) -> Array:
    """RoIAlign on one feature map.

    Args:
      features: [B, H, W, C] float32/bfloat16, NHWC.
      rois: [R, 4] float xyxy in input-image pixels (computed in float32).
      batch_idx: [R] int, image of each RoI (clipped to [0, B-1]).
      output_size: static int or (ph, pw).
      spatial_scale: static float, feature pixels per input pixel (1 / stride).
      sampling_ratio: static int; > 0 samples per bin and axis, <= 0 adaptive (see module doc).
      aligned: static bool; True shifts by -0.5 pixel (detectron2 ROIAlignV2).
      max_sampling_ratio: static cap of the adaptive grid (only used when sampling_ratio <= 0).
    Returns:
      [R, ph, pw, C] in ``features.dtype``.
    Raises:
      ValueError: on bad shapes or parameters.
    Matches ``torchvision.ops.roi_align(features NCHW, [batch_idx, rois], ...)`` transposed to NHWC.
    """
    features = jnp.asarray(features)
    rois = jnp.asarray(rois)
    batch_idx = jnp.asarray(batch_idx)
    if features.ndim != 4:
        raise ValueError(f"features must be NHWC [B, H, W, C], got shape {tuple(features.shape)}")
    _check_rois(rois)
    if rois.ndim != 2:
        raise ValueError(f"rois must have shape [R, 4], got {tuple(rois.shape)}")
    r = rois.shape[0]
    if batch_idx.shape != (r,):
        raise ValueError(f"batch_idx must have shape ({r},), got {tuple(batch_idx.shape)}")
    output_size = _pair(output_size, "output_size")
    b, h, w, c = features.shape
    if h == 0 or w == 0 or b == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")
    table = features.reshape(b * h * w, c)
    bidx = jnp.clip(batch_idx.astype(jnp.int32), 0, b - 1)
    base = bidx * (h * w)
    height = jnp.full((r,), h, jnp.int32)
    width = jnp.full((r,), w, jnp.int32)
    scale = jnp.full((r,), spatial_scale, jnp.float32)
    return _roi_align_table(
        table, rois.astype(jnp.float32), base, height, width, scale,
        output_size, int(sampling_ratio), bool(aligned), max_sampling_ratio,
    )


def assign_levels(
    rois: Array,
    min_level: int = 2,
    max_level: int = 5,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Array:
    """FPN level of each RoI (FPN paper eq. 1).

    Args:
      rois: [..., 4] xyxy in input-image pixels (computed in float32).
      min_level, max_level: static levels of the finest / coarsest pyramid map (P2..P5: 2, 5).
      canonical_scale, canonical_level: a RoI of size canonical_scale^2 maps to canonical_level.
      eps: added before the floor, as torchvision.
    Returns:
      int32 [...]: ``clip(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps),
      min_level, max_level)`` (absolute level numbers). Empty RoIs go to ``min_level``; RoIs with
      negative or NaN area go to ``min_level`` too (torchvision's result is undefined there).
    Matches ``torchvision.ops.poolers.LevelMapper``.
    """
    rois = jnp.asarray(rois).astype(jnp.float32)
    _check_rois(rois)
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    s = jnp.sqrt(area)
    lvl = jnp.floor(canonical_level + jnp.log2(true_divide(s, canonical_scale)) + jnp.float32(eps))
    lvl = jnp.where(jnp.isnan(lvl), float(min_level), lvl)
    lvl = jnp.clip(lvl, float(min_level), float(max_level))
    return lvl.astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence[Array],
    rois: Array,
    strides: Sequence[int],
    output_size: Union[int, Sequence[int]],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    max_sampling_ratio: int = DEFAULT_MAX_SAMPLING_RATIO,
) -> Array:
    """RoIAlign over an FPN pyramid, each RoI pooled only from its own level.

    Args:
      features: list of L arrays [B, H_l, W_l, C] (NHWC, e.g. P2..P5), same B and C.
      rois: [B, R, 4] float xyxy in input-image pixels.
      strides: L static ints, e.g. (4, 8, 16, 32); with L > 1 they must be consecutive powers of 2
        (level = log2(stride)), as torchvision infers them.
      output_size: static int or (ph, pw) (box head 7, mask head 14).
      sampling_ratio, aligned, max_sampling_ratio: as in :func:`roi_align`.
      canonical_scale, canonical_level: level mapping, see :func:`assign_levels`.
    Returns:
      [B, R, ph, pw, C] in the features' dtype.
    Raises:
      ValueError: on inconsistent shapes or strides.
    Matches ``torchvision.ops.MultiScaleRoIAlign`` (``image_shapes`` such that its inferred scales
    are 1/stride) with the boxes of image b = ``rois[b]``.
    """
    features = [jnp.asarray(f) for f in features]
    if len(features) == 0:
        raise ValueError("features must be a non-empty list of [B, H, W, C] maps")
    if len(strides) != len(features):
        raise ValueError(f"got {len(features)} feature maps but {len(strides)} strides")
    for l, f in enumerate(features):
        if f.ndim != 4:
            raise ValueError(f"features[{l}] must be NHWC [B, H, W, C], got shape {tuple(f.shape)}")
        if f.shape[0] != features[0].shape[0] or f.shape[3] != features[0].shape[3]:
            raise ValueError(
                f"features[{l}] has shape {tuple(f.shape)}, inconsistent batch/channels with "
                f"features[0] {tuple(features[0].shape)}"
            )
        if f.shape[1] == 0 or f.shape[2] == 0:
            raise ValueError(f"features[{l}] is empty: shape {tuple(f.shape)}")
    rois = jnp.asarray(rois)
    _check_rois(rois)
    b, _, _, c = features[0].shape
    if rois.ndim != 3 or rois.shape[0] != b:
        raise ValueError(f"rois must have shape [B={b}, R, 4], got {tuple(rois.shape)}")
    output_size = _pair(output_size, "output_size")
    strides = [int(s) for s in strides]
    num_levels = len(features)
    if num_levels > 1:
        min_level = math.log2(strides[0])
        if min_level != int(min_level) or any(s != strides[0] * 2**i for i, s in enumerate(strides)):
            raise ValueError(f"strides must be consecutive powers of 2 (e.g. 4, 8, 16, 32), got {strides}")
        min_level = int(min_level)
    dtype = features[0].dtype
    r = rois.shape[1]
    rois_flat = rois.reshape(b * r, 4).astype(jnp.float32)
    bidx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), r)

    table = jnp.concatenate([f.astype(dtype).reshape(-1, c) for f in features], axis=0)
    sizes = [(f.shape[1], f.shape[2]) for f in features]
    offsets, total = [], 0
    for (h, w) in sizes:
        offsets.append(total)
        total += b * h * w
    if num_levels > 1:
        lvl = assign_levels(
            rois_flat, min_level, min_level + num_levels - 1, canonical_scale, canonical_level
        ) - min_level
    else:
        lvl = jnp.zeros((b * r,), jnp.int32)
    pick = lambda vals, dt: jnp.asarray(vals, dt)[lvl]
    height = pick([h for h, _ in sizes], jnp.int32)
    width = pick([w for _, w in sizes], jnp.int32)
    level_offset = pick(offsets, jnp.int32)
    scale = pick([1.0 / s for s in strides], jnp.float32)
    base = level_offset + bidx * height * width
    out = _roi_align_table(
        table, rois_flat, base, height, width, scale,
        output_size, int(sampling_ratio), bool(aligned), max_sampling_ratio,
    )
    return out.reshape(b, r, *output_size, c)
