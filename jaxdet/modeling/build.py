"""Build a detector module from ``config.model`` (explicit constructor arguments, no string registry
beyond the one ``meta_architecture`` switch below)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from jaxdet.modeling.backbones.resnet import resnet_trainable_mask
from jaxdet.modeling.components import rcnn_kwargs
from jaxdet.modeling.detectors.faster_rcnn import FasterRCNN
from jaxdet.modeling.detectors.fcos import build_fcos
from jaxdet.modeling.detectors.keypoint_rcnn import build_keypoint_rcnn
from jaxdet.modeling.detectors.mask_rcnn import build_mask_rcnn
from jaxdet.modeling.detectors.retinanet import build_retinanet


def build_faster_rcnn(mcfg, num_classes: int) -> FasterRCNN:
    """``config.model`` (see ``configs/faster_rcnn.py``) -> :class:`FasterRCNN`."""
    return FasterRCNN(**rcnn_kwargs(mcfg, num_classes))


#: ``config.model.meta_architecture`` -> builder ``(config.model, num_classes) -> module``.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "FasterRCNN": build_faster_rcnn,
    "MaskRCNN": build_mask_rcnn,
    "KeypointRCNN": build_keypoint_rcnn,
    "RetinaNet": build_retinanet,
    "FCOS": build_fcos,
}


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
