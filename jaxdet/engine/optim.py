"""Optimiser and learning-rate schedule of the reference zoos, with optax.

detectron2 ``solver/build.py`` + ``WarmupMultiStepLR``: SGD with momentum (PyTorch formulation:
``v = mu * v + g; p -= lr * v``), L2 weight decay added to the gradient (none on normalisation
parameters when ``weight_decay_norm`` is 0), linear warmup from ``warmup_factor * base_lr``, and
multiplication by ``gamma`` at each of ``steps``. Parameters of frozen stages get no update at all
(neither gradient nor decay), as parameters with ``requires_grad=False`` in PyTorch.
"""
from __future__ import annotations

import jax
import optax
from flax import traverse_util


def lr_schedule(base_lr: float, warmup_iters: int, warmup_factor: float, steps, gamma: float) -> optax.Schedule:
    """Learning rate at iteration ``i`` (0-based, the value used for update ``i``).

    ``base_lr * (warmup_factor * (1 - a) + a)`` with ``a = i / warmup_iters`` during warmup, then
    ``base_lr * gamma ** (number of steps <= i)``. Same as detectron2's ``WarmupMultiStepLR`` (linear).
    """
    boundaries = {int(s): gamma for s in steps}
    decay = optax.piecewise_constant_schedule(base_lr, boundaries)
    if warmup_iters <= 0:
        return decay

    def schedule(i):
        a = jax.numpy.minimum(i / warmup_iters, 1.0)
        return decay(i) * (warmup_factor * (1 - a) + a)

    return schedule


def _is_norm_param(path: tuple[str, ...]) -> bool:
    """Flax norm layers (BatchNorm, GroupNorm, LayerNorm) own exactly ``scale`` and ``bias``."""
    return path[-1] == "scale" or (path[-1] == "bias" and any("norm" in p.lower() or p.lower().startswith("bn")
                                                                 or p.lower().startswith("gn") for p in path[-2:-1]))


def build_optimizer(solver, params, trainable_mask=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD + momentum + weight decay + warmup/multistep schedule.

    Args:
      solver: ``config.solver`` (``base_lr``, ``momentum``, ``weight_decay``, ``weight_decay_norm``,
        ``warmup_iters``, ``warmup_factor``, ``steps``, ``gamma``).
      params: the parameter pytree (only its structure is used).
      trainable_mask: a boolean pytree like ``params`` (None: all True); False freezes the parameter.

    Returns:
      (the optax transformation, the learning-rate schedule).
    """
    schedule = lr_schedule(solver.base_lr, solver.warmup_iters, solver.warmup_factor, solver.steps, solver.gamma)
    flat = traverse_util.flatten_dict(params)
    flat_mask = traverse_util.flatten_dict(trainable_mask) if trainable_mask is not None else {}
    labels = {}
    for path in flat:
        if not flat_mask.get(path, True):
            labels[path] = "frozen"
        elif _is_norm_param(path):
            labels[path] = "norm"
        else:
            labels[path] = "default"
    labels = traverse_util.unflatten_dict(labels)

    def sgd(wd):
        return optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(),
                           optax.sgd(schedule, momentum=solver.momentum or None))

    tx = optax.multi_transform(
        {"default": sgd(solver.weight_decay), "norm": sgd(solver.weight_decay_norm), "frozen": optax.set_to_zero()},
        labels)
    return tx, schedule
