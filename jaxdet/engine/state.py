"""The train state: everything a resumed run needs, as one pytree."""
from __future__ import annotations

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """Train state pytree.

    Attributes:
      step: int32 scalar, the number of updates applied (the next iteration's index).
      params: the ``"params"`` collection (trained).
      model_state: every other variable collection (``"frozen"`` FrozenBN statistics, ``"batch_stats"``).
      opt_state: the optax state.
      rng: the PRNG key of the run; the step's key is ``fold_in(rng, step)`` so training is a pure function
        of (seed, step) and resumes exactly.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: optax.OptState
    rng: jax.Array

    def variables(self) -> dict:
        """The Flax variables dict for ``model.apply``."""
        return {"params": self.params, **self.model_state}


def create_train_state(variables: dict, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh state from model variables (``{"params": ..., "frozen": ..., ...}``)."""
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=rng)
