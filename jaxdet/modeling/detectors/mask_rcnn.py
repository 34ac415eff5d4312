"""MaskRCNN (work in progress)."""
from __future__ import annotations


def build_mask_rcnn(mcfg, num_classes: int):
    """``config.model`` (see ``configs/mask_rcnn.py``) -> :class:`MaskRCNN`."""
    raise NotImplementedError("MaskRCNN is not implemented yet")
