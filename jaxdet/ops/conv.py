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

__all__ = ["conv_general_dilated", "conv2d_nhwc", "conv_transpose", "select"]

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


def _phase_taps(length: int, kernel: int, stride: int, pad_lo: int, pad_hi: int):
    """Per output phase r (output index = stride * q + r): (first kernel tap k0, number of taps M, input offset
    d, outputs Q) of ``y[s q + r] = sum_m x[q + d + m] K[k0 + s m]`` (see :func:`conv_transpose`)."""
    out = (length - 1) * stride + 1 + pad_lo + pad_hi - kernel + 1
    phases = []
    for r in range(stride):
        q = -(-(out - r) // stride) if out > r else 0
        k0 = (pad_lo - r) % stride
        m = len(range(k0, kernel, stride))
        d = (r + k0 - pad_lo) // stride
        phases.append((k0, m, d, q))
    return out, phases


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """``lax.conv_transpose``'s explicit padding of the dilated input for "SAME" / "VALID"."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
    elif padding == "VALID":
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    else:
        raise ValueError(f"conv_transpose: padding must be 'SAME', 'VALID' or explicit pairs, got {padding!r}")
    return pad_a, pad_len - pad_a


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """``lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))``
    (flax ``nn.ConvTranspose`` with ``transpose_kernel=False``) computed as ``stride**2`` ordinary convolutions,
    one per output phase, then interleaved.

    XLA:CPU runs the input-dilated convolution that ``conv_transpose`` lowers to (and its gradients) through a
    slow generic loop; each phase here is a plain stride-1 convolution of x with the sub-kernel
    ``kernel[k0::s]`` (:func:`conv_general_dilated`, so its weight gradient is the matmul one too).
    With y the output of the stride-dilated, padded input correlated with the kernel, output
    ``y[s q + r] = sum_m x[q + d + m] kernel[k0 + s m]`` for ``k0 = (pad_lo - r) mod s``,
    ``d = (r + k0 - pad_lo) / s``.

    Args:
      x: [N, H, W, Cin]; kernel: [kh, kw, Cin, Cout]; strides: (sy, sx); padding: "VALID", "SAME" or
        ((top, bottom), (left, right)) as for ``lax.conv_transpose``.

    Returns:
      [N, Ho, Wo, Cout], the same values as ``lax.conv_transpose`` (up to float summation order).
    """
    sy, sx = (int(s) for s in strides)
    kh, kw = kernel.shape[:2]
    if isinstance(padding, str):
        pads = [_transpose_padding(k, s, padding) for k, s in ((kh, sy), (kw, sx))]
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
    n, h, w, _ = x.shape
    out_h, ph = _phase_taps(h, kh, sy, *pads[0])
    out_w, pw = _phase_taps(w, kw, sx, *pads[1])
    rows = []
    for (k0y, my, dy, qy) in ph:
        cols = []
        for (k0x, mx, dx, qx) in pw:
            if qy == 0 or qx == 0:
                continue
            sub = kernel[k0y::sy, k0x::sx]
            if my == 0 or mx == 0:
                cols.append(jnp.zeros((n, qy, qx, kernel.shape[3]), x.dtype))
                continue
            # x rows needed: [dy, qy - 1 + dy + my - 1]; pad where that leaves [0, h - 1]
            lo_y, hi_y = max(0, -dy), max(0, qy + dy + my - 1 - h)
            lo_x, hi_x = max(0, -dx), max(0, qx + dx + mx - 1 - w)
            xp = jnp.pad(x, ((0, 0), (lo_y, hi_y), (lo_x, hi_x), (0, 0)))
            xp = xp[:, dy + lo_y: dy + lo_y + qy + my - 1, dx + lo_x: dx + lo_x + qx + mx - 1]
            cols.append(conv_general_dilated(xp, sub, (1, 1), "VALID", dimension_numbers=_NHWC))
        rows.append(cols)
    # interleave: out[s q + r] = phase r at q (phases have ceil((out - r) / s) entries)
    qy_max, qx_max = -(-out_h // sy), -(-out_w // sx)
    grid = []
    for cols in rows:
        padded = [jnp.pad(c, ((0, 0), (0, qy_max - c.shape[1]), (0, qx_max - c.shape[2]), (0, 0))) for c in cols]
        grid.append(jnp.stack(padded, axis=3))                         # [N, Qy, Qx, sx, C]
    y = jnp.stack(grid, axis=2)                                         # [N, Qy, sy, Qx, sx, C]
    y = y.reshape(n, qy_max * sy, qx_max * sx, kernel.shape[3])
    return y[:, :out_h, :out_w]
