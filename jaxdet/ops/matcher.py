"""IoU-threshold matching of predictions (anchors/proposals) to ground-truth boxes.

Matches ``torchvision.models.detection._utils.Matcher`` (and detectron2's ``Matcher`` with the
same thresholds), with static shapes: ground truth is padded to M rows with a validity mask, and
instead of torchvision's negative codes the result is split into an index and a label.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax.numpy as jnp

Array = jnp.ndarray

FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


def match(
    iou: Array,
    gt_valid: Array,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
    pred_valid: Optional[Array] = None,
) -> Tuple[Array, Array]:
    """Assign each prediction to its best ground truth and label it fg / bg / ignore.

    Args:
      iou: [M, N] float match quality (IoU) between M ground-truth rows and N predictions.
      gt_valid: [M] bool, False for padding rows; padding never matches and never creates
        low-quality matches.
      high_threshold: IoU >= this is foreground.
      low_threshold: IoU < this is background; IoU in [low, high) is ignored (-1).
        (torchvision RPN: 0.7 / 0.3 with low-quality matches; RoI heads: 0.5 / 0.5 without.)
      allow_low_quality_matches: if True, for every valid ground truth g, every prediction whose IoU
        with g equals g's highest IoU over all (valid) predictions is made foreground (ties included),
        keeping its own best ground truth as its match, exactly as torchvision's
        ``set_low_quality_matches_``. Note (as in torchvision): a valid ground truth whose highest IoU
        is 0 (e.g. a zero-area box) makes every prediction with IoU 0 to it foreground, so callers
        must mark degenerate ground truth invalid.
      pred_valid: optional [N] bool; invalid (padded) predictions get label -1 and are excluded from
        the low-quality maxima.
    Returns:
      matched_gt_idx: [N] int32, the ground-truth row with the highest IoU for every prediction
        (first index among ties, like ``torch.max``), whatever its label; 0 when there is no valid
        ground truth.
      labels: [N] int32, 1 = foreground, 0 = background, -1 = ignore (between thresholds). When no
        ground truth is valid all (valid) predictions are background.
    Raises:
      ValueError: on bad shapes or low_threshold > high_threshold.
    """
    iou = jnp.asarray(iou)
    gt_valid = jnp.asarray(gt_valid)
    if iou.ndim != 2:
        raise ValueError(f"iou must have shape [M, N] (ground truth x predictions), got {tuple(iou.shape)}")
    m, n = iou.shape
    if gt_valid.shape != (m,):
        raise ValueError(f"gt_valid must have shape ({m},), got {tuple(gt_valid.shape)}")
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})")
    gt_valid = gt_valid.astype(bool)
    if pred_valid is not None:
        pred_valid = jnp.asarray(pred_valid).astype(bool)
        if pred_valid.shape != (n,):
            raise ValueError(f"pred_valid must have shape ({n},), got {tuple(pred_valid.shape)}")

    if m == 0:
        labels = jnp.zeros((n,), jnp.int32)
        if pred_valid is not None:
            labels = jnp.where(pred_valid, labels, IGNORE)
        return jnp.zeros((n,), jnp.int32), labels

    neg = jnp.asarray(-1.0, iou.dtype)  # below any IoU
    quality = jnp.where(gt_valid[:, None], iou, neg)
    matched_vals = jnp.max(quality, axis=0)
    matched_idx = jnp.argmax(quality, axis=0).astype(jnp.int32)

    labels = jnp.where(
        matched_vals >= high_threshold,
        FOREGROUND,
        jnp.where(matched_vals >= low_threshold, IGNORE, BACKGROUND),
    ).astype(jnp.int32)

    if allow_low_quality_matches:
        q = quality if pred_valid is None else jnp.where(pred_valid[None, :], quality, neg)
        highest_per_gt = jnp.max(q, axis=1)  # [M]
        is_best = (q == highest_per_gt[:, None]) & gt_valid[:, None]
        if pred_valid is not None:
            is_best = is_best & pred_valid[None, :]
        labels = jnp.where(jnp.any(is_best, axis=0), FOREGROUND, labels)

    any_gt = jnp.any(gt_valid)
    labels = jnp.where(any_gt, labels, BACKGROUND)
    matched_idx = jnp.where(any_gt, matched_idx, 0)
    if pred_valid is not None:
        labels = jnp.where(pred_valid, labels, IGNORE)
    return matched_idx, labels
