"""Configs: Python files with ``get_config()`` returning an ``ml_collections.ConfigDict``.

The command line uses ml_collections' own flag (``config_flags.DEFINE_config_file``), so every field
can be overridden as ``--config.solver.base_lr=0.01`` with type checking, and an unknown key fails
before any work starts. :func:`load_config` gives programs and tests the same parser without a
global absl flag.
"""
from __future__ import annotations

import os
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file and applies ``key=value`` overrides with ml_collections' parser.

    Args:
      path: a Python file defining ``get_config()``; ``file.py:arg`` passes ``arg`` to it, as with
        ``--config``.
      overrides: strings such as ``"solver.base_lr=0.01"`` or ``"--config.solver.base_lr=0.01"``.

    Returns:
      The ConfigDict, locked (new keys cannot be added by mistake).

    Raises:
      FileNotFoundError: the config file does not exist.
      ValueError: an override names an unknown key or gives a value of the wrong type; the message
        names the key.
    """
    if not os.path.exists(str(path).split(":")[0]):
        raise FileNotFoundError(f"config file {path} does not exist")
    fv = flags.FlagValues()
    argv = ["jaxdet", f"--config={path}"]
    for o in overrides:
        argv.append(o if o.startswith("--") else "--config." + o)
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
    except (AttributeError, KeyError) as e:
        raise ValueError(f"config {path}: unknown key in overrides {list(overrides)}: {e}") from None
    except flags.Error as e:
        raise ValueError(f"config {path}: {e}") from None
    return fv.config


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON-serialisable plain dict of a config (tuples become lists)."""
    return config.to_dict()


def base_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config ``name`` (e.g. ``"faster_rcnn"``) next to ``config_file``, unlocked.

    For config files that derive from another one (``base_config(__file__, "faster_rcnn")``) without
    making the configs folder a Python package.
    """
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jaxdet_config_{name}", path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"base config {path} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.unlock()
    return config
