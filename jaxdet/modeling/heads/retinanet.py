"""RetinaNet head (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): the classification and
box-regression subnets, anchor matching + focal / L1 losses, and inference post-processing, static shapes.

Semantics of torchvision ``torchvision/models/detection/retinanet.py`` (v1, ``retinanet_resnet50_fpn``):
  * ``RetinaNetClassificationHead`` / ``RetinaNetRegressionHead``: ``num_convs`` (4) 3x3 convs + ReLU (no norm),
    then a 3x3 conv to ``A * C`` class logits (bias ``-log((1 - p) / p)``, p = 0.01) or ``A * 4`` deltas; all
    weights normal(std 0.01), biases 0. Channel ``a * C + c`` (resp. ``4a + j``) of location (y, x) becomes row
    ``(y * W + x) * A + a`` of the level's output: torchvision's (y, x, anchor) anchor order.
  * ``RetinaNet.compute_loss`` + ``RetinaNetHead.compute_loss``: ``Matcher(0.5, 0.4, allow_low_quality_matches=
    True)`` on IoU(gt, anchors); sigmoid focal loss (alpha 0.25, gamma 2) summed over the anchors that are not
    between the thresholds, L1 on (1, 1, 1, 1)-encoded deltas summed over the foreground anchors, each divided
    by the image's number of foreground anchors (at least 1), then averaged over the images.
  * ``RetinaNet.postprocess_detections``: per level sigmoid scores over (anchor, class), ``> 0.05``, top 1000,
    decode, clip; ``batched_nms(0.5)`` over all levels; 300 detections.

Classes are contiguous 0..C-1 with one sigmoid output each (no background output); ground truth uses the
same ids (DESIGN.md section 2). Boxes are xyxy canvas pixels.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling import losses
from jaxdet.modeling.conv import Conv
from jaxdet.modeling.heads.dense_postprocess import concat_levels, nms_and_keep, select_topk_per_level
from jaxdet.ops.box_coder import DEFAULT_SCALE_CLAMP, decode_boxes, encode_boxes
from jaxdet.ops.boxes import box_iou, clip_boxes
from jaxdet.ops.matcher import FOREGROUND, IGNORE, match


@dataclasses.dataclass(frozen=True)
class RetinaNetConfig:
    """Hyper-parameters of RetinaNet; names as in jaxdet configs (``config.model.retinanet``), defaults torchvision's.

    Attributes:
      num_convs: 3x3 conv + ReLU layers in each subnet (4).
      prior_prob: initial foreground probability of every class logit (0.01).
      fg_iou_thresh, bg_iou_thresh: anchors with IoU >= 0.5 are foreground, < 0.4 background, in between ignored;
        low-quality matches (each ground truth's best anchors) are foreground too.
      focal_loss_alpha, focal_loss_gamma: sigmoid focal loss parameters (0.25, 2).
      bbox_reg_weights: box coder weights (1, 1, 1, 1).
      score_thresh_test: candidates need a score > 0.05.
      topk_candidates_test: candidates kept per level (1000).
      nms_thresh_test: class-wise NMS IoU threshold (0.5).
      detections_per_image: static number of detections per image (300).
      nms_coordinate_trick: passed to :func:`~jaxdet.modeling.heads.dense_postprocess.nms_and_keep` (False: exact
        class-wise NMS, as torchvision on CPU with more than 1000 candidates; ``"torchvision_cpu"`` follows
        torchvision's CPU switch to the coordinate trick for up to 1000 candidates).
    """

    num_convs: int = 4
    prior_prob: float = 0.01
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    focal_loss_alpha: float = 0.25
    focal_loss_gamma: float = 2.0
    bbox_reg_weights: tuple = (1.0, 1.0, 1.0, 1.0)
    score_thresh_test: float = 0.05
    topk_candidates_test: int = 1000
    nms_thresh_test: float = 0.5
    detections_per_image: int = 300
    nms_coordinate_trick: Union[bool, str] = False


def _conv(features: int, name: str, dtype, bias_init=nn.initializers.zeros) -> nn.Conv:
    return Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=nn.initializers.normal(0.01),
                bias_init=bias_init, dtype=dtype, param_dtype=jnp.float32, name=name)


class _Subnet(nn.Module):
    """``num_convs`` x (3x3 conv + ReLU) then a 3x3 predictor with ``outputs_per_anchor * num_anchors`` channels,
    shared over the levels: per level [B, H, W, C_in] -> [B, H * W * A, outputs_per_anchor] float32."""

    num_anchors: int
    outputs_per_anchor: int
    predictor_name: str
    num_convs: int = 4
    predictor_bias: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        channels = features[0].shape[-1]
        convs = [_conv(channels, f"conv_{i}", self.dtype) for i in range(self.num_convs)]
        predictor = _conv(self.num_anchors * self.outputs_per_anchor, self.predictor_name, self.dtype,
                          bias_init=nn.initializers.constant(self.predictor_bias))
        out = []
        for x in features:
            x = x.astype(self.dtype)
            for conv in convs:
                x = nn.relu(conv(x))
            x = predictor(x)
            out.append(x.reshape(x.shape[0], -1, self.outputs_per_anchor).astype(jnp.float32))
        return out


class RetinaNetHead(nn.Module):
    """Classification and regression subnets over every pyramid level (torchvision ``RetinaNetHead``, v1: no norm).

    Attributes:
      num_anchors: anchors per location A (9).
      num_classes: foreground classes C (sigmoid outputs, no background).
      num_convs: convs per subnet (4).
      prior_prob: class-logit bias ``-log((1 - prior_prob) / prior_prob)``.
      dtype: compute dtype (parameters float32).

    Variables: ``classification_head/{conv_0..conv_3, cls_logits}``, ``regression_head/{conv_0..conv_3, bbox_reg}``
    (kernels HWIO), torchvision's ``head.classification_head.conv.{i}.0`` / ``cls_logits`` and
    ``head.regression_head.conv.{i}.0`` / ``bbox_reg``.

    ``__call__(features)``: features per level [B, H_l, W_l, F] -> ``(logits, deltas)``, per level
    [B, H_l * W_l * A, C] and [B, H_l * W_l * A, 4] float32, rows in the anchor order of
    :func:`jaxdet.ops.anchors.grid_anchors`.
    """

    num_anchors: int
    num_classes: int
    num_convs: int = 4
    prior_prob: float = 0.01
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        logits = _Subnet(self.num_anchors, self.num_classes, "cls_logits", self.num_convs, bias, self.dtype,
                         name="classification_head")(features)
        deltas = _Subnet(self.num_anchors, 4, "bbox_reg", self.num_convs, 0.0, self.dtype,
                         name="regression_head")(features)
        return logits, deltas


def retinanet_losses(logits: jax.Array, deltas: jax.Array, anchors: jax.Array, gt_boxes: jax.Array,
                     gt_classes: jax.Array, gt_valid: jax.Array, cfg: RetinaNetConfig) -> dict[str, jax.Array]:
    """Focal classification loss and L1 box loss (torchvision ``RetinaNet.compute_loss``).

    Args:
      logits: [B, N, C] float32 class logits, all levels concatenated (N = total anchors).
      deltas: [B, N, 4] float32 (dx, dy, dw, dh).
      anchors: [N, 4] float32 xyxy canvas pixels.
      gt_boxes: [B, M, 4] float32 xyxy canvas pixels.
      gt_classes: [B, M] int32 contiguous class ids 0..C-1.
      gt_valid: [B, M] bool: real, non-crowd objects with positive width and height (crowd regions are left out,
        as torchvision's COCO reference drops them). An image without any is all background.
      cfg: :class:`RetinaNetConfig`.

    Returns:
      ``{"loss_cls", "loss_box_reg"}`` float32 scalars: per image, the focal loss summed over all classes of the
      anchors that are not ignored (IoU in [bg, fg)) and the L1 loss summed over the foreground anchors, each
      divided by max(1, number of foreground anchors of the image); then the mean over the images.
    """
    num_classes = logits.shape[-1]

    def per_image(logits_i, deltas_i, gt_b, gt_c, valid_b):
        iou = box_iou(gt_b, anchors)                                               # [M, N]
        idx, labels = match(iou, valid_b, cfg.fg_iou_thresh, cfg.bg_iou_thresh, True)
        fg = labels == FOREGROUND
        num_fg = jnp.maximum(jnp.sum(fg), 1).astype(jnp.float32)
        targets = fg[:, None] & (gt_c[idx][:, None] == jnp.arange(num_classes)[None, :])
        focal = losses.sigmoid_focal_loss(logits_i, targets, cfg.focal_loss_alpha, cfg.focal_loss_gamma)
        cls = jnp.sum(jnp.where((labels != IGNORE)[:, None], focal, 0.0)) / num_fg
        matched = jnp.where(fg[:, None], gt_b[idx], anchors)  # background rows encode to 0, never to log(0)
        box_targets = encode_boxes(matched, anchors, cfg.bbox_reg_weights)
        reg = jnp.sum(jnp.where(fg[:, None], jnp.abs(deltas_i - box_targets), 0.0)) / num_fg
        return cls, reg

    cls, reg = jax.vmap(per_image)(logits, deltas, gt_boxes, gt_classes, gt_valid)
    return {"loss_cls": jnp.mean(cls), "loss_box_reg": jnp.mean(reg)}


def postprocess_detections(logits_per_level: Sequence[jax.Array], deltas_per_level: Sequence[jax.Array],
                           anchors_per_level: Sequence[jax.Array], image_size: jax.Array,
                           cfg: RetinaNetConfig) -> dict[str, jax.Array]:
    """Final detections of one image (torchvision ``RetinaNet.postprocess_detections``).

    Args:
      logits_per_level: per level [N_l, C] float32 class logits.
      deltas_per_level: per level [N_l, 4] float32 deltas.
      anchors_per_level: per level [N_l, 4] float32 xyxy canvas pixels.
      image_size: [2] int32 (height, width) of the image inside the canvas; boxes are clipped to it.
      cfg: :class:`RetinaNetConfig`.

    Returns:
      ``boxes`` [D, 4] float32 xyxy canvas pixels, ``scores`` [D] float32 (sigmoid probabilities), ``classes``
      [D] int32 (0..C-1), ``valid`` [D] bool; D = ``detections_per_image``, sorted by score, padding zero.
      Exact (no static cut beyond torchvision's own top-k per level).
    """
    per_level = []
    for logits, deltas, anchors in zip(logits_per_level, deltas_per_level, anchors_per_level):
        loc, cls, score, valid = select_topk_per_level(jax.nn.sigmoid(logits), cfg.topk_candidates_test,
                                                       cfg.score_thresh_test)
        boxes = decode_boxes(deltas[loc], anchors[loc], cfg.bbox_reg_weights, clamp=DEFAULT_SCALE_CLAMP)
        per_level.append((clip_boxes(boxes, image_size), score, cls, valid))
    boxes, scores, classes, valid = concat_levels(per_level)
    return nms_and_keep(boxes, scores, classes, valid, cfg.nms_thresh_test, cfg.detections_per_image,
                        cfg.nms_coordinate_trick)
