"""``config.model`` sections -> constructor arguments of the shared building blocks.

Used by the ``build_*`` functions of :mod:`jaxdet.modeling.build` and of each detector module, so every
family reads its backbone, FPN and R-CNN sections the same way.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxdet.modeling.backbones.fpn import FPN
from jaxdet.modeling.backbones.resnet import ResNet
from jaxdet.modeling.heads.roi_heads import RoIHeadsConfig
from jaxdet.modeling.heads.rpn import RPNConfig


def dtype_from_name(name: str):
    """``"float32" | "bfloat16" | "float16"`` -> the jnp dtype.

    Raises:
      ValueError: any other name.
    """
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}") from None


def config_fields(cls, cfg) -> dict:
    """The entries of the config section ``cfg`` that are fields of the dataclass ``cls`` (lists as tuples)."""
    names = cls.__dataclass_fields__.keys()
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}


def build_resnet(bcfg, dtype) -> ResNet:
    """``config.model.backbone`` -> :class:`ResNet` returning C2..C5."""
    return ResNet(depth=bcfg.depth, groups=bcfg.groups, width_per_group=bcfg.width_per_group,
                  stride_in_1x1=bcfg.stride_in_1x1, norm=bcfg.norm, norm_eps=bcfg.norm_eps,
                  freeze_at=bcfg.freeze_at, width_multiplier=bcfg.width_multiplier, dtype=dtype)


def build_fpn(mcfg, dtype, top_block: str = "maxpool") -> FPN:
    """``config.model.fpn`` -> :class:`FPN` (``top_block``: ``"maxpool"`` for P6 (R-CNN), ``"p6p7"`` for
    RetinaNet/FCOS)."""
    return FPN(out_channels=mcfg.fpn.out_channels, top_block=top_block, dtype=dtype)


def rcnn_kwargs(mcfg, num_classes: int) -> dict[str, Any]:
    """Constructor arguments shared by FasterRCNN and its subclasses (MaskRCNN, KeypointRCNN)."""
    dtype = dtype_from_name(mcfg.dtype)
    return dict(
        backbone=build_resnet(mcfg.backbone, dtype),
        neck=build_fpn(mcfg, dtype, "maxpool"),
        num_classes=num_classes,
        anchor_sizes=tuple(tuple(s) for s in mcfg.anchor.sizes),
        aspect_ratios=tuple(mcfg.anchor.aspect_ratios),
        rpn=RPNConfig(**config_fields(RPNConfig, mcfg.rpn)),
        roi_heads=RoIHeadsConfig(**config_fields(RoIHeadsConfig, mcfg.roi_heads)),
        pixel_mean=tuple(mcfg.pixel_mean),
        pixel_std=tuple(mcfg.pixel_std),
        dtype=dtype,
    )
