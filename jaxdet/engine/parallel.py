"""Data parallelism over every device, on one host or many, with ``jax.jit`` and shardings.

The batch's leading dim is sharded over a 1-D device mesh (axis ``"data"``) and the train state is
replicated. The step is written for the *global* batch and compiled once with ``jax.jit``: XLA's SPMD
partitioner runs each device on its ``B / device_count`` images and inserts the all-reduce of the
gradients itself. Because the loss is the reference's global-batch loss (normalised by the sampled
anchors/RoIs of the whole batch), the gradient is exactly the one a single device computes on the same
global batch -- the averaging is neither forgotten nor done twice (the trap with ``shard_map``, where the
gradient of a replicated parameter already comes back summed). Many hosts: after
``jax.distributed.initialize`` the mesh spans every process's devices and each process feeds its own
slice of the global batch (:func:`shard_batch`), and results come back to every host with
:func:`to_host` (a gather across processes).

Keeping processes in step: on CPU the cross-process collectives run on gloo, whose rendezvous gives up
when the processes reach a program's first collective more than 30 s apart -- easily the case when one
process compiles slower than the other. So with several processes the steps are wrapped by
:func:`align_processes` (each new input signature is compiled ahead of time, then the processes meet at a
barrier of jax's coordination service, which has no such limit), :func:`to_host` meets at such a
barrier before gathering, and :func:`sync_processes` replaces collective-based barriers.
"""
from __future__ import annotations

import itertools
from typing import Callable

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


def trace_context(mesh: Mesh):
    """Context manager for tracing a step that runs on ``mesh``: inside it the model sees the mesh
    (``jax.sharding.get_abstract_mesh()``), e.g. the number of data-parallel shards that ``norm='bn'``
    splits its batch statistics into (:func:`jaxdet.modeling.layers.data_parallel_size`). Use it inside
    the jitted function, around ``model.apply``; it changes no sharding."""
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def replicate(tree, mesh: Mesh):
    """Places a pytree (e.g. the train state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(tree):
    """Global results -> numpy on *every* process: the host side of evaluation and logging.

    Leaves may be global ``jax.Array`` s (e.g. the predict step's outputs, sharded over ``data``; or
    replicated metrics) or this process's numpy rows of a global batch (the loader's output). With one
    process this is ``jax.device_get``. With P processes, global arrays are gathered to their full
    value and process-local numpy arrays are concatenated along axis 0 in process order (process p
    holds rows ``[p * B / P, (p + 1) * B / P)``, see :mod:`jaxdet.data.pipeline`), so both describe the
    same global batch in the same row order. A collective: every process must call it, in the same order,
    with leaves of the same shapes.

    Returns:
      the pytree with numpy leaves (leading dim B, the global batch).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    sync_processes("jaxdet_to_host")

    # 64-bit host arrays (COCO image ids are int64) travel as pairs of uint32 words: without jax_enable_x64
    # jax would silently narrow them to 32 bits.
    wide = lambda x: isinstance(x, np.ndarray) and x.dtype.itemsize == 8
    packed = jax.tree.map(lambda x: x[..., None].view(np.uint32) if wide(x) else x, tree)
    out = multihost_utils.process_allgather(packed, tiled=True)
    return jax.tree.map(lambda x, o: np.ascontiguousarray(o).view(x.dtype)[..., 0] if wide(x) else np.asarray(o),
                        tree, out)


_BARRIER_COUNTER = itertools.count()
#: Seconds a process waits at :func:`sync_processes` for the others (compilation of a big model included).
BARRIER_TIMEOUT_S = 3600


def sync_processes(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Blocks until every process has called ``sync_processes`` with this ``name`` (the same number of
    times); a no-op with one process. A barrier of ``jax.distributed``'s coordination service: no device
    collective is involved, so it has no 30 s rendezvous limit.

    Raises:
      jax.errors.JaxRuntimeError: not every process arrived within ``timeout_s`` (or one died).
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client orbax also uses for its barriers

    key = f"{name}_{next(_BARRIER_COUNTER)}"
    distributed.global_state.client.wait_at_barrier(key, timeout_in_ms=int(timeout_s * 1000))


class _Aligned:
    """A jitted function that, before running a new input signature for the first time, compiles it ahead
    of time and waits for the other processes (see :func:`align_processes`). Other attributes (``lower``,
    ``_cache_size``, ...) are the jitted function's."""

    def __init__(self, fn, name: str):
        self._fn, self._name, self._seen = fn, name, set()

    def __call__(self, *args):
        sig = jax.tree.structure(args), tuple((np.shape(x), str(getattr(x, "dtype", type(x))))
                                              for x in jax.tree.leaves(args))
        if sig not in self._seen:
            self._fn.lower(*args).compile()  # cached: the call below does not compile again
            sync_processes(f"jaxdet_compiled_{self._name}")
            self._seen.add(sig)
        return self._fn(*args)

    def __getattr__(self, attr):
        return getattr(self._fn, attr)


def align_processes(fn: Callable, name: str) -> Callable:
    """``fn`` (a ``jax.jit`` function) itself with one process; with several, a wrapper that makes every
    process finish compiling a new input signature before any of them starts running it (see the module
    docstring). Call it after ``jax.distributed.initialize``."""
    return fn if jax.process_count() == 1 else _Aligned(fn, name)
