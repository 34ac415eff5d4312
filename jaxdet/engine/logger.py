"""Run logging: a text log, JSON lines and TensorBoard events in the output folder."""
from __future__ import annotations

import json
import logging
import math
import os
import sys

import numpy as np


def setup_logging(output_dir: str | None, process_index: int = 0) -> None:
    """Logs INFO to stderr and to ``output_dir/log.txt`` on process 0; other processes (multi-host) log only
    warnings and errors, to stderr; quiets chatty libraries."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    h.setLevel(logging.INFO if process_index == 0 else logging.WARNING)
    root.addHandler(h)
    if output_dir and process_index == 0:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        fh.setFormatter(fmt)
        root.addHandler(fh)
    for name in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MetricWriter:
    """Writes scalar metrics to ``metrics.jsonl`` (one JSON record per call) and TensorBoard event files.

    Only process 0 writes. Values must be Python/numpy scalars; nested dicts are flattened with ``/``.
    """

    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(output_dir, exist_ok=True)
            self._tb = SummaryWriter(logdir=output_dir)
            self._jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a")

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """One JSON line ``{"iteration": step, prefix + key: value, ...}`` and the finite values to TensorBoard."""
        if not self.enabled:
            return
        flat = _flatten(metrics, prefix)
        record = {"iteration": int(step)}
        for k, v in flat.items():
            v = float(v)
            record[k] = None if math.isnan(v) else v
            if math.isfinite(v):
                self._tb.add_scalar(k, v, int(step))
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both writers."""
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def _flatten(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.number, np.ndarray)) and np.ndim(v) == 0:
            out[key] = v
    return out
