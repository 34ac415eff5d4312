"""Keypoint R-CNN keypoint head (He et al., "Mask R-CNN", ICCV 2017), static shapes.

Semantics of torchvision ``torchvision/models/detection/keypoint_rcnn.py`` (``KeypointRCNNHeads``,
``KeypointRCNNPredictor``): eight 3x3 convs (512) + ReLU on the 14x14 RoI features, a 4x4 stride-2 transposed
conv (padding 1) to K channels (28x28) and a bilinear x2 upsampling (``align_corners=False``) to 56x56 heatmap
logits. Arrays are NHWC inside; :func:`KeypointRCNNHead.__call__` returns torchvision's heatmap layout
``[..., K, 56, 56]`` for :mod:`jaxdet.ops.keypoints`.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.modeling.conv import Conv, ConvTranspose
from jaxdet.ops.boxes import mul_no_fma
from jaxdet.ops.keypoints import DEFAULT_NUM_CANDIDATES


@dataclasses.dataclass(frozen=True)
class KeypointHeadConfig:
    """Hyper-parameters of the keypoint branch; names as in jaxdet configs (``config.model.keypoint_head``).

    The keypoint RoIAlign uses ``roi_heads.pooler_aligned`` like the box head.

    Attributes:
      num_keypoints: K (17 for COCO persons).
      pooler_resolution: RoIAlign output side (14); the heatmaps are ``4 * pooler_resolution`` (56).
      sampling_ratio: RoIAlign samples per bin and axis (2).
      conv_dims: output channels of the 3x3 convs ((512,) * 8).
      max_detections_test: inference runs the keypoint head on the first (best-scored) this many detections
        only; the others get zero keypoints. 0 = all ``roi_heads.detections_per_image`` (torchvision). The head
        costs ~7 GFLOP per detection; COCO keypoint AP counts the best 20 detections per image (maxDets 20).
      num_candidates: heatmap cells evaluated exactly per keypoint when decoding the argmax
        (:func:`jaxdet.ops.keypoints.heatmaps_to_keypoints`).
    """

    num_keypoints: int = 17
    pooler_resolution: int = 14
    sampling_ratio: int = 2
    conv_dims: tuple = (512,) * 8
    max_detections_test: int = 0
    num_candidates: int = DEFAULT_NUM_CANDIDATES

    @property
    def heatmap_size(self) -> int:
        """Side of the predicted heatmaps (the transposed conv and the upsampling each double the pool)."""
        return 4 * self.pooler_resolution


# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0. For the transposed conv torch's
# "fan_out" is weight.size(0) * 16 = in_channels * 16, i.e. flax's fan_in of the (kh, kw, in, out) kernel.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_KAIMING_DECONV = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _linear_2x_taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's source indices and lambdas of a x2 linear resize (align_corners=False, scale 1/2) of n
    samples: ``src = max(0.5 * (o + 0.5) - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, n - 1)``,
    ``l1 = src - i0``, ``l0 = 1 - l1`` (all exact)."""
    o = np.arange(2 * n)
    src = np.maximum(0.5 * (o + 0.5) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int32)
    i1 = np.minimum(i0 + 1, n - 1).astype(np.int32)
    l1 = (src - i0).astype(np.float32)
    return i0, i1, (1.0 - l1).astype(np.float32), l1


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling, ``align_corners=False``, of NHWC ``x`` [N, H, W, C] -> [N, 2H, 2W, C].

    ``torch.nn.functional.interpolate(scale_factor=2, mode="bilinear", align_corners=False)``: output row
    ``2i`` is ``0.25 x[i - 1] + 0.75 x[i]`` (row 0: ``x[0]``), row ``2i + 1`` is ``0.75 x[i] + 0.25 x[i + 1]``
    (last: ``x[n - 1]``), the same along columns, as PyTorch's 4-tap sum with weights ``h_lambda * w_lambda``
    (exact in float32), accumulated in the order of its vectorised channels-last kernel
    (``fma(i00, w00, fma(i01, w01, fma(i11, w11, i10 * w10)))``; float rounding aside, any order is the same).
    """
    n, h, w, c = x.shape
    iy0, iy1, ly0, ly1 = _linear_2x_taps(h)
    ix0, ix1, lx0, lx1 = _linear_2x_taps(w)
    r0, r1 = x[:, iy0], x[:, iy1]                                           # [N, 2H, W, C]
    x00, x01, x10, x11 = r0[:, :, ix0], r0[:, :, ix1], r1[:, :, ix0], r1[:, :, ix1]
    wt = lambda ly, lx: jnp.asarray(np.outer(ly, lx), jnp.float32)[None, :, :, None]
    acc = mul_no_fma(x10, wt(ly1, lx0))
    acc = x11 * wt(ly1, lx1) + acc
    acc = x01 * wt(ly0, lx1) + acc
    return x00 * wt(ly0, lx0) + acc


class KeypointRCNNHead(nn.Module):
    """KeypointRCNNHeads (3x3 conv + ReLU per ``conv_dims`` entry) + KeypointRCNNPredictor (4x4 stride-2
    transposed conv, padding 1, to K channels; bilinear x2 upsampling).

    Parameters: ``conv_fcn1..N`` (torchvision ``keypoint_head.{0,2,...}``) and ``kps_score_lowres``, a flax
    ``ConvTranspose`` (kernel [4, 4, in, K], explicit padding 2 on the stride-dilated input, not
    ``transpose_kernel``): torchvision's ``ConvTranspose2d`` weight (in, K, kh, kw) equals it transposed to
    (kh, kw, in, K) *and flipped* in both spatial axes (see ``checkpoints_convert/torchvision_keypoint_rcnn.py``).

    Attributes:
      num_keypoints: K.
      conv_dims: channels of the 3x3 convs ((512,) * 8).
      dtype: compute dtype; the logits are returned in float32.
    """

    num_keypoints: int = 17
    conv_dims: tuple = (512,) * 8
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        """pooled [..., P, P, Cf] (P = 14) -> heatmap logits [..., K, 4P, 4P] float32."""
        lead, (p, _, cf) = pooled.shape[:-3], pooled.shape[-3:]
        x = pooled.reshape(-1, p, p, cf).astype(self.dtype)
        for i, dim in enumerate(self.conv_dims):
            x = nn.relu(Conv(dim, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_KAIMING_FAN_OUT,
                             dtype=self.dtype, name=f"conv_fcn{i + 1}")(x))
        x = ConvTranspose(self.num_keypoints, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          kernel_init=_KAIMING_DECONV, dtype=self.dtype, name="kps_score_lowres")(x)
        x = upsample_bilinear_2x(x.astype(jnp.float32))                       # [N, 4P, 4P, K]
        x = jnp.moveaxis(x, -1, -3)                                             # [N, K, 4P, 4P]
        return x.reshape(*lead, *x.shape[1:])
