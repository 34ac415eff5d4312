"""KeypointRCNN (work in progress)."""
from __future__ import annotations


def build_keypoint_rcnn(mcfg, num_classes: int):
    """``config.model`` (see ``configs/keypoint_rcnn.py``) -> :class:`KeypointRCNN`."""
    raise NotImplementedError("KeypointRCNN is not implemented yet")
