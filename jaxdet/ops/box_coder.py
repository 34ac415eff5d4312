"""R-CNN box parametrisation (dx, dy, dw, dh): encode boxes relative to anchors/proposals and back.

Matches ``torchvision.models.detection._utils.BoxCoder`` (``encode_boxes``/``decode_single``):
widths are ``x2 - x1`` (no ``+1``), centres ``x1 + 0.5 * w``, decoded corners ``ctr -/+ 0.5 * w``,
and ``dw``/``dh`` are clamped from above at ``log(1000 / 16)`` before ``exp``. The same
parametrisation is used by detectron2's ``Box2BoxTransform``.

Usual weights: RPN and RetinaNet (1, 1, 1, 1); Fast R-CNN box head (10, 10, 5, 5).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from jaxdet.ops.boxes import mul_no_fma, true_divide

Array = jnp.ndarray

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check(x, name):
    if x.ndim < 1 or x.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got shape {tuple(x.shape)}")


def _check_weights(weights):
    if len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
    return tuple(float(w) for w in weights)


def encode_boxes(boxes: Array, anchors: Array, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Array:
    """Regression targets that take ``anchors`` to ``boxes``.

    Args:
      boxes: [..., 4] xyxy target boxes (e.g. matched ground truth), pixels.
      anchors: [..., 4] xyxy reference boxes (anchors or proposals), broadcastable with ``boxes``.
      weights: (wx, wy, ww, wh) static floats.
    Returns:
      [..., 4] deltas ``(wx*(gx-ax)/aw, wy*(gy-ay)/ah, ww*log(gw/aw), wh*log(gh/ah))`` in the dtype
      of ``boxes``. Anchors of zero width/height give inf/NaN exactly as torchvision (callers only
      encode valid, positive anchors and mask the loss).
    Matches ``torchvision.models.detection._utils.encode_boxes(reference_boxes=boxes, proposals=anchors)``.
    """
    boxes = jnp.asarray(boxes)
    anchors = jnp.asarray(anchors).astype(boxes.dtype)
    _check(boxes, "boxes")
    _check(anchors, "anchors")
    wx, wy, ww, wh = _check_weights(weights)

    ex_widths = anchors[..., 2] - anchors[..., 0]
    ex_heights = anchors[..., 3] - anchors[..., 1]
    ex_ctr_x = anchors[..., 0] + 0.5 * ex_widths
    ex_ctr_y = anchors[..., 1] + 0.5 * ex_heights

    gt_widths = boxes[..., 2] - boxes[..., 0]
    gt_heights = boxes[..., 3] - boxes[..., 1]
    gt_ctr_x = boxes[..., 0] + 0.5 * gt_widths
    gt_ctr_y = boxes[..., 1] + 0.5 * gt_heights

    dx = true_divide(wx * (gt_ctr_x - ex_ctr_x), ex_widths)
    dy = true_divide(wy * (gt_ctr_y - ex_ctr_y), ex_heights)
    dw = ww * jnp.log(true_divide(gt_widths, ex_widths))
    dh = wh * jnp.log(true_divide(gt_heights, ex_heights))
    return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode_boxes(
    deltas: Array,
    anchors: Array,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_SCALE_CLAMP,
) -> Array:
    """Apply regression deltas to reference boxes.

    Args:
      deltas: [..., 4] (dx, dy, dw, dh) as produced by a box regressor. For class-specific
        regression ([..., K*4]) reshape to [..., K, 4] and broadcast the anchors as [..., 1, 4].
      anchors: [..., 4] xyxy reference boxes (anchors or proposals), broadcastable with ``deltas``.
      weights: (wx, wy, ww, wh) static floats the deltas are divided by.
      clamp: upper bound for dw/dh before ``exp`` (default log(1000/16)).
    Returns:
      [..., 4] xyxy boxes in the dtype of ``deltas`` (anchors are cast to it first, as torchvision).
    Matches ``torchvision.models.detection._utils.BoxCoder.decode_single``.
    """
    deltas = jnp.asarray(deltas)
    anchors = jnp.asarray(anchors).astype(deltas.dtype)
    _check(deltas, "deltas")
    _check(anchors, "anchors")
    wx, wy, ww, wh = _check_weights(weights)

    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights

    dx = true_divide(deltas[..., 0], wx)
    dy = true_divide(deltas[..., 1], wy)
    dw = jnp.minimum(true_divide(deltas[..., 2], ww), clamp)
    dh = jnp.minimum(true_divide(deltas[..., 3], wh), clamp)

    pred_ctr_x = mul_no_fma(dx, widths) + ctr_x
    pred_ctr_y = mul_no_fma(dy, heights) + ctr_y
    pred_w = jnp.exp(dw) * widths
    pred_h = jnp.exp(dh) * heights

    half_w = 0.5 * pred_w
    half_h = 0.5 * pred_h
    return jnp.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1
    )
