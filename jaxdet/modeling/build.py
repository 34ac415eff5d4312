"""Build a detector module from ``config.model`` (explicit constructor arguments, no string registry
beyond the one ``meta_architecture`` switch below)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.modeling.backbones.fpn import FPN
from jaxdet.modeling.backbones.resnet import ResNet, resnet_trainable_mask
from jaxdet.modeling.detectors.faster_rcnn import FasterRCNN
from jaxdet.modeling.heads.roi_heads import RoIHeadsConfig
from jaxdet.modeling.heads.rpn import RPNConfig


def _dtype(name: str):
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {name!r}") from None


def _fields(cls, cfg) -> dict:
    """The config entries that are fields of the dataclass ``cls`` (tuples kept as tuples)."""
    names = cls.__dataclass_fields__.keys()
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}


def build_resnet(bcfg, dtype) -> ResNet:
    """``config.model.backbone`` -> :class:`ResNet` returning C2..C5."""
    return ResNet(depth=bcfg.depth, groups=bcfg.groups, width_per_group=bcfg.width_per_group,
                  stride_in_1x1=bcfg.stride_in_1x1, norm=bcfg.norm, norm_eps=bcfg.norm_eps,
                  freeze_at=bcfg.freeze_at, width_multiplier=bcfg.width_multiplier, dtype=dtype)


def build_faster_rcnn(mcfg, num_classes: int) -> FasterRCNN:
    """``config.model`` (see ``configs/faster_rcnn.py``) -> :class:`FasterRCNN`."""
    dtype = _dtype(mcfg.dtype)
    return FasterRCNN(
        backbone=build_resnet(mcfg.backbone, dtype),
        neck=FPN(out_channels=mcfg.fpn.out_channels, top_block="maxpool", dtype=dtype),
        num_classes=num_classes,
        anchor_sizes=tuple(tuple(s) for s in mcfg.anchor.sizes),
        aspect_ratios=tuple(mcfg.anchor.aspect_ratios),
        rpn=RPNConfig(**_fields(RPNConfig, mcfg.rpn)),
        roi_heads=RoIHeadsConfig(**_fields(RoIHeadsConfig, mcfg.roi_heads)),
        pixel_mean=tuple(mcfg.pixel_mean),
        pixel_std=tuple(mcfg.pixel_std),
        dtype=dtype,
    )


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"FasterRCNN": build_faster_rcnn}


def build_detector(model_config, num_classes: int) -> nn.Module:
    """The detector module of ``config.model`` with ``num_classes`` foreground classes.

    Raises:
      ValueError: unknown ``meta_architecture`` (the message lists the known ones).
    """
    arch = model_config.meta_architecture
    if arch not in _BUILDERS:
        raise ValueError(f"model.meta_architecture {arch!r} is not one of {sorted(_BUILDERS)}")
    return _BUILDERS[arch](model_config, num_classes)


def trainable_mask(params: dict, freeze_at: int) -> dict:
    """Boolean pytree over ``params``: False for the backbone stages frozen by ``freeze_at`` (detectron2
    ``FREEZE_AT``; torchvision ``trainable_backbone_layers = 5 - freeze_at``), True elsewhere."""
    mask = jax.tree.map(lambda _: True, params)
    if "backbone" in params:
        mask["backbone"] = resnet_trainable_mask(params["backbone"], freeze_at)
    return mask
