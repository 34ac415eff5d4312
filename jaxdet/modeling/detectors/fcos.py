"""FCOS with a ResNet-FPN backbone (Tian et al., ICCV 2019).

Composition and semantics of torchvision ``torchvision/models/detection/fcos.py`` (``fcos_resnet50_fpn``):
ResNet C3..C5 -> FPN with ``LastLevelP6P7(256, 256)`` (P6 from P5) -> P3..P7 -> :class:`FCOSHead` on every
level, one anchor point per location (``AnchorGenerator`` sizes 8, 16, 32, 64, 128, aspect 1). Every shape is
static (DESIGN.md): a batch in the data contract compiles once per canvas.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling.components import build_fpn, build_resnet, config_fields, dtype_from_name
from jaxdet.modeling.heads import fcos as fcos_lib
from jaxdet.modeling.preprocess import normalize_images
from jaxdet.ops import anchors as anchor_ops

BACKBONE_LEVELS = ("C3", "C4", "C5")
HEAD_LEVELS = ("P3", "P4", "P5", "P6", "P7")


class FCOS(nn.Module):
    """FCOS over an FPN backbone.

    Attributes:
      backbone: module mapping normalised images [B, H, W, 3] (and ``train``) to a dict of C-features
        (C3..C5 are used).
      neck: module mapping ``{"C3", "C4", "C5"}`` to ``{"P3": ..., "P7": ...}`` (FPN with the P6/P7 block).
      num_classes: foreground classes C.
      anchor_sizes: per level P3..P7, the anchor size in pixels (``((8,), (16,), (32,), (64,), (128,))``); one
        square anchor per location.
      fcos: :class:`~jaxdet.modeling.heads.fcos.FCOSConfig`.
      pixel_mean, pixel_std: normalisation in the input channel order (0..255 units).
      dtype: compute dtype; parameters stay float32.

    Call ``model.apply(variables, batch, train=...)`` with a batch in the DESIGN.md contract (``image``
    [B, H, W, 3] uint8, ``image_size`` [B, 2]; training adds ``gt_boxes``, ``gt_classes``, ``gt_valid``,
    ``gt_is_crowd``; crowd boxes are never positives). Training returns ``loss_cls``, ``loss_box_reg`` and
    ``loss_centerness`` (float32 scalars); inference returns ``boxes`` [B, D, 4] (xyxy canvas pixels), ``scores``
    [B, D], ``classes`` [B, D] int32 (contiguous), ``valid`` [B, D] with D = ``fcos.detections_per_image``.
    With ``mutable=["intermediates"]`` the FPN features are sown as ``features`` (and, at inference, the head
    outputs as ``head_outputs``, see :meth:`detect`).
    """

    backbone: nn.Module
    neck: nn.Module
    num_classes: int
    anchor_sizes: Sequence[Sequence[int]] = ((8,), (16,), (32,), (64,), (128,))
    fcos: fcos_lib.FCOSConfig = fcos_lib.FCOSConfig()
    pixel_mean: Sequence[float] = (123.675, 116.28, 103.53)
    pixel_std: Sequence[float] = (58.395, 57.12, 57.375)
    dtype: Any = jnp.float32

    def setup(self):
        self.head = fcos_lib.FCOSHead(num_classes=self.num_classes, num_convs=self.fcos.num_convs,
                                      norm=self.fcos.head_norm, prior_prob=self.fcos.prior_prob, dtype=self.dtype)

    def extract_features(self, batch: dict, train: bool) -> dict[str, jax.Array]:
        """Normalise the canvas and run backbone + FPN. Returns ``{"P3": [B, H/8, W/8, F], ..., "P7": ...}``."""
        x = normalize_images(batch["image"], batch["image_size"], self.pixel_mean, self.pixel_std, self.dtype)
        c = self.backbone(x, train=train)
        return self.neck({k: c[k] for k in BACKBONE_LEVELS})

    def anchors(self, canvas_hw: tuple[int, int], features: dict[str, jax.Array]) -> list[jax.Array]:
        """Anchors per level P3..P7, [H_l * W_l, 4] float32 xyxy canvas pixels (constants of the shapes); the
        stride of a level is ``canvas // feature size`` per axis, as torchvision's ``AnchorGenerator``."""
        shapes = [features[k].shape[1:3] for k in HEAD_LEVELS]
        strides = [(canvas_hw[0] // h, canvas_hw[1] // w) for h, w in shapes]
        return [jnp.asarray(a, jnp.float32) for a in
                anchor_ops.multilevel_anchors(shapes, strides, self.anchor_sizes, (1.0,))]

    def initialize(self, batch: dict) -> None:
        """Creates every variable (``model.init(rngs, batch, method=FCOS.initialize)``) without compiling the
        matching, losses or post-processing."""
        features = self.extract_features(batch, train=False)
        self.head([features[k] for k in HEAD_LEVELS])

    def detect(self, features: dict[str, jax.Array], image_size: jax.Array,
               canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Head + post-processing on given features ``{"P3": [B, H/8, W/8, F], ...}`` -> detections (see the class
        docstring); ``image_size`` [B, 2] int32. Sows the head outputs as ``head_outputs`` (per-level lists of
        ``cls_logits`` [B, P_l, C], ``bbox_reg`` [B, P_l, 4], ``ctrness`` [B, P_l]) into ``intermediates``."""
        cls_logits, bbox_reg, ctrness = self.head([features[k] for k in HEAD_LEVELS])
        self.sow("intermediates", "head_outputs", (cls_logits, bbox_reg, ctrness))
        anchors = self.anchors(canvas_hw, features)
        return jax.vmap(lambda c, r, t, s: fcos_lib.postprocess_detections(c, r, t, anchors, s, self.fcos))(
            cls_logits, bbox_reg, ctrness, image_size)

    def __call__(self, batch: dict, train: bool = False) -> dict[str, jax.Array]:
        canvas_hw = tuple(batch["image"].shape[1:3])
        features = self.extract_features(batch, train)
        self.sow("intermediates", "features", features)
        if not train:
            return self.detect(features, batch["image_size"], canvas_hw)

        cls_logits, bbox_reg, ctrness = self.head([features[k] for k in HEAD_LEVELS])
        anchors = self.anchors(canvas_hw, features)
        all_anchors = jnp.concatenate(anchors, axis=0)
        sizes = [a.shape[0] for a in anchors]
        gt_valid = batch["gt_valid"] & ~batch["gt_is_crowd"]
        matched = jax.vmap(lambda b, v: fcos_lib.fcos_match(all_anchors, sizes, b, v,
                                                            self.fcos.center_sampling_radius))(
            batch["gt_boxes"].astype(jnp.float32), gt_valid)
        return fcos_lib.fcos_losses(jnp.concatenate(cls_logits, axis=1), jnp.concatenate(bbox_reg, axis=1),
                                    jnp.concatenate(ctrness, axis=1), all_anchors, matched, batch["gt_boxes"],
                                    batch["gt_classes"], self.fcos)


def build_fcos(mcfg, num_classes: int) -> FCOS:
    """``config.model`` (see ``configs/fcos.py``) -> :class:`FCOS`.

    Reads ``backbone``, ``fpn`` (``out_channels``, ``p6p7_in``: ``"P5"`` for torchvision's FCOS), ``anchor.sizes``
    (one size per level P3..P7), ``fcos`` (:class:`~jaxdet.modeling.heads.fcos.FCOSConfig` fields), ``pixel_mean``,
    ``pixel_std`` and ``dtype``.

    Raises:
      ValueError: ``anchor.sizes`` without exactly 5 levels of one size, or ``anchor.aspect_ratios`` other than (1.0,).
    """
    dtype = dtype_from_name(mcfg.dtype)
    sizes = tuple(tuple(s) for s in mcfg.anchor.sizes)
    if len(sizes) != len(HEAD_LEVELS) or any(len(s) != 1 for s in sizes):
        raise ValueError(f"FCOS needs one anchor size per level {HEAD_LEVELS}, got model.anchor.sizes={sizes}")
    if tuple(mcfg.anchor.aspect_ratios) != (1.0,):
        raise ValueError(f"FCOS uses one square anchor per location: model.anchor.aspect_ratios must be (1.0,), "
                         f"got {tuple(mcfg.anchor.aspect_ratios)}")
    return FCOS(
        backbone=build_resnet(mcfg.backbone, dtype),
        neck=build_fpn(mcfg, dtype, "p6p7").clone(p6p7_in=mcfg.fpn.get("p6p7_in", "P5")),
        num_classes=num_classes,
        anchor_sizes=sizes,
        fcos=fcos_lib.FCOSConfig(**config_fields(fcos_lib.FCOSConfig, mcfg.fcos)),
        pixel_mean=tuple(mcfg.pixel_mean),
        pixel_std=tuple(mcfg.pixel_std),
        dtype=dtype,
    )
