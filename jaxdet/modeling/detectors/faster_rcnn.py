"""Faster R-CNN with FPN (Ren et al. 2015; Lin et al., "Feature Pyramid Networks", CVPR 2017).

Composition and semantics of torchvision ``torchvision/models/detection/faster_rcnn.py``
(``fasterrcnn_resnet50_fpn``): backbone -> FPN (P2..P6) -> RPN -> MultiScaleRoIAlign on P2..P5 ->
TwoMLPHead -> FastRCNNPredictor. Every shape is static (see DESIGN.md): a batch in the data contract
compiles once per canvas.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling.heads import roi_heads as roi_lib
from jaxdet.modeling.heads import rpn as rpn_lib
from jaxdet.modeling.preprocess import normalize_images
from jaxdet.ops import anchors as anchor_ops
from jaxdet.ops.roi_align import multilevel_roi_align

RPN_LEVELS = ("P2", "P3", "P4", "P5", "P6")
ROI_LEVELS = ("P2", "P3", "P4", "P5")


class FasterRCNN(nn.Module):
    """Faster R-CNN over an FPN backbone.

    Attributes:
      backbone: module mapping normalised images [B, H, W, 3] (and ``train``) to a dict of C-features.
      neck: module mapping that dict to ``{"P2": ..., "P6": ...}`` (FPN with the max-pool P6).
      num_classes: foreground classes C.
      anchor_sizes: per level, anchor sizes in pixels (``((32,), (64,), (128,), (256,), (512,))``).
      aspect_ratios: anchor aspect ratios h/w (0.5, 1, 2).
      rpn: :class:`~jaxdet.modeling.heads.rpn.RPNConfig`.
      roi_heads: :class:`~jaxdet.modeling.heads.roi_heads.RoIHeadsConfig`.
      pixel_mean, pixel_std: normalisation in the input channel order (0..255 units).
      dtype: compute dtype; parameters stay float32.

    Call ``model.apply(variables, batch, train=...)`` with a batch in the DESIGN.md contract
    (``image`` [B, H, W, 3], ``image_size`` [B, 2]; training adds ``gt_boxes``, ``gt_classes``, ``gt_valid``,
    ``gt_is_crowd`` and an rng stream named ``"sampling"``). Training returns a dict of scalar losses
    (``loss_rpn_cls``, ``loss_rpn_reg``, ``loss_cls``, ``loss_box_reg``); inference returns ``boxes``
    [B, D, 4] (xyxy canvas pixels), ``scores`` [B, D], ``classes`` [B, D] int32 (contiguous), ``valid`` [B, D].
    With ``mutable=["intermediates"]`` the FPN features and RPN proposals are sown for inspection.
    """

    backbone: nn.Module
    neck: nn.Module
    num_classes: int
    anchor_sizes: Sequence[Sequence[int]] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    rpn: rpn_lib.RPNConfig = rpn_lib.RPNConfig()
    roi_heads: roi_lib.RoIHeadsConfig = roi_lib.RoIHeadsConfig()
    pixel_mean: Sequence[float] = (123.675, 116.28, 103.53)
    pixel_std: Sequence[float] = (58.395, 57.12, 57.375)
    dtype: Any = jnp.float32

    def setup(self):
        num_anchors = len(self.aspect_ratios) * len(self.anchor_sizes[0])
        self.rpn_head = rpn_lib.RPNHead(num_anchors=num_anchors, dtype=self.dtype)
        self.box_head = self.make_box_head()
        self.setup_branches()

    def setup_branches(self) -> None:
        """Creates the extra RoI branches of a subclass (mask head, keypoint head); none here."""

    def make_box_head(self) -> nn.Module:
        """The box head: pooled RoI features [B, R, S, S, C] -> (class logits [B, R, C+1], deltas
        [B, R, C+1, 4]). Override in a subclass to try another head (see scripts/custom_box_head.py)."""
        return roi_lib.FastRCNNHead(num_classes=self.num_classes, fc_dim=self.roi_heads.fc_dim, dtype=self.dtype)

    def extract_features(self, batch: dict, train: bool) -> dict[str, jax.Array]:
        """Normalise the canvas and run backbone + FPN. Returns ``{"P2": [B, H/4, W/4, C], ...}``."""
        x = normalize_images(batch["image"], batch["image_size"], self.pixel_mean, self.pixel_std, self.dtype)
        return self.neck(self.backbone(x, train=train))

    def anchors(self, canvas_hw: tuple[int, int], features: dict[str, jax.Array]) -> list[jax.Array]:
        """Anchors per RPN level, [H_l * W_l * A, 4] float32 xyxy canvas pixels (constants of the shapes)."""
        shapes = [features[k].shape[1:3] for k in RPN_LEVELS]
        strides = [(canvas_hw[0] // h, canvas_hw[1] // w) for h, w in shapes]
        return [jnp.asarray(a, jnp.float32) for a in
                anchor_ops.multilevel_anchors(shapes, strides, self.anchor_sizes, self.aspect_ratios)]

    def pool(self, features: dict[str, jax.Array], rois: jax.Array, canvas_hw: tuple[int, int],
             resolution: int | None = None, sampling_ratio: int | None = None) -> jax.Array:
        """MultiScaleRoIAlign over P2..P5: rois [B, R, 4] -> [B, R, S, S, C]. ``resolution`` (S) and
        ``sampling_ratio`` default to the box head's (``roi_heads.pooler_*``); the mask branch passes its own."""
        feats = [features[k] for k in ROI_LEVELS]
        strides = [canvas_hw[0] // f.shape[1] for f in feats]
        s = self.roi_heads.pooler_resolution if resolution is None else resolution
        ratio = self.roi_heads.pooler_sampling_ratio if sampling_ratio is None else sampling_ratio
        return multilevel_roi_align(feats, rois, strides, (s, s), ratio, self.roi_heads.pooler_aligned)

    def initialize(self, batch: dict) -> None:
        """Creates every variable by running each submodule once, skipping the parameter-free parts
        (proposals, NMS, RoIAlign): ``model.init(rngs, batch, method=FasterRCNN.initialize)`` gives the
        same variables as ``model.init(rngs, batch)`` with a fraction of the compilation."""
        features = self.extract_features(batch, train=False)
        self.rpn_head([features[k] for k in RPN_LEVELS])
        s = self.roi_heads.pooler_resolution
        self.box_head(jnp.zeros((batch["image"].shape[0], 1, s, s, features["P2"].shape[-1]), self.dtype))
        self.initialize_branches(features)

    def initialize_branches(self, features: dict[str, jax.Array]) -> None:
        """Runs each extra RoI branch once on dummy RoIs so its variables exist (see :meth:`initialize`)."""

    def branch_losses(self, features: dict[str, jax.Array], samples: dict[str, jax.Array], batch: dict,
                      canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Losses of the extra RoI branches (mask, keypoint) on the sampled training RoIs.

        Args:
          features: ``{"P2": [B, H/4, W/4, C], ...}``.
          samples: output of :func:`~jaxdet.modeling.heads.roi_heads.sample_rois` vmapped over the batch:
            ``rois`` [B, S, 4], ``labels`` [B, S] (0 background, c + 1 foreground), ``matched_idxs`` [B, S]
            int32 (ground-truth slot of each RoI), ``valid`` [B, S]; positives come first, at most
            ``roi_heads.num_positives`` of them.
          batch: the training batch (``gt_masks``, ``gt_keypoints`` ... as DESIGN.md section 2).
        Returns:
          a dict of scalar losses (none here).
        """
        return {}

    def branch_outputs(self, features: dict[str, jax.Array], detections: dict[str, jax.Array],
                       canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Extra inference outputs (``masks`` [B, D, 28, 28], ``keypoints`` [B, D, K, 3] ...) for the final
        detections (``boxes`` [B, D, 4] canvas pixels, ``classes``, ``valid``); none here."""
        return {}

    def __call__(self, batch: dict, train: bool = False) -> dict[str, jax.Array]:
        canvas_hw = tuple(batch["image"].shape[1:3])
        features = self.extract_features(batch, train)
        self.sow("intermediates", "features", features)
        logits, deltas = self.rpn_head([features[k] for k in RPN_LEVELS])
        anchors = self.anchors(canvas_hw, features)
        proposals, _, prop_valid = rpn_lib.rpn_proposals(logits, deltas, anchors, batch["image_size"], self.rpn,
                                                         train)
        self.sow("intermediates", "proposals", (proposals, prop_valid))
        if not train:
            return self.detect(features, proposals, prop_valid, batch["image_size"], canvas_hw)

        gt_valid = batch["gt_valid"] & ~batch["gt_is_crowd"]
        key_rpn, key_roi = jax.random.split(self.make_rng("sampling"))
        out = rpn_lib.rpn_losses(jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1),
                                 jnp.concatenate(anchors, axis=0), batch["gt_boxes"], gt_valid, key_rpn, self.rpn)
        keys = jax.random.split(key_roi, proposals.shape[0])
        samples = jax.vmap(lambda p, pv, gb, gc, gv, k: roi_lib.sample_rois(p, pv, gb, gc, gv, k, self.roi_heads))(
            proposals, prop_valid, batch["gt_boxes"], batch["gt_classes"], gt_valid, keys)
        cls_logits, box_deltas = self.box_head(self.pool(features, samples["rois"], canvas_hw))
        out.update(roi_lib.fast_rcnn_losses(cls_logits, box_deltas, samples["labels"],
                                            samples["regression_targets"], samples["valid"], self.roi_heads))
        out.update(self.branch_losses(features, samples, batch, canvas_hw))
        return out

    def detect(self, features, proposals, prop_valid, image_size, canvas_hw) -> dict[str, jax.Array]:
        """Box head + post-processing on given proposals [B, P, 4] -> detections (see class docstring)."""
        cls_logits, box_deltas = self.box_head(self.pool(features, proposals, canvas_hw))
        detections = jax.vmap(
            lambda l, d, p, v, s: roi_lib.postprocess_detections(l, d, p, v, s, self.roi_heads))(
            cls_logits, box_deltas, proposals, prop_valid, image_size)
        detections.update(self.branch_outputs(features, detections, canvas_hw))
        return detections
