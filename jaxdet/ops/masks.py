"""Mask R-CNN mask targets from box-cropped instance masks, static shapes.

torchvision (``torchvision/models/detection/roi_heads.py``, ``project_masks_on_boxes``) builds the
``M x M`` target of a positive RoI by RoIAlign of its ground-truth instance's *full-image* mask at the RoI
(``roi_align(mask, roi, (M, M), spatial_scale=1, sampling_ratio=-1 (adaptive), aligned=False)``). Full-image
masks do not have a static size worth carrying to the device, so the data contract (DESIGN.md section 2)
ships each mask cropped to its own ground-truth box and resized to ``S x S`` (``gt_masks`` [M, S, S]).
:func:`mask_targets` computes the same RoIAlign on the crop by mapping the RoI into the box's frame.

Convention of the crop (what the host must produce): crop pixel ``(i, j)`` holds the instance mask over the
image region ``x in gx1 + [j, j + 1] * gw / S``, ``y in gy1 + [i, i + 1] * gh / S`` of its box
``(gx1, gy1, gx2, gy2)`` (``gw = gx2 - gx1``), and the instance mask is 0 outside its box. The RoI is mapped
into the crop so that pixel centres land on pixel centres: in torchvision's ``aligned=False`` convention the
value of image pixel ``k`` sits at coordinate ``k`` (its centre ``k + 0.5`` minus 0.5), so image coordinate
``x`` becomes crop coordinate ``(x + 0.5 - gx1) * S / gw - 0.5`` (``(x - gx1) * S / gw`` up to half a crop
pixel; the two agree when ``S == gw``). When ``S == gw`` and the box has integer corners the crop is the
full-image mask's pixels, and the result equals torchvision's up to float rounding of the sample positions
(tested in ``tests/ops/test_masks.py``). Otherwise the crop is a resampling of the full mask and so are the
targets (there: a mean absolute difference of about 0.02, 99.5% of the pixels on the same side of 0.5, for
2x downsampled crops in the test); the crop's one-pixel border fades to 0 over one crop pixel instead of one
image pixel, and the adaptive sampling grid counts crop pixels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdet.ops.roi_align import roi_align

#: A box edge within this many image pixels of the image border counts as touching it (see mask_targets).
_BORDER_TOL = 0.5


def _pad_like_full_image(masks: jax.Array, boxes: jax.Array, image_size: jax.Array | None) -> jax.Array:
    """[M, S, S] float32 -> [M, S + 2, S + 2]: a one-pixel border that is 0 (the full-image mask outside the
    box), or, on a side where the box touches the image border, a copy of the edge (torchvision's bilinear
    sampling clamps coordinates in [-1, 0) to the first pixel and snaps those past ``size - 1`` to the last)."""
    padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))
    if image_size is None:
        return padded
    h, w = image_size[0].astype(jnp.float32), image_size[1].astype(jnp.float32)
    left = (boxes[:, 0] <= _BORDER_TOL)[:, None, None]
    right = (boxes[:, 2] >= w - _BORDER_TOL)[:, None, None]
    top = (boxes[:, 1] <= _BORDER_TOL)[:, None]
    bottom = (boxes[:, 3] >= h - _BORDER_TOL)[:, None]
    # columns first, then rows (so that a corner where both sides touch copies the corner pixel)
    padded = padded.at[:, :, 0:1].set(jnp.where(left, padded[:, :, 1:2], 0.0))
    padded = padded.at[:, :, -1:].set(jnp.where(right, padded[:, :, -2:-1], 0.0))
    padded = padded.at[:, 0, :].set(jnp.where(top, padded[:, 1, :], 0.0))
    padded = padded.at[:, -1, :].set(jnp.where(bottom, padded[:, -2, :], 0.0))
    return padded


def mask_targets(gt_masks: jax.Array, gt_boxes: jax.Array, rois: jax.Array, matched_idxs: jax.Array,
                 size: int = 28, image_size: jax.Array | None = None,
                 max_sampling_ratio: int | None = None) -> jax.Array:
    """Mask targets of RoIs of one image: RoIAlign of each RoI's matched instance mask.

    Args:
      gt_masks: [M, S, S] uint8 (0/1) or float, each instance's mask cropped to its box and resized to S x S
        (module docstring).
      gt_boxes: [M, 4] float32 xyxy canvas pixels, the boxes the masks were cropped to.
      rois: [R, 4] float32 xyxy canvas pixels.
      matched_idxs: [R] int, the ground-truth slot of each RoI (clipped to 0..M-1; padding RoIs get
        meaningless but finite targets, mask them out downstream).
      size: static output resolution (torchvision: the mask logits' 28).
      image_size: optional [2] int (height, width) of the image inside the canvas. When given, a box side
        within half a pixel of the image border is treated as the border, where torchvision's RoIAlign on the
        full-image mask repeats the edge pixel instead of fading to 0; None fades everywhere.
      max_sampling_ratio: static cap of the adaptive sampling grid (see :func:`jaxdet.ops.roi_align.roi_align`).
        Default ``max(2, ceil(S / size))`` (4 for S = 112): exact for RoIs up to ``size * cap`` crop pixels per
        side (up to the box's own size); a larger RoI (a positive can be up to twice its box per side) is averaged
        over ``cap`` evenly spaced samples per bin and axis instead of its own grid, which only moves mask edges
        by a fraction of a bin. Cap 8 would be exact for every positive at S = 112 but costs about 3x the time
        and memory (B = 2, 128 RoIs, 100 instances: 0.36 s vs 1.06 s, 0.4 vs 0.7 GB, on a loaded 2-core CPU).
    Returns:
      [R, size, size] float32 in [0, 1].

    Raises:
      ValueError: on inconsistent shapes.

    Matches ``torchvision.models.detection.roi_heads.project_masks_on_boxes`` (torchvision ``roi_align``,
    ``aligned=False``, adaptive sampling) on the full-image masks, under the crop convention above.
    """
    if gt_masks.ndim != 3 or gt_masks.shape[1] != gt_masks.shape[2]:
        raise ValueError(f"gt_masks must be [M, S, S], got {tuple(gt_masks.shape)}")
    m, s = gt_masks.shape[0], gt_masks.shape[1]
    if gt_boxes.shape != (m, 4):
        raise ValueError(f"gt_boxes must be [{m}, 4], got {tuple(gt_boxes.shape)}")
    if rois.ndim != 2 or rois.shape[1] != 4 or matched_idxs.shape != rois.shape[:1]:
        raise ValueError(f"rois must be [R, 4] and matched_idxs [R], got {tuple(rois.shape)} and "
                         f"{tuple(matched_idxs.shape)}")
    if max_sampling_ratio is None:
        max_sampling_ratio = max(2, math.ceil(s / size))
    gt_boxes = gt_boxes.astype(jnp.float32)
    rois = rois.astype(jnp.float32)
    idx = jnp.clip(matched_idxs.astype(jnp.int32), 0, m - 1)
    padded = _pad_like_full_image(gt_masks.astype(jnp.float32), gt_boxes, image_size)
    g = gt_boxes[idx]
    scale_x = s / jnp.maximum(g[:, 2] - g[:, 0], 1e-6)
    scale_y = s / jnp.maximum(g[:, 3] - g[:, 1], 1e-6)
    # RoI in the padded crop's pixel frame: pixel centres onto pixel centres (+1: the border added above)
    ox = 0.5 - g[:, 0]
    oy = 0.5 - g[:, 1]
    mapped = jnp.stack([(rois[:, 0] + ox) * scale_x + 0.5, (rois[:, 1] + oy) * scale_y + 0.5,
                        (rois[:, 2] + ox) * scale_x + 0.5, (rois[:, 3] + oy) * scale_y + 0.5], axis=1)
    out = roi_align(padded[..., None], mapped, idx, (size, size), 1.0, 0, False,
                    max_sampling_ratio=max_sampling_ratio)
    return jax.lax.stop_gradient(out[..., 0])
