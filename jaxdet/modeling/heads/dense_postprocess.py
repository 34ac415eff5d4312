"""Inference post-processing of dense (one-stage) detectors, with static shapes: per-level score
threshold + top-k over (location, class) pairs, then class-wise NMS over all levels and a fixed number
of detections per image.

The pattern of torchvision's ``RetinaNet.postprocess_detections`` (``torchvision/models/detection/retinanet.py``)
and ``FCOS.postprocess_detections`` (``fcos.py``)::

    scores_l = score(level l).flatten()              # [N_l * C], location-major, class-minor
    keep = scores_l > score_thresh; top min(k, #keep) of them
    location = idx // C, class = idx % C; decode + clip the boxes of those locations
    batched_nms over the concatenated levels (by class), keep the first detections_per_image

Static version: :func:`select_topk_per_level` always returns ``min(k, N_l * C)`` slots with a validity
mask (the slots below the threshold are invalid), the caller decodes the boxes of the selected locations
(RetinaNet: anchors + deltas; FCOS: points + ltrb distances), and :func:`nms_and_keep` runs the class-wise
greedy NMS (:func:`jaxdet.ops.nms.batched_nms`) with a fixed output size. Everything works on one image;
``jax.vmap`` over the batch.
"""
from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp

from jaxdet.ops.nms import batched_nms

Array = jax.Array

#: torchvision's ``batched_nms`` on CPU switches from the coordinate trick to per-class NMS above this many boxes.
TORCHVISION_CPU_VANILLA_ABOVE = 1000


def select_topk_per_level(scores: Array, k: int, score_thresh: float) -> tuple[Array, Array, Array, Array]:
    """The best ``k`` (location, class) pairs of one level whose score is ``> score_thresh``.

    Args:
      scores: [N_l, C] float scores (probabilities: sigmoid of the class logits for RetinaNet,
        ``sqrt(sigmoid(cls) * sigmoid(centerness))`` for FCOS) of the N_l locations (anchors or points)
        of one level, in the level's flattening order.
      k: static number of candidates (torchvision ``topk_candidates``: 1000).
      score_thresh: pairs with ``score <= score_thresh`` are not candidates (torchvision keeps ``> thresh``).

    Returns:
      ``(location_idx [K] int32, class_idx [K] int32, score [K] float32, valid [K] bool)`` with
      ``K = min(k, N_l * C)``, sorted by descending score (ties: lower flat index ``location * C + class``
      first). ``valid`` is False for the slots whose pair is below the threshold (there were fewer than K
      candidates); their indices point at real (unused) pairs and their score is 0.

    Raises:
      ValueError: ``scores`` is not 2-D or ``k < 1``.

    Equals torchvision's ``keep_idxs = scores > thresh; scores[keep_idxs].topk(min(k, #keep))``, with
    ``anchor_idxs = idx // C`` and ``labels = idx % C`` (up to the order of exactly tied scores).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N_l, C], got {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, c = scores.shape
    flat = scores.astype(jnp.float32).reshape(-1)
    kk = min(int(k), n * c)
    above = flat > score_thresh
    top, idx = jax.lax.top_k(jnp.where(above, flat, -jnp.inf), kk)
    valid = jnp.isfinite(top)
    idx = idx.astype(jnp.int32)
    return idx // c, idx % c, jnp.where(valid, top, 0.0), valid


def nms_and_keep(boxes: Array, scores: Array, classes: Array, valid: Array, nms_thresh: float,
                 detections_per_image: int,
                 coordinate_trick: Union[bool, str] = False) -> dict[str, Array]:
    """Class-wise greedy NMS over all candidates of one image, padded to ``detections_per_image``.

    Args:
      boxes: [N, 4] float xyxy canvas pixels (decoded, clipped candidates of all levels, concatenated).
      scores: [N] float.
      classes: [N] int contiguous class ids 0..C-1; boxes of different classes never suppress each other.
      valid: [N] bool; invalid candidates are neither kept nor suppress anything.
      nms_thresh: IoU above which a lower-scored box of the same class is suppressed (RetinaNet 0.5, FCOS 0.6).
      detections_per_image: static output size D (RetinaNet 300, FCOS 100).
      coordinate_trick: how classes are kept apart. False (default): an exact class mask (torchvision's
        ``_batched_nms_vanilla``, what ``batched_nms`` runs on CPU for more than 1000 boxes). True: boxes
        shifted by ``class * (max coordinate + 1)`` (``_batched_nms_coordinate_trick``, torchvision on CPU for
        up to 1000 boxes, on GPU up to 25000; the shift rounds coordinates in the last float bits).
        ``"torchvision_cpu"``: whichever of the two torchvision's CPU ``batched_nms`` would use for the
        number of valid candidates (both are computed; the cost is one more NMS).

    Returns:
      ``{"boxes" [D, 4] float32, "scores" [D] float32, "classes" [D] int32, "valid" [D] bool}``, kept
      detections in descending score order (ties in input order), padding slots zero and invalid.

    Raises:
      ValueError: bad shapes (from :func:`jaxdet.ops.nms.batched_nms`) or an unknown ``coordinate_trick``.

    Matches ``keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]``.
    """
    valid = jnp.asarray(valid).astype(bool)
    classes = jnp.asarray(classes).astype(jnp.int32)
    run = lambda trick: batched_nms(boxes, scores, classes, nms_thresh, detections_per_image, valid=valid,
                                    coordinate_trick=trick)
    if coordinate_trick == "torchvision_cpu":
        keep_v, ok_v = run(False)
        keep_t, ok_t = run(True)
        vanilla = jnp.sum(valid) > TORCHVISION_CPU_VANILLA_ABOVE
        keep, keep_valid = jnp.where(vanilla, keep_v, keep_t), jnp.where(vanilla, ok_v, ok_t)
    elif isinstance(coordinate_trick, bool):
        keep, keep_valid = run(coordinate_trick)
    else:
        raise ValueError(f"coordinate_trick must be True, False or 'torchvision_cpu', got {coordinate_trick!r}")
    return {
        "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0).astype(jnp.float32),
        "scores": jnp.where(keep_valid, scores[keep], 0.0).astype(jnp.float32),
        "classes": jnp.where(keep_valid, classes[keep], 0),
        "valid": keep_valid,
    }


def concat_levels(per_level: Sequence[tuple[Array, ...]]) -> tuple[Array, ...]:
    """Concatenates per-level tuples of arrays (e.g. ``(boxes, scores, classes, valid)``) along axis 0."""
    return tuple(jnp.concatenate(parts, axis=0) for parts in zip(*per_level))
