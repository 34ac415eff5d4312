"""FCOS head (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019), static shapes.

Semantics of torchvision ``torchvision/models/detection/fcos.py``:

* :class:`FCOSHead`: ``FCOSClassificationHead`` + ``FCOSRegressionHead``, shared by all levels: two towers of
  ``num_convs`` x (3x3 conv, GroupNorm(32), ReLU); ``cls_logits`` (3x3, C channels, bias from the 0.01 prior),
  ``bbox_reg`` (3x3, 4 channels, ReLU'd) and ``bbox_ctrness`` (3x3, 1 channel) on the regression tower.
* :func:`fcos_match`: ``FCOS.compute_loss``'s assignment of anchor points to ground truth (centre sampling,
  inside the box, per-level scale range, ties broken by the smallest box area).
* :func:`fcos_losses`: ``FCOSHead.compute_loss`` (sigmoid focal loss, GIoU loss, centerness BCE, each summed
  and divided by the number of foreground points of the batch).
* :func:`postprocess_detections`: ``FCOS.postprocess_detections`` (score ``sqrt(sigmoid(cls) *
  sigmoid(ctrness))`` > threshold, top-k per level, decode, clip, class-wise NMS, top detections).

"Anchors" are torchvision's ``AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)`` boxes, one
per location (see :mod:`jaxdet.ops.anchors`); FCOS uses their centres as points and their size as the level's
scale. Boxes are xyxy in canvas pixels. Classes are contiguous 0..C-1 (sigmoid outputs, no background).
Boxes are encoded with ``BoxLinearCoder(normalize_by_size=True)``: (l, t, r, b) distances from the anchor centre
divided by the anchor's width/height.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling import losses
from jaxdet.modeling.conv import Conv
from jaxdet.modeling.heads.dense_postprocess import concat_levels, nms_and_keep, select_topk_per_level
from jaxdet.modeling.layers import get_norm
from jaxdet.ops.boxes import clip_boxes, mul_no_fma


@dataclasses.dataclass(frozen=True)
class FCOSConfig:
    """Hyper-parameters of FCOS; names as in ``config.model.fcos`` (defaults: torchvision ``FCOS``)."""

    num_convs: int = 4
    head_norm: str = "gn"                # "gn" (GroupNorm(32), torchvision) or "none"
    prior_prob: float = 0.01             # cls_logits bias = -log((1 - p) / p)
    center_sampling_radius: float = 1.5  # in units of the level's anchor size (= stride on P3..P5)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    score_thresh_test: float = 0.2
    topk_candidates_test: int = 1000     # per level, before NMS
    nms_thresh_test: float = 0.6
    detections_per_image: int = 100
    nms_coordinate_trick: Union[bool, str] = False  # see dense_postprocess.nms_and_keep


class FCOSHead(nn.Module):
    """Classification and regression towers shared by every pyramid level.

    Attributes:
      num_classes: C (sigmoid outputs, contiguous classes).
      num_convs: 3x3 conv + norm + ReLU blocks per tower (4).
      norm: ``"gn"`` (GroupNorm with 32 groups, eps 1e-5, as torchvision) or ``"none"``.
      prior_prob: initial foreground probability of ``cls_logits`` (0.01).
      dtype: compute dtype; parameters are float32 and the outputs float32.

    Variables: ``cls_conv{i}``/``cls_norm{i}`` and ``bbox_conv{i}``/``bbox_norm{i}`` (i < num_convs), ``cls_logits``,
    ``bbox_reg``, ``bbox_ctrness``; conv weights normal(std 0.01), biases 0 except ``cls_logits``.

    ``__call__(features)``: list of L levels ``[B, H_l, W_l, F]`` -> ``(cls_logits, bbox_reg, ctrness)``, lists of
    ``[B, H_l * W_l, C]``, ``[B, H_l * W_l, 4]`` (>= 0, normalised l, t, r, b) and ``[B, H_l * W_l]`` logits, rows in
    (y, x) order like torchvision's flattened head outputs.

    Raises:
      ValueError: unknown ``norm``.
    """

    num_classes: int
    num_convs: int = 4
    norm: str = "gn"
    prior_prob: float = 0.01
    dtype: Any = jnp.float32

    def _conv(self, features: int, name: str, bias: float = 0.0) -> nn.Conv:
        return Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=nn.initializers.normal(0.01),
                       bias_init=nn.initializers.constant(bias), dtype=self.dtype, param_dtype=jnp.float32,
                       name=name)

    def _tower(self, prefix: str, channels: int):
        if self.norm not in ("gn", "none"):
            raise ValueError(f"FCOS head norm must be 'gn' or 'none', got {self.norm!r}")
        return [(self._conv(channels, f"{prefix}_conv{i}"),
                 get_norm(self.norm, dtype=self.dtype, name=f"{prefix}_norm{i}")) for i in range(self.num_convs)]

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        channels = features[0].shape[-1]
        cls_tower, bbox_tower = self._tower("cls", channels), self._tower("bbox", channels)
        cls_logits = self._conv(self.num_classes, "cls_logits", -math.log((1 - self.prior_prob) / self.prior_prob))
        bbox_reg = self._conv(4, "bbox_reg")
        bbox_ctrness = self._conv(1, "bbox_ctrness")
        out_cls, out_reg, out_ctr = [], [], []
        for x in features:
            b = x.shape[0]
            c = x.astype(self.dtype)
            for conv, norm in cls_tower:
                c = nn.relu(norm(conv(c)))
            r = x.astype(self.dtype)
            for conv, norm in bbox_tower:
                r = nn.relu(norm(conv(r)))
            out_cls.append(cls_logits(c).reshape(b, -1, self.num_classes).astype(jnp.float32))
            out_reg.append(nn.relu(bbox_reg(r)).reshape(b, -1, 4).astype(jnp.float32))
            out_ctr.append(bbox_ctrness(r).reshape(b, -1).astype(jnp.float32))
        return out_cls, out_reg, out_ctr


# ------------------------------------------------------------------------------------------- box coding
def _centres_and_sizes(anchors: jax.Array):
    ctr_x = 0.5 * (anchors[..., 0] + anchors[..., 2])
    ctr_y = 0.5 * (anchors[..., 1] + anchors[..., 3])
    return ctr_x, ctr_y, anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]


def linear_decode(rel_codes: jax.Array, anchors: jax.Array) -> jax.Array:
    """(l, t, r, b) / anchor size -> boxes. ``rel_codes`` [..., 4] float, ``anchors`` [..., 4] xyxy (broadcastable);
    returns [..., 4] xyxy in the anchors' pixels. Matches ``BoxLinearCoder(normalize_by_size=True).decode``
    (torchvision/models/detection/_utils.py), products rounded before the additions as torch does."""
    anchors = anchors.astype(rel_codes.dtype)
    ctr_x, ctr_y, w, h = _centres_and_sizes(anchors)
    return jnp.stack([ctr_x - mul_no_fma(rel_codes[..., 0], w), ctr_y - mul_no_fma(rel_codes[..., 1], h),
                      ctr_x + mul_no_fma(rel_codes[..., 2], w), ctr_y + mul_no_fma(rel_codes[..., 3], h)], axis=-1)


def linear_encode(anchors: jax.Array, boxes: jax.Array) -> jax.Array:
    """Boxes -> (l, t, r, b) distances from the anchor centres divided by the anchor width/height.
    ``anchors``, ``boxes``: [..., 4] xyxy (broadcastable); returns [..., 4]. Matches
    ``BoxLinearCoder(normalize_by_size=True).encode(anchors, boxes)``."""
    ctr_x, ctr_y, w, h = _centres_and_sizes(anchors)
    return jnp.stack([(ctr_x - boxes[..., 0]) / w, (ctr_y - boxes[..., 1]) / h,
                      (boxes[..., 2] - ctr_x) / w, (boxes[..., 3] - ctr_y) / h], axis=-1)


# ------------------------------------------------------------------------------------------- training targets
def fcos_match(anchors: jax.Array, num_anchors_per_level: Sequence[int], gt_boxes: jax.Array, gt_valid: jax.Array,
               center_sampling_radius: float = 1.5) -> jax.Array:
    """Ground truth assigned to each anchor point of one image (torchvision ``FCOS.compute_loss``).

    A point (anchor centre) matches a box when all of: its distance to the box centre (max over x, y) is
    ``< radius * anchor size``; it lies strictly inside the box; the largest of its (l, t, r, b) distances lies in
    ``(4 * size, 8 * size)`` (lower bound 0 on the first level, no upper bound on the last). Among matching boxes
    the one with the smallest area wins, compared as torchvision does in float32 (``1e8 - area``; equal values
    go to the lowest index).

    Args:
      anchors: [N, 4] float32 xyxy, all levels concatenated (level-major, as torchvision).
      num_anchors_per_level: static sizes of the levels (sum N).
      gt_boxes: [M, 4] float32 xyxy canvas pixels.
      gt_valid: [M] bool; False boxes (padding, crowd regions) never match.
      center_sampling_radius: the radius in anchor sizes (1.5).
    Returns:
      [N] int32, the matched ground-truth index or -1.
    Raises:
      ValueError: ``num_anchors_per_level`` does not sum to N.
    """
    n = anchors.shape[0]
    if sum(num_anchors_per_level) != n:
        raise ValueError(f"num_anchors_per_level {list(num_anchors_per_level)} does not sum to {n} anchors")
    ax, ay, sizes, _ = _centres_and_sizes(anchors)
    gt_cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    gt_cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    near = (jnp.maximum(jnp.abs(ax[:, None] - gt_cx[None]), jnp.abs(ay[:, None] - gt_cy[None]))
            < center_sampling_radius * sizes[:, None])
    left, top = ax[:, None] - gt_boxes[None, :, 0], ay[:, None] - gt_boxes[None, :, 1]
    right, bottom = gt_boxes[None, :, 2] - ax[:, None], gt_boxes[None, :, 3] - ay[:, None]
    inside = jnp.minimum(jnp.minimum(left, top), jnp.minimum(right, bottom)) > 0
    reach = jnp.maximum(jnp.maximum(left, top), jnp.maximum(right, bottom))
    first, last = num_anchors_per_level[0], num_anchors_per_level[-1]
    lower = jnp.where(jnp.arange(n) < first, 0.0, sizes * 4)
    upper = jnp.where(jnp.arange(n) >= n - last, jnp.inf, sizes * 8)
    in_scale = (reach > lower[:, None]) & (reach < upper[:, None])
    match = near & inside & in_scale & gt_valid[None, :]
    areas = mul_no_fma(gt_boxes[:, 2] - gt_boxes[:, 0], gt_boxes[:, 3] - gt_boxes[:, 1])
    quality = match.astype(jnp.float32) * (jnp.float32(1e8) - areas.astype(jnp.float32))[None, :]
    idx = jnp.argmax(quality, axis=1).astype(jnp.int32)
    return jnp.where(jnp.max(quality, axis=1) < 1e-5, -1, idx)


def fcos_losses(cls_logits: jax.Array, bbox_reg: jax.Array, ctrness: jax.Array, anchors: jax.Array,
                matched_idxs: jax.Array, gt_boxes: jax.Array, gt_classes: jax.Array,
                cfg: FCOSConfig) -> dict[str, jax.Array]:
    """The three FCOS losses of a batch (torchvision ``FCOSHead.compute_loss``).

    Args:
      cls_logits: [B, N, C] float; bbox_reg: [B, N, 4] (normalised l, t, r, b); ctrness: [B, N] logits;
        all levels concatenated.
      anchors: [N, 4] xyxy canvas pixels (shared by the batch).
      matched_idxs: [B, N] int32 from :func:`fcos_match` (-1 = background).
      gt_boxes: [B, M, 4] xyxy canvas pixels; gt_classes: [B, M] int32 in 0..C-1.
      cfg: focal ``alpha``/``gamma``.
    Returns:
      ``loss_cls`` (sigmoid focal loss summed over all points and classes), ``loss_box_reg`` (GIoU loss of the
      decoded boxes on the foreground) and ``loss_centerness`` (BCE with logits against
      ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` on the foreground), each float32 scalars divided by
      ``max(1, number of foreground points in the batch)``.
    """
    num_classes = cls_logits.shape[-1]
    fg = matched_idxs >= 0
    num_fg = jnp.maximum(jnp.sum(fg), 1).astype(jnp.float32)
    safe = jnp.maximum(matched_idxs, 0)
    classes = jnp.take_along_axis(gt_classes, safe, axis=1)
    boxes = jnp.take_along_axis(gt_boxes, safe[..., None], axis=1).astype(jnp.float32)

    targets = jax.nn.one_hot(classes, num_classes, dtype=jnp.float32) * fg[..., None]
    loss_cls = jnp.sum(losses.sigmoid_focal_loss(cls_logits, targets, cfg.focal_alpha, cfg.focal_gamma))

    # background points get a harmless fixed box pair so that no NaN/inf reaches the masked terms or gradients
    unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
    pred = jnp.where(fg[..., None], linear_decode(bbox_reg.astype(jnp.float32), anchors[None]), unit)
    target = jnp.where(fg[..., None], boxes, unit)
    loss_box = jnp.sum(jnp.where(fg, losses.generalized_box_iou_loss(pred, target), 0.0))

    ltrb = linear_encode(anchors[None], target)
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (jnp.min(lr, -1) / jnp.max(lr, -1)) * (jnp.min(tb, -1) / jnp.max(tb, -1))
    ctr_target = jnp.sqrt(jnp.where(fg, ratio, 1.0))
    loss_ctr = jnp.sum(jnp.where(fg, losses.sigmoid_binary_cross_entropy(ctrness, ctr_target), 0.0))
    return {"loss_cls": loss_cls / num_fg, "loss_box_reg": loss_box / num_fg, "loss_centerness": loss_ctr / num_fg}


# ------------------------------------------------------------------------------------------- inference
def postprocess_detections(cls_logits: Sequence[jax.Array], bbox_reg: Sequence[jax.Array],
                           ctrness: Sequence[jax.Array], anchors: Sequence[jax.Array], image_size: jax.Array,
                           cfg: FCOSConfig) -> dict[str, jax.Array]:
    """Final detections of one image (torchvision ``FCOS.postprocess_detections``).

    Per level: scores ``sqrt(sigmoid(cls) * sigmoid(ctrness))`` of every (point, class) pair, the best
    ``topk_candidates_test`` of those ``> score_thresh_test``
    (:func:`~jaxdet.modeling.heads.dense_postprocess.select_topk_per_level`), their boxes decoded and clipped to
    the image; then class-wise NMS (``nms_thresh_test``) over all levels and the best ``detections_per_image``
    (:func:`~jaxdet.modeling.heads.dense_postprocess.nms_and_keep`). Exact: no static cut beyond torchvision's own
    per-level top-k.

    Args:
      cls_logits, bbox_reg, ctrness, anchors: per level ``[P_l, C]``, ``[P_l, 4]``, ``[P_l]``, ``[P_l, 4]`` (anchors
        xyxy canvas pixels).
      image_size: [2] int32 (h, w) of the image inside the canvas.
    Returns:
      ``boxes`` [D, 4] float32 xyxy canvas pixels, ``scores`` [D] float32, ``classes`` [D] int32 (0..C-1),
      ``valid`` [D] bool; D = ``detections_per_image``, sorted by score, padding zeroed.
    """
    per_level = []
    for logits, reg, ctr, anc in zip(cls_logits, bbox_reg, ctrness, anchors):
        scores = jnp.sqrt(jax.nn.sigmoid(logits) * jax.nn.sigmoid(ctr)[:, None])
        loc, cls, score, valid = select_topk_per_level(scores, cfg.topk_candidates_test, cfg.score_thresh_test)
        per_level.append((clip_boxes(linear_decode(reg[loc], anc[loc]), image_size), score, cls, valid))
    boxes, scores, classes, valid = concat_levels(per_level)
    return nms_and_keep(boxes, scores, classes, valid, cfg.nms_thresh_test, cfg.detections_per_image,
                        cfg.nms_coordinate_trick)
