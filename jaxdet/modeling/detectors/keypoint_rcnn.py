"""Keypoint R-CNN with FPN (He et al., "Mask R-CNN", ICCV 2017): Faster R-CNN plus a keypoint branch.

Composition and semantics of torchvision ``torchvision/models/detection/keypoint_rcnn.py``
(``keypointrcnn_resnet50_fpn``): the :class:`~jaxdet.modeling.detectors.faster_rcnn.FasterRCNN` pipeline, and on
the RoIs a 14x14 MultiScaleRoIAlign over P2..P5 (sampling ratio 2, ``roi_heads.pooler_aligned``) ->
KeypointRCNNHeads (8 x conv3x3 512 + ReLU) -> KeypointRCNNPredictor (4x4 stride-2 transposed conv to K
channels, bilinear x2) -> 56x56 heatmap logits per keypoint. Training: ``keypointrcnn_loss`` on the positive
sampled RoIs; inference: ``heatmaps_to_keypoints`` on the final detections. Every shape is static.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.modeling.components import config_fields, rcnn_kwargs
from jaxdet.modeling.detectors.faster_rcnn import FasterRCNN
from jaxdet.modeling.heads import keypoint_head as kp_lib
from jaxdet.ops.keypoints import heatmaps_to_keypoints, keypoint_rcnn_loss


class KeypointRCNN(FasterRCNN):
    """Keypoint R-CNN over an FPN backbone (torchvision's person model: ``num_classes`` 1, K = 17).

    Attributes (besides :class:`FasterRCNN`'s):
      keypoint_config: :class:`~jaxdet.modeling.heads.keypoint_head.KeypointHeadConfig`
        (``config.model.keypoint_head``).

    Training batches also need ``gt_keypoints`` [B, M, K, 3] float32: x, y in canvas pixels (after resize and
    flip), visibility v in {0, 1, 2} (0: not labelled; DESIGN.md section 2). The losses add ``loss_keypoint``.
    Inference adds ``keypoints`` [B, D, K, 3] float32: (x, y, score) in canvas pixels, the score being the
    upsampled heatmap logit at the argmax (torchvision's ``keypoints_scores``); zeros for invalid detections
    and for detections beyond ``keypoint_config.max_detections_test``. With ``mutable=["intermediates"]`` the
    heatmap-argmax exactness flags [B, D', K] are sown as ``keypoints_exact`` (see
    :func:`jaxdet.ops.keypoints.heatmaps_to_keypoints`).
    """

    keypoint_config: kp_lib.KeypointHeadConfig = kp_lib.KeypointHeadConfig()

    def setup_branches(self) -> None:
        cfg = self.keypoint_config
        self.keypoint_head = kp_lib.KeypointRCNNHead(num_keypoints=cfg.num_keypoints, conv_dims=tuple(cfg.conv_dims),
                                                     dtype=self.dtype)

    def initialize_branches(self, features: dict[str, jax.Array]) -> None:
        p = self.keypoint_config.pooler_resolution
        self.keypoint_head(jnp.zeros((features["P2"].shape[0], 1, p, p, features["P2"].shape[-1]), self.dtype))

    def keypoint_logits(self, features: dict[str, jax.Array], boxes: jax.Array,
                        canvas_hw: tuple[int, int]) -> jax.Array:
        """Keypoint branch on boxes [B, R, 4] (xyxy canvas pixels) -> heatmap logits [B, R, K, 56, 56] float32."""
        cfg = self.keypoint_config
        return self.keypoint_head(self.pool(features, boxes, canvas_hw, cfg.pooler_resolution, cfg.sampling_ratio))

    def branch_losses(self, features, samples, batch, canvas_hw) -> dict[str, jax.Array]:
        """``loss_keypoint`` (torchvision ``keypointrcnn_loss``) on the first ``roi_heads.num_positives`` sampled
        RoIs of each image (the positives come first), counting those with ``labels > 0``."""
        n = min(self.roi_heads.num_positives, samples["rois"].shape[1])
        rois = samples["rois"][:, :n]
        positive = samples["valid"][:, :n] & (samples["labels"][:, :n] > 0)
        matched = samples["matched_idxs"][:, :n]
        gt = jnp.take_along_axis(batch["gt_keypoints"], matched[:, :, None, None], axis=1)   # [B, n, K, 3]
        logits = self.keypoint_logits(features, rois, canvas_hw)
        return {"loss_keypoint": keypoint_rcnn_loss(logits, rois, gt, positive)}

    def branch_outputs(self, features, detections, canvas_hw) -> dict[str, jax.Array]:
        """``keypoints`` [B, D, K, 3] float32 (x, y, score) of the final detections (canvas pixels)."""
        cfg = self.keypoint_config
        boxes = detections["boxes"]
        b, d = boxes.shape[:2]
        n = d if cfg.max_detections_test <= 0 else min(cfg.max_detections_test, d)
        logits = self.keypoint_logits(features, boxes[:, :n], canvas_hw)                    # [B, n, K, S, S]
        k, s = logits.shape[2], logits.shape[-1]
        kps, exact = heatmaps_to_keypoints(logits.reshape(b * n, k, s, s), boxes[:, :n].reshape(b * n, 4),
                                           canvas_hw, cfg.num_candidates)
        kps = kps.reshape(b, n, k, 3)
        self.sow("intermediates", "keypoints_exact", exact.reshape(b, n, k))
        kps = jnp.where(detections["valid"][:, :n, None, None], kps, 0.0)
        if n < d:
            kps = jnp.concatenate([kps, jnp.zeros((b, d - n, k, 3), kps.dtype)], axis=1)
        return {"keypoints": kps}


def build_keypoint_rcnn(mcfg, num_classes: int) -> KeypointRCNN:
    """``config.model`` (see ``configs/keypoint_rcnn.py``) -> :class:`KeypointRCNN` (``model.keypoint_head``
    section)."""
    return KeypointRCNN(**rcnn_kwargs(mcfg, num_classes),
                        keypoint_config=kp_lib.KeypointHeadConfig(
                            **config_fields(kp_lib.KeypointHeadConfig, mcfg.keypoint_head)))
