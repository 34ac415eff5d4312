"""Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015) over an FPN, static shapes.

Semantics follow torchvision ``torchvision/models/detection/rpn.py`` (``RPNHead``,
``RegionProposalNetwork``): per-level pre-NMS top-k on objectness logits, decode with weights
(1, 1, 1, 1) and dw/dh clamped at log(1000/16), clip to the image, drop boxes smaller than ``min_size``,
NMS per level (torchvision's ``batched_nms`` keyed by level), then the top ``post_nms_topk`` per image
by objectness. Training: anchors matched with IoU >= 0.7 / < 0.3 and low-quality matches, 256 anchors
sampled per image with half positives, BCE objectness loss and smooth-L1 (beta 1/9) box loss, both
divided by the number of sampled anchors over the whole batch.

All arrays carry a leading batch dim B; anchors are shared by the batch. Boxes are xyxy in canvas pixels.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling import losses
from jaxdet.modeling.conv import Conv
from jaxdet.ops.box_coder import decode_boxes, encode_boxes
from jaxdet.ops.boxes import box_iou, clip_boxes, small_boxes_mask
from jaxdet.ops.matcher import match
from jaxdet.ops.nms import nms
from jaxdet.ops.sampler import sample_balanced_masks

_BBOX_CLAMP = math.log(1000.0 / 16)


@dataclasses.dataclass(frozen=True)
class RPNConfig:
    """Hyper-parameters of the RPN; names as in jaxdet configs (``config.model.rpn``)."""

    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 2000
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_size: float = 1e-3
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9.0
    bbox_reg_weights: tuple = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """Shared conv head: 3x3 conv + ReLU, then 1x1 objectness logits and 1x1 box deltas, on every level.

    torchvision ``RPNHead`` (weights normal(std=0.01), bias 0). Output channel layout per location is
    anchor-major: logits channel ``a``, deltas channels ``4a..4a+3`` (dx, dy, dw, dh), which flattens to
    torchvision's (y, x, anchor) ordering of ``grid_anchors``.

    Attributes:
      num_anchors: anchors per location A.
      num_convs: 3x3 convs before the predictors (torchvision: 1).
    """

    num_anchors: int
    num_convs: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """features: per level [B, H_l, W_l, C] -> (logits [B, H_l*W_l*A], deltas [B, H_l*W_l*A, 4]) per level."""
        init = nn.initializers.normal(0.01)
        convs = [
            Conv(features[0].shape[-1], (3, 3), padding=((1, 1), (1, 1)), kernel_init=init, dtype=self.dtype,
                    name=f"conv{i}" if i else "conv")
            for i in range(self.num_convs)
        ]
        cls = Conv(self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name="cls_logits")
        reg = Conv(4 * self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name="bbox_pred")
        logits, deltas = [], []
        for x in features:
            for conv in convs:
                x = nn.relu(conv(x))
            b = x.shape[0]
            logits.append(cls(x).reshape(b, -1).astype(jnp.float32))
            deltas.append(reg(x).reshape(b, -1, 4).astype(jnp.float32))
        return logits, deltas


def _single_image_proposals(logits_per_level, deltas_per_level, anchors_per_level, image_size, topk, post_topk,
                            cfg: RPNConfig):
    """Proposals for one image. See :func:`rpn_proposals`."""
    k_max = max(min(topk, a.shape[0]) for a in anchors_per_level)
    lvl_boxes, lvl_scores, lvl_valid = [], [], []
    for logits, deltas, anchors in zip(logits_per_level, deltas_per_level, anchors_per_level):
        k = min(topk, anchors.shape[0])
        top_logits, idx = jax.lax.top_k(logits, k)
        b = decode_boxes(deltas[idx], anchors[idx], cfg.bbox_reg_weights, clamp=_BBOX_CLAMP)
        b = clip_boxes(b, image_size)
        valid = small_boxes_mask(b, cfg.min_size)
        pad = k_max - k
        lvl_boxes.append(jnp.pad(b, ((0, pad), (0, 0))))
        lvl_scores.append(jnp.pad(jax.nn.sigmoid(top_logits), (0, pad)))
        lvl_valid.append(jnp.pad(valid, (0, pad)))
    boxes = jnp.stack(lvl_boxes)     # [L, K, 4]
    scores = jnp.stack(lvl_scores)   # [L, K]
    valid = jnp.stack(lvl_valid)     # [L, K]
    per_level_out = min(post_topk, k_max)
    keep, keep_valid = jax.vmap(lambda b, s, v: nms(b, s, cfg.nms_thresh, per_level_out, valid=v))(
        boxes, scores, valid)        # [L, per_level_out]
    kept_boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1).reshape(-1, 4)
    kept_scores = jnp.where(keep_valid, jnp.take_along_axis(scores, keep, axis=1), -jnp.inf).reshape(-1)
    n_out = min(post_topk, kept_scores.shape[0])
    top_scores, idx = jax.lax.top_k(kept_scores, n_out)
    out_boxes = kept_boxes[idx]
    out_valid = jnp.isfinite(top_scores)
    if n_out < post_topk:  # keep the promised static count
        pad = post_topk - n_out
        out_boxes = jnp.pad(out_boxes, ((0, pad), (0, 0)))
        top_scores = jnp.pad(top_scores, (0, pad), constant_values=-jnp.inf)
        out_valid = jnp.pad(out_valid, (0, pad))
    return out_boxes, jnp.where(out_valid, top_scores, 0.0), out_valid


def rpn_proposals(logits_per_level: Sequence[jax.Array], deltas_per_level: Sequence[jax.Array],
                  anchors_per_level: Sequence[jax.Array], image_size: jax.Array, cfg: RPNConfig,
                  train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Turns RPN outputs into a fixed number of proposals per image.

    Args:
      logits_per_level: per level [B, N_l] float32 objectness logits.
      deltas_per_level: per level [B, N_l, 4] float32 box deltas (dx, dy, dw, dh).
      anchors_per_level: per level [N_l, 4] float32 anchors, xyxy canvas pixels.
      image_size: [B, 2] int32 (height, width) of the image inside the canvas; proposals are clipped to it.
      cfg: :class:`RPNConfig`.
      train: selects the ``*_train`` or ``*_test`` top-k sizes.

    Returns:
      proposals [B, P, 4] float32 xyxy canvas pixels sorted by objectness (descending), objectness
      probabilities [B, P] float32, valid [B, P] bool; P = ``post_nms_topk_{train,test}``. Gradients are
      stopped (proposals are constants for the RoI heads, as in torchvision).
    """
    topk = cfg.pre_nms_topk_train if train else cfg.pre_nms_topk_test
    post = cfg.post_nms_topk_train if train else cfg.post_nms_topk_test
    logits_per_level = [jax.lax.stop_gradient(x) for x in logits_per_level]
    deltas_per_level = [jax.lax.stop_gradient(x) for x in deltas_per_level]
    fn = lambda lg, dl, size: _single_image_proposals(lg, dl, anchors_per_level, size, topk, post, cfg)
    return jax.vmap(fn)(list(logits_per_level), list(deltas_per_level), image_size)


def rpn_losses(logits: jax.Array, deltas: jax.Array, anchors: jax.Array, gt_boxes: jax.Array,
               gt_valid: jax.Array, key: jax.Array, cfg: RPNConfig) -> dict[str, jax.Array]:
    """RPN objectness and box-regression losses (torchvision ``RegionProposalNetwork.compute_loss``).

    Args:
      logits: [B, N] float32, all levels concatenated (N = total anchors).
      deltas: [B, N, 4] float32.
      anchors: [N, 4] float32 xyxy canvas pixels.
      gt_boxes: [B, M, 4] float32 xyxy canvas pixels.
      gt_valid: [B, M] bool: real, non-crowd objects (crowd regions never become positives).
      key: PRNG key for the anchor sampling.
      cfg: :class:`RPNConfig`.

    Returns:
      ``{"loss_rpn_cls", "loss_rpn_reg"}`` float32 scalars, each normalised by the number of sampled
      anchors in the batch (at least 1).
    """
    b = logits.shape[0]
    keys = jax.random.split(key, b)

    def per_image(gt_b, valid_b, k):
        iou = box_iou(gt_b, anchors)
        idx, labels = match(iou, valid_b, cfg.fg_iou_thresh, cfg.bg_iou_thresh, True)
        targets = encode_boxes(gt_b[idx], anchors, cfg.bbox_reg_weights)
        pos, neg = sample_balanced_masks(labels, k, cfg.batch_size_per_image, cfg.positive_fraction)
        return targets, pos, neg

    targets, pos, neg = jax.vmap(per_image)(gt_boxes, gt_valid, keys)
    sampled = pos | neg
    normalizer = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
    reg = jnp.sum(losses.smooth_l1(deltas - targets, cfg.smooth_l1_beta).sum(-1) * pos) / normalizer
    cls = jnp.sum(losses.sigmoid_binary_cross_entropy(logits, pos.astype(jnp.float32)) * sampled) / normalizer
    return {"loss_rpn_cls": cls, "loss_rpn_reg": reg}
