"""Normalisation layers shared by the backbones and heads (Flax linen, NHWC).

* :class:`FrozenBatchNorm` -- batch norm with fixed statistics and affine, as
  ``torchvision.ops.misc.FrozenBatchNorm2d`` (and detectron2's ``FrozenBatchNorm2d``).
  Its four arrays live in the ``"frozen"`` variable collection, never in ``"params"``:
  they are not trained, get no gradient and no weight decay.
* :class:`BatchNorm` -- trainable batch norm whose statistics are computed per data-parallel shard
  (``'bn'``, as ``torch.nn.BatchNorm2d`` under DDP) or over the whole global batch (``'syncbn'``, as
  ``torch.nn.SyncBatchNorm``).
* :class:`Identity` -- the ``norm='none'`` placeholder.
* :func:`get_norm` -- a factory for 'frozen_bn' | 'bn' | 'syncbn' | 'gn' | 'none'.

BatchNorm under data parallelism. jaxdet's steps are jitted for the *global* batch, split over the
mesh axis ``"data"`` (:mod:`jaxdet.engine.parallel`): the model sees all B images of all devices and
hosts. So

* ``'syncbn'`` computes the batch statistics over the whole global batch (XLA inserts the cross-device
  reduction). This is detectron2's ``SyncBN``; it does not depend on the number of devices.
* ``'bn'`` computes them per device, as torch's ``BatchNorm2d`` does in each DDP replica: the batch is
  viewed as ``[G, B/G, ...]`` with G the number of data-parallel shards (the size of the ``"data"`` axis
  of the mesh the step is traced on; 1 without a mesh), and each group of ``B/G`` consecutive images --
  exactly one device's shard -- is normalised with its own mean and variance (no communication). The
  running statistics are updated with the mean over the G groups of their statistics (torch keeps one
  set per replica and saves rank 0's). Results therefore depend on the number of devices, as in torch;
  ``batch_groups`` fixes G explicitly (e.g. 8 to reproduce 8 GPUs x 2 images on fewer devices).

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

__all__ = ["FrozenBatchNorm", "BatchNorm", "Identity", "get_norm", "data_parallel_size", "NORM_KINDS"]

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
    Everything is computed in float32 and only the result is cast to ``dtype``: with
    ``dtype=bfloat16`` the product ``x * scale`` rounded to bfloat16 before ``bias'`` is added
    would lose the output's precision wherever ``bias'`` nearly cancels it (channels whose mean
    is large next to their spread); as under ``torch.autocast``, batch norm runs in float32.

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
        return (x.astype(jnp.float32) * scale + shift).astype(dtype)


#: The mesh axis the batch is split over (``jaxdet.engine.parallel.DATA_AXIS``, repeated here because the
#: model does not import the engine).
DATA_AXIS = "data"


def data_parallel_size(x: jax.Array) -> int:
    """G, the number of data-parallel shards of the batch ``x`` belongs to, known while tracing.

    The size of the ``"data"`` axis of the abstract mesh: the context mesh (``jax.set_mesh``), else the
    mesh of ``x``'s sharding type (what ``jax.jit`` with ``NamedSharding`` s over the mesh gives the
    values of the step). 1 without a mesh, for a mesh without a ``"data"`` axis, and inside
    ``shard_map`` over ``"data"`` (``x`` is then already one device's shard).
    """
    meshes = [jax.sharding.get_abstract_mesh()]
    try:
        meshes.append(jax.typeof(x).sharding.mesh)
    except AttributeError:
        pass
    for mesh in meshes:
        names = tuple(getattr(mesh, "axis_names", ()) or ())
        if DATA_AXIS in names:
            kind = mesh.axis_types[names.index(DATA_AXIS)]
            return 1 if kind == jax.sharding.AxisType.Manual else int(mesh.shape[DATA_AXIS])
    return 1


class BatchNorm(nn.Module):
    """Trainable batch normalisation with batch statistics per group of the batch (NHWC, channels last).

    In training (``use_running_average=False``) the leading dim B of ``x`` is viewed as ``[G, B/G]`` and
    each group is normalised with its own statistics, computed in float32 over the group's images and
    spatial positions (the variance as ``E[x^2] - E[x]^2``, clipped at 0, as ``flax.linen.BatchNorm``)::

        y = (x - mean_g) * (scale * rsqrt(var_g + epsilon)) + bias

    and the running statistics become ``momentum * running + (1 - momentum) * mean over g of (mean_g,
    var_g)`` (biased variance, as flax; torch stores the unbiased one, a factor n/(n-1)). With G = 1 this
    is ``flax.linen.BatchNorm`` (the same variables and numbers). At inference the running statistics are
    used. See the module docstring for 'bn' vs 'syncbn'.

    Variables: ``params`` ``scale`` (init 1), ``bias`` (init 0); ``batch_stats`` ``mean`` (init 0),
    ``var`` (init 1); all float32 ``[C]`` -- the layout of ``flax.linen.BatchNorm``.

    Attributes:
      use_running_average: inference mode (the running statistics, no update).
      momentum: flax convention; 0.9 equals torch's ``momentum=0.1``.
      epsilon: added to the variance.
      dtype: output dtype (None: the input's, at least float32); statistics are always float32.
      batch_groups: G. None: :func:`data_parallel_size` (one group per device, 'bn'); 1: the whole batch
        ('syncbn'). B must be divisible by G.
      axis_name: a ``shard_map``/``pmap``/``vmap`` axis over which the group statistics are also
        averaged (``lax.pmean``), for models run per device; not needed under ``jax.jit``.

    Input ``x``: ``[B, ..., C]``. Output: the same shape.

    Raises:
      ValueError: B is not divisible by G (in training).
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    batch_groups: Optional[int] = None
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        dtype = self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, jnp.float32)
        if self.use_running_average:
            y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            return y.astype(dtype)
        init = self.is_initializing()
        g = 1 if init else (self.batch_groups or data_parallel_size(x))
        b = x.shape[0]
        if b % g:
            raise ValueError(f"BatchNorm: the batch dim {b} is not divisible by batch_groups={g} "
                             "(the number of data-parallel shards)")
        xg = x.reshape((g, b // g) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        xf = xg.astype(jnp.float32)
        mean, mean2 = xf.mean(axes, keepdims=True), jnp.square(xf).mean(axes, keepdims=True)
        if self.axis_name is not None and not init:
            mean, mean2 = jax.lax.pmean(jnp.stack([mean, mean2]), self.axis_name)
        var = jnp.maximum(0.0, mean2 - jnp.square(mean))
        if not init:
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(g, c).mean(0)
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.reshape(g, c).mean(0)
        y = (xg - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.reshape(x.shape).astype(dtype)


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
    batch_groups: Optional[int] = None,
    name: Optional[str] = None,
) -> nn.Module:
    """Build a channel-last normalisation module; call the result as ``norm(x)``.

    Args:
      kind: one of
        * ``'frozen_bn'``: :class:`FrozenBatchNorm` (torchvision/detectron2 FrozenBatchNorm2d).
        * ``'bn'``: :class:`BatchNorm` with statistics per data-parallel shard, i.e. per device, as
          torch ``nn.BatchNorm2d`` in each DDP replica (``use_running_average = not train``; the running
          statistics live in ``"batch_stats"``: apply with ``mutable=['batch_stats']`` when ``train``).
        * ``'syncbn'``: :class:`BatchNorm` with statistics over the whole global batch, all devices and
          hosts (torch ``nn.SyncBatchNorm``, detectron2 ``SyncBN``). Under jaxdet's jitted steps no
          ``axis_name`` is needed; give one only when the model runs per device under
          ``shard_map``/``pmap``.
        * ``'gn'``: ``flax.linen.GroupNorm`` with ``num_groups`` groups (torch ``nn.GroupNorm``);
          the channel count must be divisible by ``num_groups``.
        * ``'none'``: :class:`Identity`.
      train: training mode (only 'bn'/'syncbn' depend on it).
      eps: epsilon added to the variance (torch default 1e-5 for all kinds).
      momentum: flax convention, ``running = momentum * running + (1 - momentum) * batch``;
        0.9 equals torch's ``momentum=0.1``. Note the running variance is updated with the biased batch
        variance whereas torch uses the unbiased one (a factor n/(n-1), negligible for
        detection-sized batches).
      dtype: compute dtype (None: input dtype). Parameters are always float32.
      axis_name: mapped axis over which 'bn'/'syncbn' statistics are also averaged (``shard_map``/``pmap``
        only; ignored by the other kinds).
      num_groups: groups for 'gn' (32 as in detectron2 / torchvision).
      batch_groups: 'bn' only: the number of groups the batch's statistics are split into (None: the
        number of data-parallel shards, see :class:`BatchNorm`).
      name: submodule name (pass the torch-style name, e.g. ``'bn1'``).

    Returns:
      An unbound ``flax.linen.Module`` mapping ``[..., C]`` to ``[..., C]``.

    Raises:
      ValueError: unknown ``kind``.
    """
    if kind == "frozen_bn":
        return FrozenBatchNorm(eps=eps, dtype=dtype, name=name)
    if kind in ("bn", "syncbn"):
        return BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=eps,
            dtype=dtype,
            batch_groups=1 if kind == "syncbn" else batch_groups,
            axis_name=axis_name,
            name=name,
        )
    if kind == "gn":
        return nn.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)
    if kind == "none":
        return Identity(name=name)
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
