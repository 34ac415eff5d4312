"""Checkpoints with orbax: atomic, step-numbered, the last K and the best kept, verified when restored.

A jaxdet checkpoint folder (``output_dir/checkpoints``) holds one sub-folder per step, written by
``orbax.checkpoint.CheckpointManager``. Each step holds these items:

- ``variables``: ``{"params": ..., "frozen": ..., ...}``, everything inference needs;
- ``train``: ``{"step", "opt_state", "rng"}``, the rest of the train state (absent in converted weights);
- ``meta``: JSON, the model config, classes (``category_ids``, ``class_names``) and pixel convention;
- ``checksums``: JSON, ``{"variables": {path: "<dtype>[shape]:<crc32>"}, "train": {...}}`` over every
  array's bytes, checked when the step is read back (a step written without it is read unchecked).

What survives a crash (the policies of :class:`Checkpointer`):

- Atomic writes: orbax writes a step under ``<step>.orbax-checkpoint-tmp-<n>`` and renames it when every
  item is complete, so a step being written (or interrupted by a kill) is never listed or taken as the
  latest; the leftover temporary folder is removed the next time the folder is opened for writing.
- Damaged steps: :meth:`Checkpointer.restore` tries the steps newest first. A step whose metadata or
  arrays cannot be read, or whose arrays do not match their checksums, is *damaged*: a warning names it
  and the step used instead, and the damaged folder is renamed ``<step>.damaged`` (kept for inspection;
  orbax ignores it, so the step can be written again).
- Wrong config: a step whose arrays (read from its metadata, before any data) do not fit the model is not
  damage but a config change; restoring raises ValueError listing the missing, unexpected and
  mis-shaped arrays, and never falls back.
- Best: :class:`BestCheckpointer` keeps, in its own folder (``output_dir/checkpoints_best``), the one step
  with the best evaluation metric (box AP), through orbax's ``best_fn``.

``checkpoints_convert`` writes the same layout (without ``train``) with :func:`save_variables`, so
``python -m jaxdet.evaluate`` runs converted weights directly.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from jaxdet.engine import parallel
from jaxdet.engine.state import TrainState

log = logging.getLogger(__name__)

#: The items of a step folder (see the module docstring).
ITEMS = ("variables", "train", "meta", "checksums")


class CheckpointDamagedError(ValueError):
    """A checkpoint step cannot be read back intact (unreadable metadata or arrays, or a checksum mismatch)."""


def use_distributed_barriers() -> None:
    """Makes orbax synchronise processes with barriers of jax's coordination service (its absl flag
    ``--experimental_orbax_use_distributed_barrier``) instead of device collectives, which on CPU (gloo)
    fail when processes arrive more than 30 s apart. Call after ``jax.distributed.initialize``, in an absl
    program (``python -m jaxdet.train``); the flag can also be given on the command line."""
    from absl import flags

    if "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
        flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def _handlers() -> dict:
    return {"variables": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(), "checksums": ocp.JsonCheckpointHandler()}


def _manager(directory: str, max_to_keep: int | None = None, read_only: bool = False,
             **options) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                        cleanup_tmp_directories=not read_only, **options)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts, item_handlers=_handlers())


def _key_str(path) -> str:
    """A pytree key path as ``"a/b/0/c"`` (dict keys, attribute names and sequence indices alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _flat(tree) -> dict[str, Any]:
    return {_key_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def tree_checksums(tree) -> dict[str, str] | None:
    """``{array path: "<dtype>[shape]:<crc32 of the bytes, 8 hex digits>"}`` of every array of ``tree``.

    Paths are ``/``-joined keys (``"params/backbone/conv1/kernel"``). An array replicated over the devices
    of several processes (the data-parallel train state) is hashed from this process's copy, so every
    process computes the same table. Returns None when an array is split over processes (model-parallel
    sharding), where no single host can hash it.
    """
    out = {}
    for k, v in _flat(tree).items():
        if not getattr(v, "is_fully_addressable", True):
            if not v.is_fully_replicated:
                return None
            v = v.addressable_data(0)
        a = np.asarray(jax.device_get(v))
        crc = zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        out[k] = f"{a.dtype.str}{list(a.shape)}:{crc:08x}"
    return out


def _verify_checksums(where: str, trees: dict, recorded: dict | None) -> None:
    """Raises CheckpointDamagedError if an array of ``trees`` (item -> restored tree) differs from its
    ``recorded`` checksum. Arrays restored in another dtype than they were saved in (a cast on restore)
    are not compared."""
    for item, tree in trees.items():
        want = (recorded or {}).get(item)
        if want is None:
            continue
        have = tree_checksums(tree)
        if have is None:
            continue
        cast = {k for k in set(want) & set(have) if want[k].split("[", 1)[0] != have[k].split("[", 1)[0]}
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k) and k not in cast)
        if bad:
            raise CheckpointDamagedError(f"checkpoint {where} is damaged: {len(bad)} array(s) of '{item}' do not "
                                         f"match their checksums: {_short(bad, 5)}")


def _shapes(tree) -> dict[str, tuple]:
    """``{array path: shape}`` of arrays, ``jax.ShapeDtypeStruct`` s or orbax ``ArrayMetadata``."""
    return {k: tuple(int(d) for d in (v.shape if hasattr(v, "shape") else np.shape(v)))
            for k, v in _flat(tree).items()}


def _mismatch(target: dict[str, tuple], loaded: dict[str, tuple], allow_missing: bool) -> list[str]:
    """The differences between two ``{path: shape}`` maps, as message parts (empty: they fit)."""
    extra = sorted(set(loaded) - set(target))
    missing = sorted(set(target) - set(loaded))
    shape = sorted(f"{k}: checkpoint {loaded[k]} vs model {target[k]}"
                   for k in set(loaded) & set(target) if tuple(loaded[k]) != tuple(target[k]))
    problems = []
    if extra:
        problems.append(f"{len(extra)} unexpected keys (not in this model): {_short(extra)}")
    if shape:
        problems.append(f"{len(shape)} mis-shaped: {_short(shape)}")
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    return problems


def _train_tree(state: TrainState) -> dict:
    return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}


def _save_args(variables: dict, train: dict | None, meta: dict) -> ocp.args.Composite:
    items = {"variables": ocp.args.StandardSave(variables), "meta": ocp.args.JsonSave(meta)}
    trees = {"variables": variables}
    if train is not None:
        items["train"] = ocp.args.StandardSave(train)
        trees["train"] = train
    sums = {k: tree_checksums(v) for k, v in trees.items()}
    if all(s is not None for s in sums.values()):
        items["checksums"] = ocp.args.JsonSave(sums)
    return ocp.args.Composite(**items)


class Checkpointer:
    """Saves train states under ``directory`` (one folder per step) and restores them; keeps the last K.

    Args:
      directory: the checkpoint folder (``output_dir/checkpoints``), created if needed.
      max_to_keep: K, the number of most recent steps kept (older ones are deleted after each save).
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._mngr = _manager(self.directory, max_to_keep)

    def latest_step(self) -> int | None:
        """The newest complete step (steps being written are not listed), or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete step, ascending."""
        return sorted(self._mngr.all_steps())

    def step_dir(self, step: int) -> str:
        """The folder of ``step``."""
        return os.path.join(self.directory, str(int(step)))

    def save(self, state: TrainState, meta: dict, force: bool = True) -> None:
        """Saves ``state`` at step ``state.step`` with ``meta`` and checksums.

        The arrays are copied to the host before this returns (the checksums read them, and so does orbax's
        blocking phase), so ``state`` may then be donated to the next step; the files are written in the
        background (:meth:`wait` blocks until they are complete, and the step is listed only then).
        """
        step = int(jax.device_get(state.step))
        self._mngr.save(step, args=_save_args(state.variables(), _train_tree(state), meta), force=force)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores a train state into the structure of ``abstract_state``; returns ``(state, meta)``.

        Args:
          abstract_state: the model's train state or its ``jax.ShapeDtypeStruct`` s (:func:`abstract`):
            the structure and shapes the checkpoint must fit.
          step: a given step (no fallback), or None: the newest intact step. Damaged newer steps are
            logged (a warning naming the damaged step and the step used) and renamed ``<step>.damaged``.

        Raises:
          FileNotFoundError: no checkpoint in the folder, or ``step`` is not one of its steps.
          ValueError: a step does not fit ``abstract_state`` (missing, unexpected and mis-shaped arrays
            listed, with the folder).
          CheckpointDamagedError (a ValueError): ``step`` is damaged, or (``step=None``) every step is.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None:
            if int(step) not in steps:
                raise FileNotFoundError(f"no step {step} in {self.directory} (steps: {steps})")
            return self._restore_step(abstract_state, int(step))
        damaged = []
        for s in reversed(steps):
            try:
                out = self._restore_step(abstract_state, s)
            except CheckpointDamagedError as e:
                log.warning("%s", e)
                damaged.append(s)
                continue
            if damaged:
                log.warning("checkpoint(s) %s damaged: resuming from %s instead; the damaged folders are renamed "
                            "<step>.damaged", ", ".join(self.step_dir(d) for d in damaged), self.step_dir(s))
                self._set_aside(damaged)
            return out
        raise CheckpointDamagedError(
            f"every checkpoint in {self.directory} is damaged (steps {steps}, see the warnings above); start over "
            "with --no-resume or another output_dir")

    def _restore_step(self, abstract_state: TrainState, step: int) -> tuple[TrainState, dict]:
        where = self.step_dir(step)
        abstract_vars, abstract_train = abstract_state.variables(), _train_tree(abstract_state)
        try:
            md = self._mngr.item_metadata(step)
            md_vars, md_train = md.get("variables"), md.get("train")
        except Exception as e:  # orbax raises several types for unreadable metadata
            raise CheckpointDamagedError(f"checkpoint {where} is damaged: its metadata cannot be read "
                                         f"({type(e).__name__}: {_first_line(e)})") from e
        if md_vars is None or md_train is None:
            raise CheckpointDamagedError(f"checkpoint {where} is damaged: the item(s) "
                                         f"{[k for k in ('variables', 'train') if md.get(k) is None]} are missing "
                                         "or unreadable")
        problems = [f"variables: {p}" for p in _mismatch(_shapes(abstract_vars), _shapes(md_vars), False)]
        problems += [f"train state: {p}" for p in _mismatch(_shapes(abstract_train), _shapes(md_train), False)]
        if problems:
            raise ValueError(f"checkpoint {where} does not fit this config: " + "; ".join(problems) +
                             ". Resume with the config it was written with, or start over with --no-resume "
                             "or another output_dir.")
        items = {"variables": ocp.args.StandardRestore(abstract_vars),
                 "train": ocp.args.StandardRestore(abstract_train), "meta": ocp.args.JsonRestore()}
        has_sums = os.path.isdir(os.path.join(where, "checksums"))
        if has_sums:
            items["checksums"] = ocp.args.JsonRestore()
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore/orbax/json errors of truncated or missing files
            raise CheckpointDamagedError(f"checkpoint {where} is damaged: {type(e).__name__}: "
                                         f"{_first_line(e)}") from e
        _verify_checksums(where, {"variables": out["variables"], "train": out["train"]},
                          out["checksums"] if has_sums else None)
        variables = dict(out["variables"])
        params = variables.pop("params")
        state = TrainState(step=out["train"]["step"], params=params, model_state=variables,
                           opt_state=out["train"]["opt_state"], rng=out["train"]["rng"])
        return state, out["meta"]

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for s in steps:
                dst = rename_aside(self.step_dir(s), ".damaged")
                log.warning("moved the damaged checkpoint %s to %s", self.step_dir(s), dst)
        parallel.sync_processes("jaxdet_checkpoint_set_aside")
        self._mngr.reload()

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._mngr.close()


class BestCheckpointer:
    """Keeps the one checkpoint with the best evaluation metric (orbax ``best_fn``, ``max_to_keep=1``).

    A step is written only when its metric beats the kept one (so a worse evaluation costs nothing). The
    kept step's metric is stored with it by orbax (``_CHECKPOINT_METADATA``), so a resumed run continues
    the comparison. The folder has the layout of :class:`Checkpointer` (``jaxdet.evaluate --checkpoint
    output_dir/checkpoints_best`` reads it).

    Args:
      directory: the folder (``output_dir/checkpoints_best``), created if needed.
      metric: the key of the evaluation metrics compared (``"AP"``, box AP in percent).
      mode: ``"max"`` (higher is better) or ``"min"``.

    Raises:
      ValueError: ``mode`` is neither 'max' nor 'min'.
    """

    def __init__(self, directory: str, metric: str = "AP", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.directory, self.metric, self.mode = os.path.abspath(directory), metric, mode
        self._mngr = _manager(self.directory, 1, best_fn=lambda m: float(m[metric]), best_mode=mode,
                              keep_checkpoints_without_metrics=False)
        step = self._mngr.best_step()
        self._best = None if step is None else (step, float((self._mngr.metrics(step) or {}).get(metric, math.nan)))

    def best(self) -> tuple[int, float] | None:
        """``(step, metric value)`` of the kept checkpoint (also while it is being written), or None."""
        return self._best

    def update(self, state: TrainState, meta: dict, metrics: dict) -> bool:
        """Saves ``state`` if ``metrics[metric]`` beats the kept checkpoint; returns whether it did.

        A missing or non-finite metric never counts as better (a warning is logged).
        """
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            log.warning("best checkpoint: evaluation metric %s is %r; not compared", self.metric, value)
            return False
        value = float(value)
        cur = self.best()
        if cur is not None and math.isfinite(cur[1]) and not (value > cur[1] if self.mode == "max" else value < cur[1]):
            return False
        step = int(jax.device_get(state.step))
        if step in self._mngr.all_steps():  # a resumed run evaluating the same step again
            self._mngr.delete(step)
        self._mngr.save(step, args=_save_args(state.variables(), _train_tree(state), meta),
                        metrics={self.metric: value}, force=True)
        self._best = (step, value)
        log.info("best checkpoint: %s %.3f at iteration %d (was %s) -> %s", self.metric, value, step,
                 "none" if cur is None else f"{cur[1]:.3f} at {cur[0]}", self.directory)
        return True

    def wait(self) -> None:
        """Blocks until the started save is on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for a pending save and releases the manager."""
        self._mngr.close()


def rename_aside(path: str, suffix: str) -> str:
    """Renames ``path`` to ``path + suffix`` (``-2``, ``-3``, ... appended if taken); returns the new name."""
    dst = base = path + suffix
    n = 1
    while os.path.exists(dst):
        n += 1
        dst = f"{base}-{n}"
    os.rename(path, dst)
    return dst


def save_variables(directory: str, variables: dict, meta: dict, step: int = 0) -> str:
    """Writes a variables-only checkpoint (the converters' output, with checksums) under ``directory``.

    Args:
      directory: the checkpoint folder to create (or add ``step`` to).
      variables: ``{"params": ..., "frozen": ..., ...}`` arrays.
      meta: JSON-serialisable metadata (classes, pixel convention, ``config_overrides``).
      step: the step folder's number.

    Returns:
      the step folder's path.
    """
    mngr = _manager(directory)
    variables = jax.tree.map(np.asarray, variables)
    mngr.save(step, args=_save_args(variables, None, meta), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return os.path.join(os.path.abspath(directory), str(step))


def load_variables(path: str) -> tuple[dict, dict]:
    """Reads ``(variables, meta)`` from a jaxdet checkpoint, verifying its checksums when it has them.

    Args:
      path: a run's output folder (its ``checkpoints/``), a checkpoint folder (its latest step), or one
        step's folder.

    Returns:
      ``variables`` as nested dicts of numpy arrays, ``meta`` as a dict (empty if the checkpoint has none).

    Raises:
      FileNotFoundError: ``path`` does not exist or holds no checkpoint step.
      ValueError: ``path`` is a file (e.g. torchvision ``.pth`` or detectron2 ``.pkl`` weights, which
        ``checkpoints_convert`` turns into a checkpoint), the step is not a jaxdet checkpoint (no
        ``variables`` item), or it is damaged (truncated or altered files; a checksum mismatch) -- the
        message names the folder.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        raise ValueError(f"{path} is a file, not a jaxdet checkpoint folder; convert torchvision/detectron2/Caffe2 "
                         "weights with checkpoints_convert first")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    root, step = path, None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "variables")):
        root, step = os.path.dirname(path), int(base)
    elif os.path.isdir(os.path.join(path, "checkpoints")):
        root = os.path.join(path, "checkpoints")
    mngr = _manager(root, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no jaxdet checkpoint found in {path}")
    where = os.path.join(root, str(step))
    present = {k for k in ITEMS if os.path.isdir(os.path.join(where, k))}
    if "variables" not in present:
        held = sorted(d for d in os.listdir(where) if os.path.isdir(os.path.join(where, d)))
        raise ValueError(f"{where} is not a jaxdet checkpoint: it holds the item(s) {held} but no 'variables'")
    items = {"meta": ocp.args.JsonRestore()}
    if "checksums" in present:
        items["checksums"] = ocp.args.JsonRestore()
    try:
        # Read onto this process's first device whatever devices wrote it (e.g. 8 devices on 2 hosts):
        # without a target orbax insists on the saving topology.
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=local),
                              mngr.item_metadata(step)["variables"])
        items["variables"] = ocp.args.StandardRestore(target)
        out = mngr.restore(step, args=ocp.args.Composite(**{k: v for k, v in items.items()
                                                            if k in present}))
    except Exception as e:  # orbax raises several types for damaged/partial folders
        raise ValueError(f"checkpoint {where} cannot be read: {type(e).__name__}: {_first_line(e)}") from e
    finally:
        mngr.close()
    variables = jax.tree.map(np.asarray, out["variables"])
    if "checksums" in present:
        _verify_checksums(where, {"variables": variables}, out["checksums"])
    return variables, dict(out.get("meta") or {})


def merge_variables(target: dict, loaded: dict, source: str, allow_missing: bool) -> dict:
    """Puts ``loaded`` values into the structure of ``target`` (e.g. a fresh model's variables).

    Args:
      target: the model's variables (the structure and shapes that must be met); arrays or
        ``jax.ShapeDtypeStruct`` s (then nothing may be missing).
      loaded: variables read from a checkpoint or converter; a subset is allowed if ``allow_missing``.
      source: the file name, for messages.
      allow_missing: True for initialisation from partial weights (e.g. an ImageNet backbone); the
        missing entries keep ``target``'s values and are logged.

    Returns:
      the merged variables (numpy / jax arrays in ``target``'s dtypes).

    Raises:
      ValueError: keys of ``loaded`` that the model lacks, mis-shaped arrays, or (unless
        ``allow_missing``) keys the model needs that ``loaded`` lacks -- all listed (the first 10 of each
        kind and the count), with ``source``.
    """
    flat_t = traverse_util.flatten_dict(target, sep="/")
    flat_l = traverse_util.flatten_dict(loaded, sep="/")
    problems = _mismatch({k: tuple(v.shape) for k, v in flat_t.items()},
                         {k: tuple(np.shape(v)) for k, v in flat_l.items()}, allow_missing)
    if problems:
        raise ValueError(f"weights {source} do not fit this config: " + "; ".join(problems))
    missing = sorted(set(flat_t) - set(flat_l))
    if missing:
        log.info("weights %s: %d of %d arrays loaded; %d keep their initial values (e.g. %s)", source,
                 len(flat_l), len(flat_t), len(missing), _short(missing, 3))
    merged = {k: (np.asarray(flat_l[k], dtype=v.dtype) if k in flat_l else v) for k, v in flat_t.items()}
    return traverse_util.unflatten_dict(merged, sep="/")


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (and of its cause's: tensorstore puts the reason there)."""
    def line(x):
        t = str(x).split(" See full TensorStore details")[0].strip()
        return t.splitlines()[0] if t else type(x).__name__
    s = line(e)
    if e.__cause__ is not None:
        s += f" ({line(e.__cause__)})"
    return s[:limit] + ("..." if len(s) > limit else "")


def _short(items: list[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def abstract(tree: Any, sharding=None) -> Any:
    """``jax.ShapeDtypeStruct`` s of a pytree (for restoring without allocating).

    ``sharding`` (e.g. ``parallel.replicated(mesh)``) is where the restored arrays go; with several
    processes it must be given, so that orbax restores global arrays (each process reading its shards).
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def apply_meta_to_config(config, meta: dict, source: str) -> list[str]:
    """Applies a checkpoint's ``meta["config_overrides"]`` (dotted config keys -> values) to ``config``.

    Converted weights carry their pixel convention and architectural switches (channel order, mean/std,
    FrozenBN eps, stride_in_1x1, RoIAlign semantics, number of classes); the model must use them, so they
    override the config. Returns the ``"key: old -> new"`` changes (logged by the caller).

    Raises:
      ValueError: an override names a key the config does not have (a checkpoint from another kind of model).
    """
    changes = []
    for key, value in (meta.get("config_overrides") or {}).items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node.get(p) if hasattr(node, "get") else None
        if node is None or leaf not in node:
            raise ValueError(f"checkpoint {source} sets {key!r}, which this config does not have")
        old = node[leaf]
        new = _like(old, value)
        if old != new:
            node[leaf] = new
            changes.append(f"{key}: {old} -> {new}")
    return changes


def _like(old, value):
    """``value`` (from JSON) in the type of the config's ``old`` value (tuples for lists, float for int)."""
    if isinstance(value, list):
        return tuple(_like(old[0] if isinstance(old, (tuple, list)) and old else None, v) for v in value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
