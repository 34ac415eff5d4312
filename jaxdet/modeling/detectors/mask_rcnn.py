"""Mask R-CNN with FPN (He et al., "Mask R-CNN", ICCV 2017): Faster R-CNN plus a mask branch.

Composition and semantics of torchvision ``torchvision/models/detection/mask_rcnn.py``
(``maskrcnn_resnet50_fpn``, v1): the :class:`~jaxdet.modeling.detectors.faster_rcnn.FasterRCNN` pipeline, and
on the RoIs a 14x14 MultiScaleRoIAlign over P2..P5 (sampling ratio 2, ``roi_heads.pooler_aligned``) ->
MaskRCNNHeads (4 x conv3x3 256 + ReLU) -> MaskRCNNPredictor (2x2 stride-2 transposed conv + ReLU, 1x1 conv to
C + 1 class channels). Training: ``maskrcnn_loss`` on the positive sampled RoIs; inference: the mask of each
final detection (pooled at its box), sigmoid of the detected class's channel. Every shape is static.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.modeling.components import config_fields, rcnn_kwargs
from jaxdet.modeling.detectors.faster_rcnn import FasterRCNN
from jaxdet.modeling.heads import mask_head as mask_lib
from jaxdet.ops.masks import mask_targets


class MaskRCNN(FasterRCNN):
    """Mask R-CNN over an FPN backbone.

    Attributes (besides :class:`FasterRCNN`'s):
      mask_config: :class:`~jaxdet.modeling.heads.mask_head.MaskHeadConfig` (``config.model.mask_head``).

    Training batches also need ``gt_masks`` [B, M, S, S] uint8: each instance's mask cropped to its
    ``gt_boxes`` entry and resized to S x S (DESIGN.md section 2; crop convention in :mod:`jaxdet.ops.masks`).
    The losses add ``loss_mask``. Inference adds ``masks`` [B, D, 28, 28] float32: the probabilities of the
    detected class over each detection box (0 for invalid detections), to be pasted into the image with
    :func:`jaxdet.visualization.paste_masks`.
    """

    mask_config: mask_lib.MaskHeadConfig = mask_lib.MaskHeadConfig()

    def setup_branches(self) -> None:
        self.mask_head = mask_lib.MaskRCNNHead(num_classes=self.num_classes, conv_dim=self.mask_config.conv_dim,
                                               num_convs=self.mask_config.num_convs, dtype=self.dtype)

    def initialize_branches(self, features: dict[str, jax.Array]) -> None:
        p = self.mask_config.pooler_resolution
        self.mask_head(jnp.zeros((features["P2"].shape[0], 1, p, p, features["P2"].shape[-1]), self.dtype))

    def mask_logits(self, features: dict[str, jax.Array], boxes: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
        """Mask branch on boxes [B, R, 4] (xyxy canvas pixels) -> logits [B, R, 28, 28, C+1] float32."""
        cfg = self.mask_config
        return self.mask_head(self.pool(features, boxes, canvas_hw, cfg.pooler_resolution, cfg.sampling_ratio))

    def branch_losses(self, features, samples, batch, canvas_hw) -> dict[str, jax.Array]:
        """``loss_mask`` (torchvision ``maskrcnn_loss``) on the first ``roi_heads.num_positives`` sampled RoIs
        of each image (the positives come first, in random order), counting those with ``labels > 0``; at most
        ``mask_head.max_train_rois`` of them when that is set."""
        n = min(self.roi_heads.num_positives, samples["rois"].shape[1])
        if self.mask_config.max_train_rois:
            n = min(n, self.mask_config.max_train_rois)
        rois = samples["rois"][:, :n]
        labels = samples["labels"][:, :n]
        matched = samples["matched_idxs"][:, :n]
        positive = samples["valid"][:, :n] & (labels > 0)
        logits = self.mask_logits(features, rois, canvas_hw)
        size = self.mask_config.mask_size
        targets = jax.vmap(lambda m, b, r, i, s: mask_targets(m, b, r, i, size, s))(
            batch["gt_masks"], batch["gt_boxes"], rois, matched, batch["image_size"])
        return {"loss_mask": mask_lib.mask_rcnn_loss(logits, labels, targets, positive)}

    def branch_outputs(self, features, detections, canvas_hw) -> dict[str, jax.Array]:
        """``masks`` [B, D, 28, 28] float32 of the final detections (pooled at their boxes)."""
        logits = self.mask_logits(features, detections["boxes"], canvas_hw)
        return {"masks": mask_lib.mask_probabilities(logits, detections["classes"], detections["valid"])}


def build_mask_rcnn(mcfg, num_classes: int) -> MaskRCNN:
    """``config.model`` (see ``configs/mask_rcnn.py``) -> :class:`MaskRCNN` (``model.mask_head`` section)."""
    return MaskRCNN(**rcnn_kwargs(mcfg, num_classes),
                    mask_config=mask_lib.MaskHeadConfig(**config_fields(mask_lib.MaskHeadConfig, mcfg.mask_head)))
