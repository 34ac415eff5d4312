"""Fast R-CNN box head on FPN RoI features (Girshick, "Fast R-CNN", ICCV 2015), static shapes.

Semantics follow torchvision ``torchvision/models/detection/roi_heads.py`` (``RoIHeads``,
``fastrcnn_loss``, ``postprocess_detections``) and ``faster_rcnn.py`` (``TwoMLPHead``,
``FastRCNNPredictor``). Class index 0 is background; foreground classes are 1..C, i.e. dataset-contiguous
class ``c`` is logit ``c + 1``. Boxes are xyxy in canvas pixels.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling import losses
from jaxdet.ops.box_coder import decode_boxes, encode_boxes
from jaxdet.ops.boxes import box_iou, clip_boxes, small_boxes_mask
from jaxdet.ops.matcher import match
from jaxdet.ops.nms import batched_nms
from jaxdet.ops.sampler import sample_balanced_indices

_BBOX_CLAMP = 4.135166556742356  # log(1000 / 16), torchvision's BoxCoder default


@dataclasses.dataclass(frozen=True)
class RoIHeadsConfig:
    """Hyper-parameters of the box head; names as in jaxdet configs (``config.model.roi_heads``)."""

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9.0
    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 2
    pooler_aligned: bool = False
    fc_dim: int = 1024
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    topk_candidates_test: int = 2000

    @property
    def num_positives(self) -> int:
        """The most positive RoIs :func:`sample_rois` returns per image (they come first)."""
        return int(self.batch_size_per_image * self.positive_fraction)


class FastRCNNHead(nn.Module):
    """TwoMLPHead (flatten, fc6, ReLU, fc7, ReLU) + FastRCNNPredictor (class logits, class-specific deltas).

    Attributes:
      num_classes: foreground classes C (the predictor has C + 1 outputs, background first).
      fc_dim: width of fc6/fc7 (1024).

    Note: the flatten order is (y, x, channel) (NHWC); torchvision flattens (channel, y, x), which the
    converter accounts for by permuting fc6's input rows.
    """

    num_classes: int
    fc_dim: int = 1024
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pooled [B, R, S, S, Cf] -> class logits [B, R, C+1] float32, box deltas [B, R, C+1, 4] float32."""
        b, r = pooled.shape[:2]
        x = pooled.reshape(b, r, -1)
        x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc6")(x))
        x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc7")(x))
        # detectron2 FastRCNNOutputLayers init: cls normal(0.01), box normal(0.001), bias 0.
        logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                          name="cls_score")(x)
        deltas = nn.Dense(4 * (self.num_classes + 1), dtype=self.dtype, kernel_init=nn.initializers.normal(0.001),
                          name="bbox_pred")(x)
        return logits.astype(jnp.float32), deltas.reshape(b, r, self.num_classes + 1, 4).astype(jnp.float32)


def sample_rois(proposals: jax.Array, proposals_valid: jax.Array, gt_boxes: jax.Array, gt_classes: jax.Array,
                gt_valid: jax.Array, key: jax.Array, cfg: RoIHeadsConfig) -> dict[str, jax.Array]:
    """Training RoIs for one image: proposals + ground truth, matched and sampled to a fixed count.

    torchvision ``RoIHeads.select_training_samples``: gt boxes are appended to the proposals, matched at
    IoU 0.5 (no low-quality matches), and ``batch_size_per_image`` RoIs sampled with at most
    ``positive_fraction`` positives (positives first).

    Args:
      proposals: [P, 4] float32 xyxy canvas pixels; proposals_valid: [P] bool.
      gt_boxes: [M, 4] float32; gt_classes: [M] int32 contiguous 0..C-1; gt_valid: [M] bool (non-crowd).
      key: PRNG key.

    Returns:
      dict with ``rois`` [S, 4], ``labels`` [S] int32 (0 background, c + 1 foreground), ``regression_targets``
      [S, 4], ``matched_idxs`` [S] int32 (the ground-truth slot each RoI is matched to; meaningful for
      positives), ``valid`` [S] bool, with S = ``batch_size_per_image``. Positives come first (at most
      ``cfg.num_positives``).
    """
    cand = jnp.concatenate([proposals, gt_boxes], axis=0)
    cand_valid = jnp.concatenate([proposals_valid, gt_valid], axis=0)
    iou = box_iou(gt_boxes, cand)
    idx, match_labels = match(iou, gt_valid, cfg.fg_iou_thresh, cfg.bg_iou_thresh, False)
    match_labels = jnp.where(cand_valid, match_labels, -1)
    sel, is_pos, valid = sample_balanced_indices(match_labels, key, cfg.batch_size_per_image,
                                                         cfg.positive_fraction)
    rois = cand[sel]
    matched = idx[sel]
    labels = jnp.where(is_pos & valid, gt_classes[matched] + 1, 0).astype(jnp.int32)
    targets = encode_boxes(gt_boxes[matched], rois, cfg.bbox_reg_weights)
    return {"rois": rois, "labels": labels, "regression_targets": targets, "matched_idxs": matched.astype(jnp.int32),
            "valid": valid}


def fast_rcnn_losses(logits: jax.Array, deltas: jax.Array, labels: jax.Array, targets: jax.Array,
                     valid: jax.Array, cfg: RoIHeadsConfig) -> dict[str, jax.Array]:
    """torchvision ``fastrcnn_loss``: cross-entropy over the sampled RoIs and smooth-L1 (beta 1/9) on the
    class-specific deltas of the positives, both divided by the number of sampled RoIs in the batch.

    Args:
      logits [B, S, C+1], deltas [B, S, C+1, 4], labels [B, S] int32, targets [B, S, 4], valid [B, S] bool.
    Returns:
      ``{"loss_cls", "loss_box_reg"}`` float32 scalars.
    """
    normalizer = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    ce = losses.softmax_cross_entropy(logits, labels)
    loss_cls = jnp.sum(ce * valid) / normalizer
    pos = valid & (labels > 0)
    d = jnp.take_along_axis(deltas, labels[..., None, None], axis=2)[..., 0, :]
    loss_reg = jnp.sum(losses.smooth_l1(d - targets, cfg.smooth_l1_beta).sum(-1) * pos) / normalizer
    return {"loss_cls": loss_cls, "loss_box_reg": loss_reg}


def postprocess_detections(logits: jax.Array, deltas: jax.Array, proposals: jax.Array, proposals_valid: jax.Array,
                           image_size: jax.Array, cfg: RoIHeadsConfig) -> dict[str, jax.Array]:
    """Final detections of one image (torchvision ``RoIHeads.postprocess_detections``).

    Softmax scores, class-specific decoding, clip to the image, drop background, score > threshold,
    drop boxes under 0.01 px, per-class NMS, keep the best ``detections_per_image``. To stay static the
    (RoI, class) pairs are first cut to the ``topk_candidates_test`` best scores: exact as long as the
    final detections are found among them (greedy NMS keeps a box only because of higher-scored ones).

    Args:
      logits [R, C+1], deltas [R, C+1, 4], proposals [R, 4] (canvas pixels), proposals_valid [R] bool,
      image_size [2] int32 (h, w).

    Returns:
      ``boxes`` [D, 4] float32 xyxy canvas pixels, ``scores`` [D] float32, ``classes`` [D] int32
      (contiguous 0..C-1), ``valid`` [D] bool; D = ``detections_per_image``, sorted by score.
    """
    r, k1 = logits.shape
    num_classes = k1 - 1
    boxes = decode_boxes(deltas, jnp.broadcast_to(proposals[:, None, :], deltas.shape),
                                   cfg.bbox_reg_weights, clamp=_BBOX_CLAMP)
    boxes = clip_boxes(boxes, image_size)[:, 1:].reshape(-1, 4)
    scores = jax.nn.softmax(logits, axis=-1)[:, 1:].reshape(-1)
    classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (r, num_classes)).reshape(-1)
    valid = ((scores > cfg.score_thresh_test) & small_boxes_mask(boxes, 1e-2)
             & jnp.repeat(proposals_valid, num_classes))
    k = min(cfg.topk_candidates_test, scores.shape[0])
    _, cand = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), k)
    c_boxes, c_scores, c_classes, c_valid = boxes[cand], scores[cand], classes[cand], valid[cand]
    keep, keep_valid = batched_nms(c_boxes, c_scores, c_classes, cfg.nms_thresh_test, cfg.detections_per_image,
                                       valid=c_valid)
    return {
        "boxes": jnp.where(keep_valid[:, None], c_boxes[keep], 0.0),
        "scores": jnp.where(keep_valid, c_scores[keep], 0.0),
        "classes": jnp.where(keep_valid, c_classes[keep], 0),
        "valid": keep_valid,
    }
