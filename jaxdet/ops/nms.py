"""Greedy non-maximum suppression with a static output size.

Matches ``torchvision.ops.nms`` (CPU kernel ``torchvision/csrc/ops/cpu/nms_kernel.cpp``):
candidates are visited in descending score order (a *stable* sort, so equal scores keep their input
order, as torchvision's CPU kernel), a visited box that is not suppressed is kept, and it suppresses
every later box whose IoU with it is ``> iou_threshold``. The IoU is computed with the kernel's
formula ``inter / (area_i + area_j - inter)`` (no ``+1``, products not FMA-contracted) and
compared with the threshold as the kernel does (float IoU against a C++ double), so decisions agree
bit for bit; pairs with zero union never suppress. bfloat16/float16 boxes are compared in float32.

Implementation: a ``lax.while_loop`` that picks the first not-yet-suppressed candidate in score order,
computes its IoU row against all N boxes on the fly (O(N) memory, no N x N matrix) and stops after
``max_output_size`` keeps or when no candidate is left, so the cost is O(max_output_size * N).
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.ops.boxes import mul_no_fma

Array = jnp.ndarray


def _check(boxes, scores, valid, idxs=None):
    boxes = jnp.asarray(boxes)
    scores = jnp.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {tuple(scores.shape)}")
    if valid is None:
        valid = jnp.ones((n,), bool)
    else:
        valid = jnp.asarray(valid).astype(bool)
        if valid.shape != (n,):
            raise ValueError(f"valid must have shape ({n},), got {tuple(valid.shape)}")
    if idxs is not None:
        idxs = jnp.asarray(idxs)
        if idxs.shape != (n,):
            raise ValueError(f"idxs must have shape ({n},), got {tuple(idxs.shape)}")
    return boxes, scores, valid, idxs


def _threshold_for_strict_greater(threshold, dtype):
    """A ``dtype`` scalar t' with ``x > t'`` iff ``x > threshold`` for every ``dtype`` value x.

    torchvision's kernel compares the float IoU with the C++ ``double`` threshold; rounding the
    threshold to float32 to-nearest could round it up (0.3 -> 0.30000001) and keep a box that
    torchvision suppresses. Rounding *down* gives the exact double comparison.
    """
    if isinstance(threshold, (int, float, np.floating, np.integer)):
        t = float(threshold)
        np_dtype = np.dtype(dtype)
        t_cast = np_dtype.type(t)
        if float(t_cast) > t:
            t_cast = np.nextafter(t_cast, np_dtype.type(-np.inf))
        return jnp.asarray(t_cast, dtype)
    return jnp.asarray(threshold, dtype)  # traced threshold: plain cast


def _greedy_nms(boxes, scores, valid, idxs, iou_threshold, max_output_size):
    n = boxes.shape[0]
    k = int(max_output_size)
    if k < 0:
        raise ValueError(f"max_output_size must be >= 0, got {max_output_size!r}")
    if n == 0 or k == 0:
        return jnp.zeros((k,), jnp.int32), jnp.zeros((k,), bool)

    if not jnp.issubdtype(boxes.dtype, jnp.floating) or jnp.finfo(boxes.dtype).bits < 32:
        boxes = boxes.astype(jnp.float32)  # IoU of bfloat16/float16/int boxes in float32
    neg_inf = jnp.asarray(-jnp.inf, scores.dtype)
    order = jnp.argsort(jnp.where(valid, scores, neg_inf), descending=True, stable=True).astype(jnp.int32)
    b = boxes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = mul_no_fma(x2 - x1, y2 - y1)
    cats = None if idxs is None else idxs[order]
    thr = _threshold_for_strict_greater(iou_threshold, b.dtype)

    def cond(state):
        count, done, _ = state
        return (count < k) & jnp.logical_not(jnp.all(done))

    def body(state):
        count, done, keep = state
        i = jnp.argmin(done)  # first candidate (in score order) neither kept nor suppressed
        w = jnp.maximum(jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1), 0)
        h = jnp.maximum(jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1), 0)
        inter = mul_no_fma(w, h)
        union = areas[i] + areas - inter
        iou = inter / jnp.where(union > 0, union, jnp.ones_like(union))
        suppress = (union > 0) & (iou > thr)
        if cats is not None:
            suppress = suppress & (cats == cats[i])
        done = done | suppress
        done = done.at[i].set(True)
        keep = keep.at[count].set(order[i])
        return count + 1, done, keep

    init = (jnp.zeros((), jnp.int32), jnp.logical_not(valid[order]), jnp.zeros((k,), jnp.int32))
    count, _, keep = lax.while_loop(cond, body, init)
    keep_valid = jnp.arange(k) < count
    return jnp.where(keep_valid, keep, 0), keep_valid


def nms(
    boxes: Array,
    scores: Array,
    iou_threshold: float,
    max_output_size: int,
    valid: Optional[Array] = None,
) -> Tuple[Array, Array]:
    """Greedy NMS of one image's boxes, padded to a static number of outputs.

    Args:
      boxes: [N, 4] float xyxy.
      scores: [N] float.
      iou_threshold: boxes with IoU > this with a kept, higher-scoring box are suppressed.
      max_output_size: static int, number of output slots.
      valid: optional [N] bool; invalid boxes are neither kept nor suppress anything.
    Returns:
      keep_idx: [max_output_size] int32 indices into ``boxes``, in descending score order (ties in
        input order); padding slots hold 0.
      keep_valid: [max_output_size] bool, True for the first ``min(#kept, max_output_size)`` slots.
    Raises:
      ValueError: on bad shapes or a negative ``max_output_size``.
    Equals ``torchvision.ops.nms(boxes[valid], scores[valid], t)[:max_output_size]`` mapped back to
    the original indices.
    """
    boxes, scores, valid, _ = _check(boxes, scores, valid)
    return _greedy_nms(boxes, scores, valid, None, iou_threshold, max_output_size)


def batched_nms(
    boxes: Array,
    scores: Array,
    idxs: Array,
    iou_threshold: float,
    max_output_size: int,
    valid: Optional[Array] = None,
    coordinate_trick: bool = False,
) -> Tuple[Array, Array]:
    """Per-category greedy NMS (boxes of different ``idxs`` never suppress each other).

    Args:
      boxes: [N, 4] float xyxy.
      scores: [N] float.
      idxs: [N] int category (or FPN level) of each box.
      iou_threshold, max_output_size, valid: as in :func:`nms`.
      coordinate_trick: False (default): suppression is restricted to equal ``idxs`` with an exact
        mask, which equals torchvision's ``_batched_nms_vanilla`` (what ``batched_nms`` runs on CPU
        for N > 1000 boxes). True: shift every box by ``idx * (max_coordinate + 1)`` (max over the
        valid boxes) and run plain NMS, like ``_batched_nms_coordinate_trick`` (torchvision on CPU
        for N <= 1000, and on GPU up to 25000); the shift can change IoUs in the last float bits.
    Returns:
      (keep_idx [max_output_size] int32, keep_valid [max_output_size] bool), kept boxes of all
      categories merged in descending score order, padding as in :func:`nms`.
    Raises:
      ValueError: on bad shapes.
    Matches ``torchvision.ops.batched_nms``.
    """
    boxes, scores, valid, idxs = _check(boxes, scores, valid, idxs)
    if not coordinate_trick:
        return _greedy_nms(boxes, scores, valid, idxs, iou_threshold, max_output_size)
    if boxes.shape[0] == 0:
        return _greedy_nms(boxes, scores, valid, None, iou_threshold, max_output_size)
    max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, jnp.asarray(-jnp.inf, boxes.dtype)))
    max_coordinate = jnp.where(jnp.isfinite(max_coordinate), max_coordinate, 0)
    offsets = idxs.astype(boxes.dtype) * (max_coordinate + jnp.asarray(1, boxes.dtype))
    return _greedy_nms(boxes + offsets[:, None], scores, valid, None, iou_threshold, max_output_size)
