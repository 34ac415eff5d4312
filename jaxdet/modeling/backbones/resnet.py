"""ResNet / ResNeXt backbones (Flax linen, NHWC, conv kernels HWIO).

Matches ``torchvision/models/resnet.py`` (``ResNet``, ``BasicBlock``, ``Bottleneck``) for the
torchvision / Caffe2 style (stride on the 3x3 conv of a bottleneck) and detectron2's
``detectron2/modeling/backbone/resnet.py`` for the MSRA style (``stride_in_1x1=True``: stride on
the first 1x1 conv). Padding is torch's explicit symmetric padding, never 'SAME'.

Variable tree and the torchvision ``state_dict`` names they come from (see
``checkpoints_convert/torchvision_backbone.py``)::

    conv1/kernel                      <- conv1.weight            [7,7,3,C] (OIHW -> HWIO)
    bn1/{weight,bias,running_mean,running_var}   <- bn1.*         (collection "frozen")
    layer{s}_{i}/conv{1,2,3}/kernel   <- layer{s}.{i}.conv{1,2,3}.weight
    layer{s}_{i}/bn{1,2,3}/...        <- layer{s}.{i}.bn{1,2,3}.*
    layer{s}_{i}/downsample_conv/kernel <- layer{s}.{i}.downsample.0.weight   (i == 0 only)
    layer{s}_{i}/downsample_bn/...    <- layer{s}.{i}.downsample.1.*

``layer1..layer4`` are detectron2's ``res2..res5`` and produce C2..C5 (strides 4, 8, 16, 32).
Basic blocks (depth 18/34) have only conv1/bn1/conv2/bn2. With ``norm='bn'`` the norm layers
hold ``params/{scale,bias}`` and ``batch_stats/{mean,var}`` instead; with ``'gn'`` only params.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling.conv import Conv
from jaxdet.modeling.layers import get_norm

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "RESNET_SPECS", "FEATURE_STRIDES", "resnet_trainable_mask"]

Dtype = Any

#: depth -> (block kind, number of blocks per stage res2..res5), torchvision/detectron2.
RESNET_SPECS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: output name -> stride in input pixels.
FEATURE_STRIDES: Dict[str, int] = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), as torchvision's ResNet.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, padding: int, groups: int, dtype: Dtype, name: str) -> nn.Conv:
    """A bias-free ``nn.Conv`` with torch's symmetric explicit padding (HWIO kernel, float32 params)."""
    return Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_init,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: 3x3 (stride) -> norm -> relu -> 3x3 -> norm, + shortcut, relu.

    Input ``[B,H,W,Cin]``, output ``[B,ceil(H/stride),ceil(W/stride),planes]`` in ``dtype``.
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    norm_eps: float = 1e-5
    norm_axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def norm(name):
            return get_norm(self.norm, train=train, eps=self.norm_eps, dtype=self.dtype,
                            axis_name=self.norm_axis_name, name=name)

        out = _conv(self.planes, 3, self.stride, 1, 1, self.dtype, "conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = _conv(self.planes, 3, 1, 1, 1, self.dtype, "conv2")(out)
        out = norm("bn2")(out)
        identity = x
        if self.downsample:
            identity = _conv(self.planes, 1, self.stride, 0, 1, self.dtype, "downsample_conv")(x)
            identity = norm("downsample_bn")(identity)
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (ResNet v1.5) / detectron2 ``BottleneckBlock``.

    1x1 (width) -> norm -> relu -> 3x3 grouped (width) -> norm -> relu -> 1x1 (4*planes) -> norm,
    + shortcut (1x1 conv stride s + norm when ``downsample``), relu.
    The stride sits on the 3x3 conv (torchvision, Caffe2) or on the first 1x1 conv
    (``stride_in_1x1=True``, MSRA weights).

    Input ``[B,H,W,Cin]``, output ``[B,ceil(H/stride),ceil(W/stride),4*planes]`` in ``dtype``.
    """

    planes: int
    width: int
    stride: int = 1
    groups: int = 1
    downsample: bool = False
    stride_in_1x1: bool = False
    norm: str = "frozen_bn"
    norm_eps: float = 1e-5
    norm_axis_name: Optional[str] = None
    dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def norm(name):
            return get_norm(self.norm, train=train, eps=self.norm_eps, dtype=self.dtype,
                            axis_name=self.norm_axis_name, name=name)

        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        out = _conv(self.width, 1, s1, 0, 1, self.dtype, "conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = _conv(self.width, 3, s3, 1, self.groups, self.dtype, "conv2")(out)
        out = nn.relu(norm("bn2")(out))
        out = _conv(self.planes * 4, 1, 1, 0, 1, self.dtype, "conv3")(out)
        out = norm("bn3")(out)
        identity = x
        if self.downsample:
            identity = _conv(self.planes * 4, 1, self.stride, 0, 1, self.dtype, "downsample_conv")(x)
            identity = norm("downsample_bn")(identity)
        return nn.relu(out + identity)


class ResNet(nn.Module):
    """ResNet / ResNeXt feature extractor returning C2..C5.

    Matches ``torchvision.models.ResNet`` up to ``layer4`` (no avgpool/fc): conv1 7x7 s2 p3
    (no bias) -> norm -> relu -> maxpool 3x3 s2 p1 (padding acts as -inf) -> layer1..layer4.
    Stage s>1 starts with stride 2; the first block of every stage whose input differs in
    stride or channels has a 1x1 conv + norm shortcut.

    Attributes:
      depth: 18 | 34 (basic blocks) | 50 | 101 | 152 (bottlenecks).
      groups: ResNeXt cardinality (``feature_group_count`` of the 3x3 convs); 1 for ResNet.
      width_per_group: bottleneck width per group; width = int(planes * width_per_group / 64)
        * groups (torchvision). ResNeXt-50 32x4d: groups=32, width_per_group=4.
      stride_in_1x1: False = torchvision/Caffe2 style; True = MSRA (detectron2 R-50/R-101 .pkl).
      norm: 'frozen_bn' | 'bn' | 'syncbn' | 'gn' | 'none' (see ``jaxdet.modeling.layers.get_norm``).
      norm_eps: norm epsilon; 1e-5, or 0.0 for torchvision's legacy COCO detector checkpoints.
      norm_axis_name: mapped axis name for 'syncbn'.
      out_features: which of 'C2', 'C3', 'C4', 'C5' to return. Stages after the last one
        requested are not built (e.g. ('C4',) for C4 backbones whose res5 lives in the head).
      freeze_at: number of leading stages whose outputs pass through ``jax.lax.stop_gradient``
        (detectron2 ``MODEL.BACKBONE.FREEZE_AT``): 0 none, 1 stem, 2 stem+res2, ... 5 all.
        torchvision's ``trainable_backbone_layers=k`` is ``freeze_at = 5 - k``. This stops
        gradients only; also mask those params out of the optimizer (see
        :func:`resnet_trainable_mask`) so weight decay does not move them.
      width_multiplier: scales the stem width (64) and every stage's planes (64, 128, 256, 512),
        rounded, at least 1; 1.0 is the standard network. Small values (e.g. 0.125) give a tiny
        network for CPU quickstarts and tests (no checkpoint exists for those).
      dtype: compute dtype (float32 or bfloat16); parameters are always float32.

    ``__call__(x, train=False)``:
      x: ``[B, H, W, 3]`` float, already normalised (mean/std, channel order of the weights).
      train: training mode; only matters for norm='bn'/'syncbn' (then apply with
        ``mutable=['batch_stats']``).
      Returns a dict ``name -> [B, ceil(H/s), ceil(W/s), C]`` in ``dtype`` for each requested
      name, with strides s from :data:`FEATURE_STRIDES` (exact for H, W multiples of 32; torch's
      floor((n + 2p - k)/s) + 1 arithmetic otherwise) and C from :meth:`feature_channels`.

    Raises ValueError for an unknown depth, bad out_features/freeze_at, or a ResNeXt basic block.
    """

    depth: int = 50
    groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False
    norm: str = "frozen_bn"
    norm_eps: float = 1e-5
    norm_axis_name: Optional[str] = None
    out_features: Sequence[str] = ("C2", "C3", "C4", "C5")
    freeze_at: int = 0
    width_multiplier: float = 1.0
    dtype: Dtype = jnp.float32

    # ---- static helpers (usable on an unbound module) ----
    def _check(self) -> Tuple[str, Tuple[int, ...]]:
        if self.depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {self.depth}")
        kind, layers = RESNET_SPECS[self.depth]
        if kind == "basic" and (self.groups != 1 or self.width_per_group != 64):
            raise ValueError("BasicBlock (depth 18/34) supports only groups=1 and width_per_group=64")
        bad = [f for f in self.out_features if f not in FEATURE_STRIDES]
        if bad or not self.out_features:
            raise ValueError(f"out_features must be a non-empty subset of {tuple(FEATURE_STRIDES)}, got {tuple(self.out_features)}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {self.freeze_at}")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")
        return kind, layers

    def _scaled(self, c: int) -> int:
        return max(1, int(round(c * self.width_multiplier)))

    def stem_channels(self) -> int:
        """Output channels of the stem (64 for the standard network)."""
        return self._scaled(64)

    def stage_planes(self) -> Tuple[int, int, int, int]:
        """``planes`` of res2..res5 (64, 128, 256, 512 times width_multiplier)."""
        return tuple(self._scaled(64 * 2**i) for i in range(4))

    def feature_channels(self) -> Dict[str, int]:
        """Channels of every Ck the network can return, e.g. R-50: C2 256 ... C5 2048; R-18: 64 ... 512."""
        kind, _ = self._check()
        exp = 1 if kind == "basic" else 4
        return {f"C{i + 2}": p * exp for i, p in enumerate(self.stage_planes())}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Dict[str, jax.Array]:
        kind, layers = self._check()
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects NHWC images [B,H,W,3], got shape {x.shape}")
        last_stage = max(int(f[1]) for f in self.out_features)  # 2..5
        x = x.astype(self.dtype)

        x = _conv(self.stem_channels(), 7, 2, 3, 1, self.dtype, "conv1")(x)
        x = get_norm(self.norm, train=train, eps=self.norm_eps, dtype=self.dtype,
                     axis_name=self.norm_axis_name, name="bn1")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf
        if self.freeze_at >= 1:
            x = jax.lax.stop_gradient(x)

        outputs: Dict[str, jax.Array] = {}
        in_ch = self.stem_channels()
        for s, (planes, n_blocks) in enumerate(zip(self.stage_planes(), layers)):
            stage = s + 2  # res2..res5
            if stage > last_stage:
                break
            stride = 1 if s == 0 else 2
            for i in range(n_blocks):
                block_stride = stride if i == 0 else 1
                common = dict(norm=self.norm, norm_eps=self.norm_eps, norm_axis_name=self.norm_axis_name,
                              dtype=self.dtype, name=f"layer{s + 1}_{i}")
                if kind == "basic":
                    out_ch = planes
                    down = i == 0 and (block_stride != 1 or in_ch != out_ch)
                    block = BasicBlock(planes=planes, stride=block_stride, downsample=down, **common)
                else:
                    out_ch = planes * 4
                    width = int(planes * (self.width_per_group / 64.0)) * self.groups
                    if width < 1:
                        raise ValueError(f"bottleneck width is 0 for planes={planes}, width_per_group={self.width_per_group}")
                    down = i == 0 and (block_stride != 1 or in_ch != out_ch)
                    block = Bottleneck(planes=planes, width=width, stride=block_stride, groups=self.groups,
                                       downsample=down, stride_in_1x1=self.stride_in_1x1, **common)
                x = block(x, train=train)
                in_ch = out_ch
            if self.freeze_at >= stage:
                x = jax.lax.stop_gradient(x)
            name = f"C{stage}"
            if name in self.out_features:
                outputs[name] = x
        return outputs


def resnet_trainable_mask(params: Mapping[str, Any], freeze_at: int) -> Dict[str, Any]:
    """Boolean pytree (same structure as ``params``) marking the ResNet params to train.

    For ``optax.masked`` / ``optax.multi_transform``: leaves of the stem (``conv1``, ``bn1``) are
    False when ``freeze_at >= 1``, leaves of ``layer{k}_*`` (res{k+1}) are False when
    ``freeze_at >= k + 1``; everything else is True (detectron2 ``freeze_at`` semantics, which
    set ``requires_grad=False`` on those parameters).

    Args:
      params: the ResNet's own ``"params"`` dict (top-level keys ``conv1``, ``bn1``, ``layer1_0`` ...).
      freeze_at: 0..5 as in :class:`ResNet`.

    Raises:
      ValueError: freeze_at outside 0..5.
    """
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")

    def stage_of(key: str) -> int:
        if key in ("conv1", "bn1"):
            return 1
        if key.startswith("layer") and "_" in key:
            return int(key[5:key.index("_")]) + 1
        return 99  # unknown submodule: never frozen

    return {k: jax.tree_util.tree_map(lambda _: stage_of(k) > freeze_at, v) for k, v in params.items()}
