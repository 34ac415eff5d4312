"""FCOS (work in progress)."""
from __future__ import annotations


def build_fcos(mcfg, num_classes: int):
    """``config.model`` (see ``configs/fcos.py``) -> :class:`FCOS`."""
    raise NotImplementedError("FCOS is not implemented yet")
