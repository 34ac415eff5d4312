"""2-D convolution whose weight gradient is computed as a sum of matrix products (fast on XLA:CPU).

Why: XLA:CPU lowers the weight gradient of a convolution (a convolution whose "batch" is the feature
dimension and whose window is the whole image) to a kernel that runs at a few GFLOP/s, 5-10x slower than the
forward convolution; on 2 cores it dominated the Faster R-CNN training step. For a ``kh x kw`` kernel the same
gradient is ``kh * kw`` matrix products of the (strided, shifted) input against the output gradient,
``dW[i, j] = sum_{n, y, x} X_pad[n, s*y + i, s*x + j, :]^T dY[n, y, x, :]``, which XLA:CPU runs at matmul
speed. The forward pass and the input gradient are XLA's own convolutions, unchanged.

:func:`conv_general_dilated` has the signature of ``jax.lax.conv_general_dilated`` and is passed to
``flax.linen.Conv(conv_general_dilated=...)``: parameters, names and forward results are those of
``nn.Conv``. Cases it does not cover (dilation, batch groups, non-NHWC/HWIO layouts) fall back to
``lax.conv_general_dilated``. On GPU/TPU the cuDNN/XLA weight gradient is already fast; the switch
(:func:`select`) picks ``"matmul"`` only on CPU by default.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "conv2d_nhwc", "select"]

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, pads, groups):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_nhwc(x: jax.Array, w: jax.Array, strides: tuple, pads: tuple, groups: int) -> jax.Array:
    """Convolution of x [N, H, W, Cin] with w [kh, kw, Cin / groups, Cout], explicit padding
    ``pads = ((top, bottom), (left, right))``, stride ``strides = (sy, sx)`` -> [N, Ho, Wo, Cout]; the weight
    gradient is computed with matrix products (module docstring)."""
    return _conv(x, w, strides, pads, groups)


def _fwd(x, w, strides, pads, groups):
    return _conv(x, w, strides, pads, groups), (x, w)


def _bwd(strides, pads, groups, res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: _conv(x_, w, strides, pads, groups), x)
    (dx,) = vjp_x(g)
    kh, kw, cin_g, cout = w.shape
    n, ho, wo = g.shape[:3]
    sy, sx = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
    gg = g.reshape(n, ho, wo, groups, cout // groups)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(xp, (0, i, j, 0), (n, i + sy * (ho - 1) + 1, j + sx * (wo - 1) + 1, xp.shape[3]),
                           (1, sy, sx, 1))
            xs = xs.reshape(n, ho, wo, groups, cin_g)
            d = jnp.einsum("nhwgc,nhwgo->cgo", xs, gg, preferred_element_type=acc)
            taps.append(d.reshape(cin_g, cout))
    dw = jnp.stack(taps).reshape(kh, kw, cin_g, cout).astype(w.dtype)
    return dx, dw


conv2d_nhwc.defvjp(_fwd, _bwd)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    if dimension_numbers is None or ndim != 4:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
                and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """Drop-in for ``jax.lax.conv_general_dilated`` (same arguments and result) that routes 2-D NHWC/HWIO
    convolutions without dilation through :func:`conv2d_nhwc` (matmul weight gradient). Shapes and dtypes as
    ``lax.conv_general_dilated``."""
    plain = (lhs_dilation is None or all(d == 1 for d in lhs_dilation)) and \
            (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
    if not (plain and batch_group_count == 1 and precision is None and preferred_element_type is None
            and _is_nhwc(dimension_numbers, lhs.ndim)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    else:
        pads = padding
    pads = tuple((int(a), int(b)) for a, b in pads)
    return conv2d_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), pads, int(feature_group_count))


def select(mode: str = "auto"):
    """The ``conv_general_dilated`` for ``flax.linen.Conv``: ``"matmul"`` (this module), ``"xla"`` (None:
    flax's default, ``lax.conv_general_dilated``) or ``"auto"``: the environment variable
    ``JAXDET_CONV_WEIGHT_GRAD`` (``matmul`` / ``xla``) when set, else matmul on CPU backends and XLA's elsewhere.

    Raises:
      ValueError: another mode.
    """
    if mode == "auto":
        mode = os.environ.get("JAXDET_CONV_WEIGHT_GRAD") or ("matmul" if jax.default_backend() == "cpu" else "xla")
    if mode == "matmul":
        return conv_general_dilated
    if mode == "xla":
        return None
    raise ValueError(f"conv weight-gradient mode must be 'auto', 'matmul' or 'xla', got {mode!r}")
