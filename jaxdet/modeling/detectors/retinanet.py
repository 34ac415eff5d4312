"""RetinaNet (work in progress)."""
from __future__ import annotations


def build_retinanet(mcfg, num_classes: int):
    """``config.model`` (see ``configs/retinanet.py``) -> :class:`RetinaNet`."""
    raise NotImplementedError("RetinaNet is not implemented yet")
