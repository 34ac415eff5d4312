"""RetinaNet with FPN (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Composition and semantics of torchvision ``torchvision/models/detection/retinanet.py`` (``retinanet_resnet50_fpn``,
v1): ResNet C3..C5 -> FPN P3..P5 + ``LastLevelP6P7`` from P5 -> ``RetinaNetHead`` on P3..P7 with 9 anchors per
location (sizes ``(s, int(s * 2**(1/3)), int(s * 2**(2/3)))`` for s = 32..512, ratios 0.5, 1, 2). Every shape is
static (DESIGN.md): a batch in the data contract compiles once per canvas.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling.components import build_fpn, build_resnet, config_fields, dtype_from_name
from jaxdet.modeling.heads import retinanet as head_lib
from jaxdet.modeling.preprocess import normalize_images
from jaxdet.ops import anchors as anchor_ops

LEVELS = ("P3", "P4", "P5", "P6", "P7")
BACKBONE_FEATURES = ("C3", "C4", "C5")
#: torchvision ``_default_anchorgen``: ``tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in 32..512)``.
DEFAULT_ANCHOR_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))


class RetinaNet(nn.Module):
    """RetinaNet over an FPN backbone.

    Attributes:
      backbone: module mapping normalised images [B, H, W, 3] (and ``train``) to ``{"C3", "C4", "C5"}``.
      neck: module mapping that dict to ``{"P3": ..., "P7": ...}`` (FPN with the ``p6p7`` top block).
      num_classes: foreground classes C (one sigmoid output each).
      anchor_sizes: per level P3..P7, anchor sizes in pixels (:data:`DEFAULT_ANCHOR_SIZES`).
      aspect_ratios: anchor aspect ratios h/w (0.5, 1, 2).
      retinanet: :class:`~jaxdet.modeling.heads.retinanet.RetinaNetConfig`.
      pixel_mean, pixel_std: normalisation in the input channel order (0..255 units).
      dtype: compute dtype; parameters stay float32.

    Call ``model.apply(variables, batch, train=...)`` with a batch in the DESIGN.md contract (``image`` [B, H, W, 3],
    ``image_size`` [B, 2]; training adds ``gt_boxes``, ``gt_classes``, ``gt_valid``, ``gt_is_crowd``; no rng is
    needed). Training returns ``{"loss_cls", "loss_box_reg"}`` float32 scalars; inference returns ``boxes``
    [B, D, 4] (xyxy canvas pixels), ``scores`` [B, D], ``classes`` [B, D] int32 (contiguous), ``valid`` [B, D]
    with D = ``retinanet.detections_per_image`` (300). With ``mutable=["intermediates"]`` the FPN features are
    sown as ``features``.
    """

    backbone: nn.Module
    neck: nn.Module
    num_classes: int
    anchor_sizes: Sequence[Sequence[int]] = DEFAULT_ANCHOR_SIZES
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    retinanet: head_lib.RetinaNetConfig = head_lib.RetinaNetConfig()
    pixel_mean: Sequence[float] = (123.675, 116.28, 103.53)
    pixel_std: Sequence[float] = (58.395, 57.12, 57.375)
    dtype: Any = jnp.float32

    def setup(self):
        sizes = {len(s) for s in self.anchor_sizes}
        if len(self.anchor_sizes) != len(LEVELS) or len(sizes) != 1:
            raise ValueError(f"anchor_sizes must give the same number of sizes for each of {LEVELS}, "
                             f"got {self.anchor_sizes!r}")
        self.head = head_lib.RetinaNetHead(
            num_anchors=len(self.aspect_ratios) * sizes.pop(), num_classes=self.num_classes,
            num_convs=self.retinanet.num_convs, prior_prob=self.retinanet.prior_prob, dtype=self.dtype)

    def extract_features(self, batch: dict, train: bool) -> dict[str, jax.Array]:
        """Normalise the canvas and run backbone + FPN. Returns ``{"P3": [B, H/8, W/8, F], ..., "P7": ...}``."""
        x = normalize_images(batch["image"], batch["image_size"], self.pixel_mean, self.pixel_std, self.dtype)
        feats = self.backbone(x, train=train)
        return self.neck({k: feats[k] for k in BACKBONE_FEATURES})

    def anchors(self, canvas_hw: tuple[int, int], features: dict[str, jax.Array]) -> list[jax.Array]:
        """Anchors per level, [H_l * W_l * A, 4] float32 xyxy canvas pixels (constants of the shapes); strides are
        ``canvas // feature size`` per axis as torchvision's ``AnchorGenerator`` (e.g. (114, 120) for P7 of an
        800x1088 canvas)."""
        shapes = [features[k].shape[1:3] for k in LEVELS]
        strides = [(canvas_hw[0] // h, canvas_hw[1] // w) for h, w in shapes]
        return [jnp.asarray(a, jnp.float32) for a in
                anchor_ops.multilevel_anchors(shapes, strides, self.anchor_sizes, self.aspect_ratios)]

    def initialize(self, batch: dict) -> None:
        """Creates every variable by running backbone, FPN and head once: ``model.init(rngs, batch,
        method=RetinaNet.initialize)`` gives the same variables as ``model.init(rngs, batch)``, cheaper."""
        features = self.extract_features(batch, train=False)
        self.head([features[k] for k in LEVELS])

    def __call__(self, batch: dict, train: bool = False) -> dict[str, jax.Array]:
        canvas_hw = tuple(batch["image"].shape[1:3])
        features = self.extract_features(batch, train)
        self.sow("intermediates", "features", features)
        logits, deltas = self.head([features[k] for k in LEVELS])
        anchors = self.anchors(canvas_hw, features)
        if not train:
            return self.detect(logits, deltas, anchors, batch["image_size"])
        gt_valid = batch["gt_valid"] & ~batch["gt_is_crowd"]
        return head_lib.retinanet_losses(jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1),
                                         jnp.concatenate(anchors, axis=0), batch["gt_boxes"], batch["gt_classes"],
                                         gt_valid, self.retinanet)

    def detect(self, logits: Sequence[jax.Array], deltas: Sequence[jax.Array], anchors: Sequence[jax.Array],
               image_size: jax.Array) -> dict[str, jax.Array]:
        """Post-processing of head outputs (per level [B, N_l, C] logits, [B, N_l, 4] deltas; anchors [N_l, 4])
        -> detections (see the class docstring)."""
        return jax.vmap(lambda l, d, s: head_lib.postprocess_detections(l, d, anchors, s, self.retinanet))(
            list(logits), list(deltas), image_size)


def build_retinanet(mcfg, num_classes: int) -> RetinaNet:
    """``config.model`` (see ``configs/retinanet.py``) -> :class:`RetinaNet`.

    Reads ``model.backbone`` (ResNet returning C3..C5), ``model.fpn`` (P6/P7 from ``model.fpn.p6p7_in``, default
    ``"P5"`` as torchvision v1), ``model.anchor``, ``model.retinanet``, pixel mean/std and dtype.
    """
    dtype = dtype_from_name(mcfg.dtype)
    fpn = build_fpn(mcfg, dtype, "p6p7").clone(p6p7_in=mcfg.fpn.get("p6p7_in", "P5"))
    return RetinaNet(
        backbone=build_resnet(mcfg.backbone, dtype).clone(out_features=BACKBONE_FEATURES),
        neck=fpn,
        num_classes=num_classes,
        anchor_sizes=tuple(tuple(s) for s in mcfg.anchor.sizes),
        aspect_ratios=tuple(mcfg.anchor.aspect_ratios),
        retinanet=head_lib.RetinaNetConfig(**config_fields(head_lib.RetinaNetConfig, mcfg.retinanet)),
        pixel_mean=tuple(mcfg.pixel_mean),
        pixel_std=tuple(mcfg.pixel_std),
        dtype=dtype,
    )
