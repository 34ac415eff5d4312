"""Mask R-CNN mask head (He et al., "Mask R-CNN", ICCV 2017), static shapes.

Semantics of torchvision ``torchvision/models/detection/mask_rcnn.py`` (``MaskRCNNHeads`` v1 without norm,
``MaskRCNNPredictor``) and ``roi_heads.py`` (``maskrcnn_loss``, ``maskrcnn_inference``). Class channel 0 is
background; dataset-contiguous class ``c`` is channel ``c + 1``. Arrays are NHWC.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling import losses
from jaxdet.modeling.conv import Conv, ConvTranspose


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig:
    """Hyper-parameters of the mask branch; names as in jaxdet configs (``config.model.mask_head``).

    The mask RoIAlign uses ``roi_heads.pooler_aligned`` like the box head; the predicted masks are
    ``2 * pooler_resolution`` square (28).
    """

    pooler_resolution: int = 14
    sampling_ratio: int = 2
    conv_dim: int = 256
    num_convs: int = 4
    #: positives per image given to the mask head in training; 0 = all ``roi_heads.num_positives`` (torchvision).
    #: A smaller cap takes a random subset (the sampler's positives come in random order) and cuts the head's cost.
    max_train_rois: int = 0

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks and of their training targets (the transposed conv doubles the pool)."""
        return 2 * self.pooler_resolution


# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0, for every mask conv.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class MaskRCNNHead(nn.Module):
    """MaskRCNNHeads (``num_convs`` x [3x3 conv ``conv_dim`` + ReLU]) + MaskRCNNPredictor (2x2 stride-2
    transposed conv + ReLU, 1x1 conv to C + 1 class channels).

    Parameter names follow torchvision's pre-0.13 / detectron2 names: ``mask_fcn1..N``, ``conv5_mask``,
    ``mask_fcn_logits``. ``conv5_mask`` is a flax-compatible ``ConvTranspose`` (jaxdet.modeling.conv; kernel
    [2, 2, in, out], not ``transpose_kernel``): torchvision's ``ConvTranspose2d`` weight (in, out, kh, kw) equals it transposed to
    (kh, kw, in, out) *and flipped* in both spatial axes (see ``checkpoints_convert/torchvision_mask_rcnn.py``).

    Attributes:
      num_classes: foreground classes C.
      conv_dim: channels of the convs and of the transposed conv (256).
      num_convs: 3x3 convs (4).
      dtype: compute dtype; the logits are returned in float32.
    """

    num_classes: int
    conv_dim: int = 256
    num_convs: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        """pooled [B, R, P, P, Cf] (P = 14) -> mask logits [B, R, 2P, 2P, C+1] float32."""
        b, r, p, _, cf = pooled.shape
        x = pooled.reshape(b * r, p, p, cf).astype(self.dtype)
        for i in range(self.num_convs):
            x = nn.relu(Conv(self.conv_dim, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_KAIMING_FAN_OUT,
                             dtype=self.dtype, name=f"mask_fcn{i + 1}")(x))
        x = nn.relu(ConvTranspose(self.conv_dim, (2, 2), strides=(2, 2), padding="VALID",
                                  kernel_init=_KAIMING_FAN_OUT, dtype=self.dtype, name="conv5_mask")(x))
        x = Conv(self.num_classes + 1, (1, 1), kernel_init=_KAIMING_FAN_OUT, dtype=self.dtype,
                 name="mask_fcn_logits")(x)
        return x.reshape(b, r, 2 * p, 2 * p, self.num_classes + 1).astype(jnp.float32)


def select_class(mask_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """mask_logits [..., S, S, C+1], labels [...] int32 in 0..C (channel index) -> [..., S, S]."""
    idx = jnp.clip(labels.astype(jnp.int32), 0, mask_logits.shape[-1] - 1)[..., None, None, None]
    return jnp.take_along_axis(mask_logits, idx, axis=-1)[..., 0]


def mask_rcnn_loss(mask_logits: jax.Array, labels: jax.Array, targets: jax.Array, positive: jax.Array) -> jax.Array:
    """torchvision ``maskrcnn_loss``: binary cross-entropy with logits of each positive RoI's ground-truth class
    channel against its target, averaged over all positive RoIs' pixels of the batch (0 without positives).

    Args:
      mask_logits: [B, P, S, S, C+1] float32.
      labels: [B, P] int32, 0 background, c + 1 foreground.
      targets: [B, P, S, S] float32 in [0, 1] (:func:`jaxdet.ops.masks.mask_targets`).
      positive: [B, P] bool, the RoIs that count.
    Returns:
      float32 scalar.
    """
    logits = select_class(mask_logits, labels)
    bce = losses.sigmoid_binary_cross_entropy(logits, targets).sum(axis=(-2, -1))
    denom = jnp.maximum(jnp.sum(positive), 1).astype(jnp.float32) * (targets.shape[-1] * targets.shape[-2])
    return jnp.sum(jnp.where(positive, bce, 0.0)) / denom


def mask_probabilities(mask_logits: jax.Array, classes: jax.Array, valid: jax.Array) -> jax.Array:
    """torchvision ``maskrcnn_inference``: sigmoid of the detected class's channel.

    Args:
      mask_logits: [B, D, S, S, C+1]; classes: [B, D] int32 contiguous 0..C-1; valid: [B, D] bool.
    Returns:
      [B, D, S, S] float32 probabilities, 0 for invalid detections.
    """
    probs = jax.nn.sigmoid(select_class(mask_logits, classes + 1))
    return jnp.where(valid[..., None, None], probs, 0.0).astype(jnp.float32)
