"""Plot training curves of one or several jaxdet runs (as MMDetection's ``tools/analysis_tools/analyze_logs.py``).

    python scripts/plot_logs.py output/run_a output/run_b/metrics.jsonl --keys loss_total bbox_AP \\
        --output plot.png [--legend a b] [--title ...]

Each LOG is a run's output folder or its ``metrics.jsonl`` (`jaxdet.engine.logger.MetricWriter`: one JSON
record per logging step with ``iteration`` and keys such as ``train/loss_total``, ``train/lr`` and, per
evaluation, ``bbox/AP``). Each key gets its own panel (stacked, shared x axis: iteration), each run one curve
in it. A key is a full record key or a short name: ``loss_total`` matches ``train/loss_total`` (the part after
the last ``/``), and ``bbox_AP`` matches ``bbox/AP`` (``/`` written as ``_``); a short name matching several
keys (e.g. ``AP`` for ``bbox/AP`` and ``segm/AP``) draws them all. A key found in no log is an error that lists
the keys there are.

A resumed run appends to its ``metrics.jsonl``: when an iteration appears more than once for a key, the last
record wins. Values logged as null (NaN) are skipped. Drawn with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

__all__ = ["read_metrics", "resolve_keys", "series", "plot_logs", "main"]


def _log_path(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"log {path} does not exist (give a run's output folder or its metrics.jsonl)")
    return path


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (or of the one in a run folder), in file order.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line is not a JSON object with an integer ``iteration`` (file and line number given).
    """
    path = _log_path(path)
    out = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("iteration"), int):
                raise ValueError(f"{path}:{n}: a record must be a JSON object with an integer 'iteration'")
            out.append(rec)
    return out


def _matches(short: str, key: str) -> bool:
    return key == short or key.endswith("/" + short) or key.replace("/", "_") == short


def resolve_keys(short: str, available: Sequence[str]) -> list[str]:
    """The record keys (sorted) that ``short`` names: equal, equal to the part after a ``/``, or equal with
    ``/`` written as ``_`` (``bbox_AP`` -> ``bbox/AP``). Empty if none."""
    return sorted(k for k in set(available) if k != "iteration" and _matches(short, k))


def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations int64 [n], values float64 [n]) of ``key``, sorted by iteration, the last record winning for
    a repeated iteration, nulls skipped."""
    last: dict[int, float] = {}
    for r in records:
        v = r.get(key)
        if v is not None:
            last[int(r["iteration"])] = float(v)
    its = np.array(sorted(last), dtype=np.int64)
    return its, np.array([last[i] for i in its], dtype=np.float64)


def plot_logs(logs: Sequence[str], keys: Sequence[str], output: str, legend: Sequence[str] | None = None,
              title: str | None = None):
    """Draws ``keys`` of every log in ``logs`` into ``output`` (PNG, PDF, SVG: by extension); returns the
    matplotlib Figure.

    Raises:
      FileNotFoundError: a log does not exist.
      ValueError: no keys; ``legend`` of the wrong length; a key found in no log (the message lists the keys
        the logs have).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not keys:
        raise ValueError("give at least one key (--keys loss_total bbox_AP ...)")
    if legend is not None and len(legend) != len(logs):
        raise ValueError(f"{len(legend)} legend names for {len(logs)} logs")
    runs = [read_metrics(p) for p in logs]
    names = list(legend) if legend is not None else [_run_name(p) for p in logs]
    available = sorted({k for recs in runs for r in recs for k in r if k != "iteration"})
    resolved = []
    for k in keys:
        full = resolve_keys(k, available)
        if not full:
            raise ValueError(f"key {k!r} is in none of the logs {list(logs)}; they have: {', '.join(available)}")
        resolved.append((k, full))
    fig, axes = plt.subplots(len(resolved), 1, figsize=(8, 3.2 * len(resolved)), sharex=True, squeeze=False)
    for ax, (short, full) in zip(axes[:, 0], resolved):
        for name, recs in zip(names, runs):
            for key in full:
                its, vals = series(recs, key)
                if its.size == 0:
                    continue
                label = name if len(full) == 1 else f"{name}: {key}"
                ax.plot(its, vals, marker="o" if its.size < 20 else None, markersize=3, label=label)
        ax.set_ylabel(full[0] if len(full) == 1 else short)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return fig


def _run_name(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.basename(path) == "metrics.jsonl":
        path = os.path.dirname(path)
    return os.path.basename(path.rstrip(os.sep)) or path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", metavar="LOG", help="run output folders or metrics.jsonl files")
    p.add_argument("--keys", nargs="+", default=["loss_total"], help="keys to plot (short names allowed)")
    p.add_argument("--output", default="plot.png", help="image file to write (default plot.png)")
    p.add_argument("--legend", nargs="+", help="one name per log (default: the run folder names)")
    p.add_argument("--title", help="figure title")
    args = p.parse_args(argv)
    try:
        plot_logs(args.logs, args.keys, args.output, args.legend, args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_logs: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
