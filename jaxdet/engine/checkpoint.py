"""Checkpoints with orbax: atomic, step-numbered, the last K kept.

A jaxdet checkpoint folder (``output_dir/checkpoints``) holds one sub-folder per step, written by
``orbax.checkpoint.CheckpointManager`` (a step being written lives under a temporary name and is never
taken as the latest). Each step holds three items:

- ``variables``: ``{"params": ..., "frozen": ..., ...}``, everything inference needs;
- ``train``: ``{"step", "opt_state", "rng"}``, the rest of the train state (absent in converted weights);
- ``meta``: JSON, the model config, classes (``category_ids``, ``class_names``) and pixel convention.

``checkpoints_convert`` writes the same layout (without ``train``), so ``python -m jaxdet.evaluate``
runs converted weights directly.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from jaxdet.engine.state import TrainState

log = logging.getLogger(__name__)


def _manager(directory: str, max_to_keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                           cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("variables", "train", "meta"))


class Checkpointer:
    """Saves and restores train states under ``directory``; keeps the last ``max_to_keep``."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._mngr = _manager(self.directory, max_to_keep)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, state: TrainState, meta: dict, force: bool = True) -> None:
        """Saves ``state`` at ``state.step`` (asynchronously; :meth:`wait` blocks until written)."""
        step = int(jax.device_get(state.step))
        self._mngr.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(state.variables()),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores the train state at ``step`` (default: latest) into the structure of ``abstract_state``.

        Raises:
          FileNotFoundError: no checkpoint in the folder.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract_vars = abstract_state.variables()
        abstract_train = {"step": abstract_state.step, "opt_state": abstract_state.opt_state,
                          "rng": abstract_state.rng}
        out = self._mngr.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_vars), train=ocp.args.StandardRestore(abstract_train),
            meta=ocp.args.JsonRestore()))
        variables = dict(out["variables"])
        params = variables.pop("params")
        state = TrainState(step=out["train"]["step"], params=params, model_state=variables,
                           opt_state=out["train"]["opt_state"], rng=out["train"]["rng"])
        return state, out["meta"]

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()


def save_variables(directory: str, variables: dict, meta: dict, step: int = 0) -> str:
    """Writes a variables-only checkpoint (the converters' output) under ``directory``; returns its path."""
    mngr = _manager(directory)
    variables = jax.tree.map(np.asarray, variables)
    mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return os.path.join(os.path.abspath(directory), str(step))


def load_variables(path: str) -> tuple[dict, dict]:
    """Reads ``(variables, meta)`` from a checkpoint folder (its latest step) or from one step's folder.

    Raises:
      FileNotFoundError: ``path`` holds no jaxdet checkpoint.
    """
    path = os.path.abspath(path)
    root, step = path, None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "variables")):
        root, step = os.path.dirname(path), int(base)
    elif os.path.isdir(os.path.join(path, "checkpoints")):
        root = os.path.join(path, "checkpoints")
    mngr = _manager(root, read_only=True)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no jaxdet checkpoint found in {path}")
    try:
        out = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises several types for damaged/partial folders
        raise ValueError(f"checkpoint {root}/{step} cannot be read: {e}") from e
    mngr.close()
    variables = jax.tree.map(np.asarray, out["variables"])
    return variables, dict(out["meta"] or {})


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
        ``allow_missing``) keys the model needs that ``loaded`` lacks -- all listed, with ``source``.
    """
    flat_t = traverse_util.flatten_dict(target, sep="/")
    flat_l = traverse_util.flatten_dict(loaded, sep="/")
    extra = sorted(set(flat_l) - set(flat_t))
    missing = sorted(set(flat_t) - set(flat_l))
    shape = sorted(f"{k}: checkpoint {tuple(np.shape(flat_l[k]))} vs model {tuple(flat_t[k].shape)}"
                   for k in set(flat_l) & set(flat_t) if tuple(np.shape(flat_l[k])) != tuple(flat_t[k].shape))
    problems = []
    if extra:
        problems.append(f"{len(extra)} unexpected keys (not in this model): {_short(extra)}")
    if shape:
        problems.append(f"{len(shape)} mis-shaped: {_short(shape)}")
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if problems:
        raise ValueError(f"weights {source} do not fit this config: " + "; ".join(problems))
    if missing:
        log.info("weights %s: %d of %d arrays loaded; %d keep their initial values (e.g. %s)", source,
                 len(flat_l), len(flat_t), len(missing), _short(missing, 3))
    merged = {k: (np.asarray(flat_l[k], dtype=v.dtype) if k in flat_l else v) for k, v in flat_t.items()}
    return traverse_util.unflatten_dict(merged, sep="/")


def _short(items: list[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` s of a pytree (for restoring without allocating)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


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
