"""Data parallelism over every device, on one host or many, with ``jax.jit`` and shardings.

The batch's leading dim is sharded over a 1-D device mesh (axis ``"data"``) and the train state is
replicated. The step is written for the *global* batch and compiled once with ``jax.jit``: XLA's SPMD
partitioner runs each device on its ``B / device_count`` images and inserts the all-reduce of the
gradients itself. Because the loss is the reference's global-batch loss (normalised by the sampled
anchors/RoIs of the whole batch), the gradient is exactly the one a single device computes on the same
global batch -- the averaging is neither forgotten nor done twice (the trap with ``shard_map``, where the
gradient of a replicated parameter already comes back summed). Many hosts: after
``jax.distributed.initialize`` the mesh spans every process's devices and each process feeds its own
slice of the global batch (:func:`shard_batch`).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), axis name ``"data"``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over the ``data`` axis, other dims whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "solver.ims_per_batch") -> int:
    """Per-device batch size; raises ValueError if ``global_batch`` does not divide over the devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{what}={global_batch} is not divisible by the {n} devices; choose a multiple of {n}")
    return global_batch // n


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch (this process's rows) -> global ``jax.Array`` s sharded over ``data``.

    Uses ``jax.make_array_from_process_local_data``, so on one host the local batch is the global batch,
    and on P hosts each contributes ``B / P`` rows. Arrays are transferred asynchronously.
    """
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    """Places a pytree (e.g. the train state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
