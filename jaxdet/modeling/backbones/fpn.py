"""Feature Pyramid Network (Lin et al., 2017) as a Flax linen module (NHWC, HWIO kernels).

Matches ``torchvision/ops/feature_pyramid_network.py``: ``FeaturePyramidNetwork`` with
``LastLevelMaxPool`` (Faster/Mask/Keypoint R-CNN: P6 = ``max_pool2d(P5, kernel 1, stride 2)``,
i.e. every other pixel) or ``LastLevelP6P7`` (RetinaNet/FCOS: P6 = conv3x3 s2 of C5 or P5,
P7 = conv3x3 s2 of relu(P6)). Normalisation inside the FPN convs (GN in some detectron2
configs, torchvision's ``norm_layer``) is not implemented: all convs are plain convs with bias.

Variable tree and the torchvision ``state_dict`` names (see
``checkpoints_convert/torchvision_backbone.py``), i indexing the input levels lowest first::

    inner_{i}/{kernel,bias}  <- fpn.inner_blocks.{i}.0.{weight,bias}   (1x1 lateral)
    layer_{i}/{kernel,bias}  <- fpn.layer_blocks.{i}.0.{weight,bias}   (3x3 output)
    p6/{kernel,bias}, p7/{kernel,bias} <- fpn.extra_blocks.p6/p7.*     (top_block='p6p7')
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.modeling.conv import Conv

__all__ = ["FPN", "nearest_resize_indices", "resize_nearest_to"]

Dtype = Any

# torch.nn.init.kaiming_uniform_(a=1) (torchvision FPN, detectron2 c2_xavier_fill): U(+-sqrt(3/fan_in)).
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def nearest_resize_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch ``F.interpolate(size=out_size, mode='nearest')`` along one axis.

    Reproduces ATen's ``nearest_idx`` (aten/src/ATen/native/UpSample.h): identity when sizes
    match, ``i >> 1`` for exact 2x, else ``min(floor(i * float32(in/out)), in - 1)`` in float32.
    Returns an int32 numpy array of length ``out_size`` (static: computed at trace time).
    """
    i = np.arange(out_size, dtype=np.int64)
    if out_size == in_size:
        return i.astype(np.int32)
    if out_size == 2 * in_size:
        return (i >> 1).astype(np.int32)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(i.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1).astype(np.int32)


def resize_nearest_to(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Nearest-neighbour resize of ``x [B,h,w,C]`` to ``[B,size[0],size[1],C]`` exactly as torch's
    ``F.interpolate(x, size=size, mode='nearest')`` (legacy 'nearest', not 'nearest-exact').
    Static shapes only; any dtype."""
    b, h, w, c = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (2 * h, 2 * w):
        # The FPN case (canvases are multiples of 32): a broadcast, whose gradient is a cheap sum.
        # A gather here would make the backward pass a scatter-add, which costs seconds on CPU.
        return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, out_h, out_w, c)
    rows = nearest_resize_indices(h, out_h)
    cols = nearest_resize_indices(w, out_w)
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


class FPN(nn.Module):
    """Feature Pyramid Network with an optional top block.

    Attributes:
      out_channels: channels of every output level (256).
      top_block: 'maxpool' (adds P{last+1} = P{last}[:, ::2, ::2], torchvision
        ``LastLevelMaxPool``), 'p6p7' (adds P{last+1}, P{last+2} by 3x3 stride-2 convs,
        torchvision ``LastLevelP6P7``), or None.
      p6p7_in: input of the 'p6p7' block: 'C5' (the last backbone feature; torchvision
        ``LastLevelP6P7(in != out)``, FCOS, RetinaNet v2, detectron2 RetinaNet) or 'P5' (the last
        FPN output; torchvision ``retinanet_resnet50_fpn`` v1 ``LastLevelP6P7(256, 256)``).
      dtype: compute dtype; parameters are float32.

    ``__call__(features)``:
      features: dict ``'C{k}' -> [B, H_k, W_k, C_k]`` for consecutive levels k (e.g. C2..C5,
        or C3..C5 for RetinaNet). Spatial sizes need not be exact halves: the top-down path
        resizes to each lateral's size with torch's nearest rule.
      Returns dict ``'P{k}' -> [B, H_k, W_k, out_channels]`` for the same levels plus the top
      block's (P6 for 'maxpool'; P6, P7 for 'p6p7'), sizes ceil(H/2) per extra level.

    The names ``inner_{i}``/``layer_{i}`` index the given levels from the lowest (i=0).

    Raises:
      ValueError: bad feature names, non-consecutive levels, unknown top_block/p6p7_in.
    """

    out_channels: int = 256
    top_block: Optional[str] = "maxpool"
    p6p7_in: str = "C5"
    dtype: Dtype = jnp.float32

    def _conv(self, kernel: int, stride: int, name: str) -> nn.Conv:
        pad = kernel // 2
        return Conv(
            self.out_channels,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=_fpn_init,
            bias_init=nn.initializers.zeros,
            name=name,
        )

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
        if self.top_block not in ("maxpool", "p6p7", None):
            raise ValueError(f"FPN top_block must be 'maxpool', 'p6p7' or None, got {self.top_block!r}")
        if self.p6p7_in not in ("C5", "P5"):
            raise ValueError(f"FPN p6p7_in must be 'C5' or 'P5', got {self.p6p7_in!r}")
        names = list(features.keys())
        if not names or any(len(n) < 2 or n[0] != "C" or not n[1:].isdigit() for n in names):
            raise ValueError(f"FPN expects features named 'C<level>' (e.g. C2..C5), got {names}")
        levels = sorted(int(n[1:]) for n in names)
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"FPN levels must be consecutive, got {['C%d' % l for l in levels]}")
        xs = [features[f"C{l}"] for l in levels]

        last_inner = self._conv(1, 1, f"inner_{len(xs) - 1}")(xs[-1].astype(self.dtype))
        results = [self._conv(3, 1, f"layer_{len(xs) - 1}")(last_inner)]
        for idx in range(len(xs) - 2, -1, -1):
            lateral = self._conv(1, 1, f"inner_{idx}")(xs[idx].astype(self.dtype))
            top_down = resize_nearest_to(last_inner, lateral.shape[1:3])
            last_inner = lateral + top_down
            results.insert(0, self._conv(3, 1, f"layer_{idx}")(last_inner))

        out = {f"P{l}": r for l, r in zip(levels, results)}
        top = levels[-1]
        if self.top_block == "maxpool":
            out[f"P{top + 1}"] = results[-1][:, ::2, ::2, :]  # max_pool2d(kernel 1, stride 2)
        elif self.top_block == "p6p7":
            src = results[-1] if self.p6p7_in == "P5" else xs[-1].astype(self.dtype)
            p6 = self._conv(3, 2, "p6")(src)
            p7 = self._conv(3, 2, "p7")(nn.relu(p6))
            out[f"P{top + 1}"] = p6
            out[f"P{top + 2}"] = p7
        return out
