"""The convolution layer every jaxdet model uses: ``flax.linen.Conv`` with the weight gradient of
:mod:`jaxdet.ops.conv` on CPU (same parameters, names and forward results as ``nn.Conv``)."""
from __future__ import annotations

import flax.linen as nn

from jaxdet.ops import conv as conv_ops


def Conv(*args, **kwargs) -> nn.Conv:  # noqa: N802 - a layer constructor, named like one
    """``nn.Conv(*args, **kwargs)`` whose ``conv_general_dilated`` is :func:`jaxdet.ops.conv.select` ("auto":
    matmul weight gradients on CPU, XLA's convolution gradients on GPU/TPU; ``JAXDET_CONV_WEIGHT_GRAD``
    overrides). Call it where ``nn.Conv`` would be called (inside ``setup`` or ``@nn.compact``)."""
    kwargs.setdefault("conv_general_dilated", conv_ops.select("auto"))
    return nn.Conv(*args, **kwargs)
