"""Normalisation layers shared by the backbones and heads (Flax linen, NHWC).

* :class:`FrozenBatchNorm` -- batch norm with fixed statistics and affine, as
  ``torchvision.ops.misc.FrozenBatchNorm2d`` (and detectron2's ``FrozenBatchNorm2d``).
  Its four arrays live in the ``"frozen"`` variable collection, never in ``"params"``:
  they are not trained, get no gradient and no weight decay.
* :class:`Identity` -- the ``norm='none'`` placeholder.
* :func:`get_norm` -- a factory for 'frozen_bn' | 'bn' | 'syncbn' | 'gn' | 'none'.

Variable collections used by these layers:

========== =========================== ===============================================
kind       collection                  names
========== =========================== ===============================================
frozen_bn  ``frozen``                  ``weight``, ``bias``, ``running_mean``, ``running_var``
bn/syncbn  ``params`` + ``batch_stats`` ``scale``, ``bias`` + ``mean``, ``var``
gn         ``params``                  ``scale``, ``bias``
========== =========================== ===============================================
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["FrozenBatchNorm", "Identity", "get_norm", "NORM_KINDS"]

NORM_KINDS = ("frozen_bn", "bn", "syncbn", "gn", "none")

Dtype = Any


class FrozenBatchNorm(nn.Module):
    """Batch normalisation with frozen statistics and affine parameters.

    Computes, per channel c (last axis)::

        scale = weight * rsqrt(running_var + eps)
        bias' = bias - running_mean * scale
        y     = x * scale + bias'

    exactly in this order, as ``torchvision.ops.misc.FrozenBatchNorm2d.forward`` does
    (so a converted checkpoint reproduces torchvision bit-for-bit up to float rounding).
    ``scale``/``bias'`` are computed in float32 and cast to ``dtype`` before being applied.

    Variables (collection ``"frozen"``, all float32 ``[C]``): ``weight`` (init 1), ``bias``
    (init 0), ``running_mean`` (init 0), ``running_var`` (init 1). They are constants of
    the model: pass them to ``apply`` but never to the optimizer.

    Attributes:
      eps: added to ``running_var``; 1e-5 for torchvision/detectron2, 0.0 for torchvision's
        legacy COCO detection checkpoints (see ``torchvision.ops._utils`` ``overwrite_eps``).
      dtype: compute/output dtype; None keeps the input's dtype.

    Input ``x``: ``[..., C]`` float (NHWC for images). Output: same shape, ``dtype``.
    """

    eps: float = 1e-5
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        weight = self.variable("frozen", "weight", lambda: jnp.ones((c,), jnp.float32)).value
        bias = self.variable("frozen", "bias", lambda: jnp.zeros((c,), jnp.float32)).value
        mean = self.variable("frozen", "running_mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("frozen", "running_var", lambda: jnp.ones((c,), jnp.float32)).value
        scale = weight.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.eps)
        shift = bias.astype(jnp.float32) - mean.astype(jnp.float32) * scale
        dtype = self.dtype if self.dtype is not None else x.dtype
        return x.astype(dtype) * scale.astype(dtype) + shift.astype(dtype)


class Identity(nn.Module):
    """No normalisation (``norm='none'``): returns ``x`` unchanged (any shape, any dtype)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def get_norm(
    kind: str,
    *,
    train: bool = False,
    eps: float = 1e-5,
    momentum: float = 0.9,
    dtype: Optional[Dtype] = None,
    axis_name: Optional[str] = None,
    num_groups: int = 32,
    name: Optional[str] = None,
) -> nn.Module:
    """Build a channel-last normalisation module; call the result as ``norm(x)``.

    Args:
      kind: one of
        * ``'frozen_bn'``: :class:`FrozenBatchNorm` (torchvision/detectron2 FrozenBatchNorm2d).
        * ``'bn'``: ``flax.linen.BatchNorm`` with ``use_running_average = not train``; the
          running statistics live in ``"batch_stats"`` (apply with ``mutable=['batch_stats']``
          when ``train``). Statistics are per device (torch ``nn.BatchNorm2d``).
        * ``'syncbn'``: the same with ``axis_name`` set, so batch statistics are averaged over
          that mapped axis (torch ``nn.SyncBatchNorm``); only valid under ``shard_map``/``pmap``
          with that axis name.
        * ``'gn'``: ``flax.linen.GroupNorm`` with ``num_groups`` groups (torch ``nn.GroupNorm``);
          the channel count must be divisible by ``num_groups``.
        * ``'none'``: :class:`Identity`.
      train: training mode (only 'bn'/'syncbn' depend on it).
      eps: epsilon added to the variance (torch default 1e-5 for all kinds).
      momentum: flax convention, ``running = momentum * running + (1 - momentum) * batch``;
        0.9 equals torch's ``momentum=0.1``. Note flax updates ``var`` with the biased batch
        variance whereas torch uses the unbiased one (a factor n/(n-1), negligible for
        detection-sized batches).
      dtype: compute dtype (None: input dtype). Parameters are always float32.
      axis_name: mapped axis for 'syncbn' (required there, ignored otherwise).
      num_groups: groups for 'gn' (32 as in detectron2 / torchvision).
      name: submodule name (pass the torch-style name, e.g. ``'bn1'``).

    Returns:
      An unbound ``flax.linen.Module`` mapping ``[..., C]`` to ``[..., C]``.

    Raises:
      ValueError: unknown ``kind``, or ``'syncbn'`` without ``axis_name``.
    """
    if kind == "frozen_bn":
        return FrozenBatchNorm(eps=eps, dtype=dtype, name=name)
    if kind in ("bn", "syncbn"):
        if kind == "syncbn" and not axis_name:
            raise ValueError("get_norm('syncbn') needs axis_name (the shard_map/pmap axis to average over)")
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=eps,
            dtype=dtype,
            param_dtype=jnp.float32,
            axis_name=axis_name if kind == "syncbn" else None,
            name=name,
        )
    if kind == "gn":
        return nn.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)
    if kind == "none":
        return Identity(name=name)
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
