"""The tiny config of ``tests/engine/tiny.py`` as ``python -m jaxdet.train`` command lines, run as subprocesses.

The reliability tests run the real program (flags, resume, exit status) on coco128 at a 128x128 canvas
with a narrow ResNet-18; subprocesses share the tests' persistent XLA compilation cache.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax

from tests.engine.tiny import REPO, TINY_OVERRIDES


def train_argv(coco128_root, output_dir, *extra: str, **overrides) -> list[str]:
    """``python -m jaxdet.train --config configs/quickstart.py`` + the tiny overrides + ``overrides``
    (``{"solver.max_iter": 10}``) + ``extra`` raw arguments (e.g. ``"--no-resume"``)."""
    items = [f"data.root={coco128_root}", f"output_dir={output_dir}", *TINY_OVERRIDES]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "jaxdet.train", "--config", os.path.join(REPO, "configs", "quickstart.py"),
            *[f"--config.{i}" for i in items], *extra]


def subprocess_env() -> dict:
    """The environment for a jaxdet subprocess: one CPU device, this session's compilation cache."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def popen(argv: list[str], log_path) -> subprocess.Popen:
    """Starts ``argv`` from the repository root with :func:`subprocess_env`, stdout+stderr to ``log_path``."""
    with open(log_path, "ab") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, cwd=REPO, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)


def run(argv: list[str], log_path, timeout: float = 300) -> int:
    """Runs ``argv`` to completion (see :func:`popen`); returns the exit status."""
    p = popen(argv, log_path)
    try:
        return p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
