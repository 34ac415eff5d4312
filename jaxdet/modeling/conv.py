"""The convolution layers every jaxdet model uses: ``Conv`` (``flax.linen.Conv`` with the weight gradient of
:mod:`jaxdet.ops.conv` on CPU) and ``ConvTranspose`` (phase-decomposed); same parameters, names and results as
flax's ``nn.Conv`` / ``nn.ConvTranspose``."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.ops import conv as conv_ops


def Conv(*args, **kwargs) -> nn.Conv:  # noqa: N802 - a layer constructor, named like one
    """``nn.Conv(*args, **kwargs)`` whose ``conv_general_dilated`` is :func:`jaxdet.ops.conv.select` ("auto":
    matmul weight gradients on CPU, XLA's convolution gradients on GPU/TPU; ``JAXDET_CONV_WEIGHT_GRAD``
    overrides). Call it where ``nn.Conv`` would be called (inside ``setup`` or ``@nn.compact``)."""
    kwargs.setdefault("conv_general_dilated", conv_ops.select("auto"))
    return nn.Conv(*args, **kwargs)


class ConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` (``transpose_kernel=False``) with the same parameters (``kernel`` [kh, kw, Cin,
    Cout], ``bias`` [Cout]), initialisers and results, computed by :func:`jaxdet.ops.conv.conv_transpose` as one
    plain convolution per output phase: XLA:CPU runs the input-dilated convolution of ``nn.ConvTranspose`` (and
    its gradients) through a slow generic loop (measured: a Mask R-CNN train step went from ~70 s to a few).

    Attributes: as ``nn.ConvTranspose`` (features, kernel_size, strides, padding: "SAME" | "VALID" | explicit
    pairs, use_bias, dtype, param_dtype, kernel_init, bias_init). Input [N, H, W, Cin] -> [N, Ho, Wo, features].
    """

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: str | tuple = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        y = conv_ops.conv_transpose(x.astype(dtype), kernel.astype(dtype), self.strides, self.padding)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y
