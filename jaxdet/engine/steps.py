"""Pure, jit-compiled train and inference steps, model-agnostic.

A detector is any Flax module whose ``apply(variables, batch, train=True, rngs={"sampling": key})``
returns a dict of scalar losses and whose ``apply(variables, batch, train=False)`` returns a dict of
detections (DESIGN.md section 2). The steps are compiled once per canvas shape and sharded as
:mod:`jaxdet.engine.parallel` describes.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdet.engine import parallel
from jaxdet.engine.state import TrainState


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh, skip_nonfinite: bool = False,
                    trainable=None) -> Callable[[TrainState, dict], tuple]:
    """Builds ``train_step(state, batch) -> (state, metrics)``, jitted with the mesh's shardings.

    The step's randomness is ``fold_in(state.rng, state.step)``, so the step is a pure function of the
    state and the batch (and a resumed run repeats it exactly). The update is applied only when the total
    loss and the global gradient norm are finite; otherwise the state is returned unchanged except for
    ``step`` (``skip_nonfinite``: the step is skipped) or entirely unchanged (the caller then stops).

    Args:
      model: the detector (see the module docstring).
      tx: the optimizer; schedule: its learning rate as a function of the step (logged as ``lr``).
      mesh: the device mesh (state replicated, batch split over ``data``).
      skip_nonfinite: advance ``step`` past a non-finite step (``solver.nan_policy="skip"``).
      trainable: optional pytree of bools over the params (``jaxdet.modeling.build.trainable_mask``): the
        frozen ones enter the loss through ``stop_gradient``, so their gradients (and the backward pass of
        layers that only feed them, e.g. the frozen stem and res2) are never computed, as with torch's
        ``requires_grad=False``; their gradient counts as 0 in ``grad_norm``.

    Returns:
      ``train_step(state, batch) -> (state, metrics)``; ``metrics`` holds every loss term (float32
      scalars), ``loss_total``, ``lr``, ``grad_norm`` (global L2 norm of the gradients), ``finite`` (bool
      scalar) and ``step`` (int32, the 0-based index of the step the metrics belong to). The state
      argument is donated.
    """
    mutable = [c for c in ("batch_stats",)]

    def train_step(state: TrainState, batch: dict):
        key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            if trainable is not None:
                params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
            with parallel.trace_context(mesh):  # the model sees the mesh (per-device BatchNorm groups)
                out, updates = model.apply({"params": params, **state.model_state}, batch, train=True,
                                           rngs={"sampling": key}, mutable=mutable)
            total = sum(out.values())
            return total, (out, updates)

        (total, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        upd, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, upd)
        model_state = {**state.model_state, **updates}
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            step=state.step + (1 if skip_nonfinite else finite.astype(jnp.int32)),
            params=keep(params, state.params),
            model_state=keep(model_state, state.model_state),
            opt_state=keep(opt_state, state.opt_state),
        )
        metrics = dict(terms)
        metrics.update(loss_total=total, lr=schedule(state.step), grad_norm=grad_norm, finite=finite,
                       step=state.step)
        return new_state, metrics

    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def make_predict_step(model: nn.Module, mesh: Mesh) -> Callable[[dict, dict], dict]:
    """Builds ``predict_step(variables, batch) -> detections``, jitted, the batch split over the mesh.

    ``batch`` needs ``image`` uint8 [B, H, W, 3] and ``image_size`` int32 [B, 2]; the detections are the
    model's inference outputs (DESIGN.md section 2: ``boxes`` [B, D, 4] xyxy in canvas pixels, ``scores``
    [B, D], ``classes`` [B, D], ``valid`` [B, D]), sharded over the batch like the input.
    """

    def predict_step(variables, batch):
        return model.apply(variables, batch, train=False)

    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(predict_step, in_shardings=(repl, data), out_shardings=data)
