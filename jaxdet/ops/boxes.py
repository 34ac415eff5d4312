"""Elementary box operations on axis-aligned boxes.

Conventions (all functions in this module):
  * boxes are ``xyxy`` = (x1, y1, x2, y2) in pixels of whatever image they live in (usually the
    padded input canvas), float32 or bfloat16; ``x2 - x1`` is the width (no ``+1``, as torchvision,
    detectron2 and mmdet>=2);
  * functions are pure ``jax.numpy`` with static shapes, work on any leading batch dims where noted
    and are safe under ``jax.jit``/``jax.vmap``; nothing here returns NaN for degenerate boxes.

Reference: ``torchvision/ops/boxes.py`` (box_area, box_iou, clip_boxes_to_image,
remove_small_boxes) and ``detectron2/structures/boxes.py`` (pairwise_ioa).
"""
from __future__ import annotations

from typing import Sequence, Union

import jax.numpy as jnp

Array = jnp.ndarray


def true_divide(x: Array, divisor) -> Array:
    """``x / divisor`` as an elementwise IEEE division, like torch/numpy.

    XLA's algebraic simplifier rewrites ``x / broadcast(d)`` (a constant or a smaller array) into
    ``x * broadcast(1 / d)``, which differs from the division, and from torchvision, in the last bit
    whenever ``1 / d`` is inexact (d = 7, 10, 224, ...). Selecting the divisor per element
    (``where(isnan(x), 1, d)``; a NaN ``x`` gives NaN either way) keeps a true divide.

    Args:
      x: float array. divisor: Python number or array broadcastable to ``x``.
    Returns:
      ``x / divisor`` with the broadcast shape, in ``x.dtype``.
    """
    x = jnp.asarray(x)
    d = jnp.where(jnp.isnan(x), jnp.ones((), x.dtype), jnp.asarray(divisor, x.dtype))
    return x / d


def mul_no_fma(a: Array, b) -> Array:
    """``a * b`` rounded to the dtype before any following addition.

    XLA on CPU (and GPU) contracts ``a * b + c`` into a fused multiply-add, which rounds once instead
    of twice and so differs from torchvision's CPU kernels in the last bit; for box coordinates
    that can flip an IoU threshold or a bilinear tap. The select (NaN stays NaN) hides the product
    from the contraction at the cost of one elementwise op.
    """
    p = jnp.asarray(a) * b
    return jnp.where(jnp.isnan(p), jnp.asarray(jnp.nan, p.dtype), p)


def _check_last_dim(boxes, name: str = "boxes") -> None:
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")


def box_area(boxes: Array) -> Array:
    """Area of xyxy boxes.

    Args:
      boxes: [..., 4] float, xyxy.
    Returns:
      [...] same dtype: ``(x2 - x1) * (y2 - y1)`` (negative for reversed boxes, as torchvision).
    Raises:
      ValueError: if the last dim is not 4.
    Matches ``torchvision.ops.box_area``.
    """
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    return mul_no_fma(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])


def box_intersection(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise intersection areas.

    Args:
      boxes1: [N, 4] xyxy. boxes2: [M, 4] xyxy (leading batch dims allowed if equal on both).
    Returns:
      [N, M] intersection area (>= 0), dtype of the inputs.
    """
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    return mul_no_fma(wh[..., 0], wh[..., 1])


def _safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0; gradient-safe (no NaN/inf in either branch)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, jnp.ones_like(den)), jnp.zeros_like(num))


def box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise intersection-over-union.

    Args:
      boxes1: [N, 4] xyxy; boxes2: [M, 4] xyxy (same leading batch dims allowed, e.g. [B, N, 4]
        with [B, M, 4]).
    Returns:
      [N, M] IoU in [0, 1], dtype of the inputs. Computed exactly as torchvision
      (``inter / (area1 + area2 - inter)``, no ``+1``), except that pairs whose union is <= 0
      (both boxes empty) give 0 instead of NaN.
    Raises:
      ValueError: if the last dim is not 4.
    Matches ``torchvision.ops.box_iou``.
    """
    boxes1 = jnp.asarray(boxes1)
    boxes2 = jnp.asarray(boxes2)
    _check_last_dim(boxes1, "boxes1")
    _check_last_dim(boxes2, "boxes2")
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter = box_intersection(boxes1, boxes2)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return _safe_divide(inter, union)


def box_ioa(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise intersection over the area of ``boxes2`` (IoA).

    Args:
      boxes1: [N, 4] xyxy; boxes2: [M, 4] xyxy.
    Returns:
      [N, M] ``inter(i, j) / area(boxes2[j])``; 0 where that area is <= 0.
    Matches ``detectron2.structures.pairwise_ioa`` (used e.g. to ignore proposals inside crowd regions).
    """
    boxes1 = jnp.asarray(boxes1)
    boxes2 = jnp.asarray(boxes2)
    _check_last_dim(boxes1, "boxes1")
    _check_last_dim(boxes2, "boxes2")
    inter = box_intersection(boxes1, boxes2)
    area2 = box_area(boxes2)
    return _safe_divide(inter, jnp.broadcast_to(area2[..., None, :], inter.shape))


def clip_boxes(boxes: Array, image_size: Union[Sequence, Array]) -> Array:
    """Clip boxes to an image.

    Args:
      boxes: [..., 4] xyxy in pixels.
      image_size: (height, width) of the image; Python numbers or a [2] array (may be traced, int or
        float), e.g. the batch's ``image_size[b]`` (under ``vmap``).
    Returns:
      [..., 4] boxes with x in [0, width] and y in [0, height], same dtype as ``boxes``.
    Matches ``torchvision.ops.clip_boxes_to_image`` (``min(max(v, 0), size)``).
    """
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    size = jnp.asarray(image_size)
    if size.shape != (2,):
        raise ValueError(f"image_size must be (height, width), got shape {tuple(size.shape)}")
    size = size.astype(boxes.dtype)
    height, width = size[0], size[1]
    zero = jnp.zeros((), boxes.dtype)
    x = jnp.minimum(jnp.maximum(boxes[..., 0::2], zero), width)
    y = jnp.minimum(jnp.maximum(boxes[..., 1::2], zero), height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def small_boxes_mask(boxes: Array, min_size: float) -> Array:
    """Which boxes are large enough to keep.

    Args:
      boxes: [..., 4] xyxy.
      min_size: minimum side length in the boxes' units.
    Returns:
      bool [...]: True where ``w >= min_size`` and ``h >= min_size``.
    Matches the selection of ``torchvision.ops.remove_small_boxes`` (which returns the indices of the
    True entries).
    """
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def box_xyxy_to_xywh(boxes: Array) -> Array:
    """(x1, y1, x2, y2) -> (x1, y1, w, h), [..., 4] -> [..., 4] (COCO's box format)."""
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    return jnp.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def box_xywh_to_xyxy(boxes: Array) -> Array:
    """(x1, y1, w, h) -> (x1, y1, x2, y2), [..., 4] -> [..., 4]."""
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    return jnp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def box_xyxy_to_cxcywh(boxes: Array) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), [..., 4] -> [..., 4]."""
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    wh = boxes[..., 2:] - boxes[..., :2]
    return jnp.concatenate([boxes[..., :2] + 0.5 * wh, wh], axis=-1)


def box_cxcywh_to_xyxy(boxes: Array) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), [..., 4] -> [..., 4]."""
    boxes = jnp.asarray(boxes)
    _check_last_dim(boxes)
    half = 0.5 * boxes[..., 2:]
    return jnp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)
