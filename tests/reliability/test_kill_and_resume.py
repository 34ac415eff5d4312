"""Crash and resume: a run killed with SIGKILL after a checkpoint and restarted with the same command ends
bitwise identical to the uninterrupted run (CPU, same machine), with the same per-iteration losses."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import orbax.checkpoint as ocp

from jaxdet.config import load_config
from tests.engine.tiny import REPO, tiny_config
from tests.reliability.tiny_cli import TINY_OVERRIDES, popen, run, train_argv

MAX_ITER, PERIOD = 40, 10
OVERRIDES = {"solver.max_iter": MAX_ITER, "solver.checkpoint_period": PERIOD, "solver.max_to_keep": 10,
             "log_period": 1, "test.max_images": 2, "solver.warmup_iters": 15, "solver.base_lr": 0.01}
#: the killed run is killed once its first checkpoint is complete and it has logged this iteration
KILL_AFTER = PERIOD + 4


def _records(out) -> list[dict]:
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _train_records(out) -> list[dict]:
    """Per-iteration training records in file order, only the keys that must repeat exactly."""
    def keep(k):
        return k.startswith("train/loss") or k in ("train/lr", "train/grad_norm")

    return [{"iteration": r["iteration"], **{k: v for k, v in r.items() if keep(k)}}
            for r in _records(out) if "train/loss_total" in r]


def _read_step(step_dir) -> dict:
    """The raw arrays of a checkpoint step (no target structure), as numpy."""
    handlers = {"variables": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(os.path.dirname(step_dir), item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        out = m.restore(int(os.path.basename(step_dir)), args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(), train=ocp.args.StandardRestore()))
    return {"variables": out["variables"], "train": out["train"]}


def _flat(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}/{k}"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}/{i}"))
        return out
    return {prefix: np.asarray(tree)}


def test_cli_flags_match_tiny_config(coco128_root, tmp_path):
    argv = train_argv(coco128_root, tmp_path)
    overrides = [a for a in argv if a.startswith("--config.")]
    from_cli = load_config(os.path.join(REPO, "configs", "quickstart.py"), overrides)
    assert from_cli.to_dict() == tiny_config(coco128_root, str(tmp_path)).to_dict()
    assert len(TINY_OVERRIDES) + 2 == len(overrides)


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_identical(coco128_root, tmp_path):
    ref, crash = tmp_path / "uninterrupted", tmp_path / "crashed"
    assert run(train_argv(coco128_root, ref, **OVERRIDES), tmp_path / "ref.log") == 0, \
        (tmp_path / "ref.log").read_text()[-3000:]

    # The same command, killed once it has logged iteration KILL_AFTER (a checkpoint exists by then).
    argv = train_argv(coco128_root, crash, **OVERRIDES)
    p = popen(argv, tmp_path / "crash.log")
    deadline = time.monotonic() + 240
    try:
        while p.poll() is None and time.monotonic() < deadline:
            its = [r["iteration"] for r in _train_records(crash)]
            # a step folder gets its final name only once completely written (orbax renames it)
            if (crash / "checkpoints" / str(PERIOD)).is_dir() and its and max(its) >= KILL_AFTER:
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if p.poll() is None and time.monotonic() >= deadline:
            p.kill()
    assert p.wait() == -signal.SIGKILL, (tmp_path / "crash.log").read_text()[-3000:]
    killed_at = max(r["iteration"] for r in _train_records(crash))
    assert not (crash / "eval" / "metrics.json").exists()
    assert KILL_AFTER <= killed_at < MAX_ITER

    # Restart with the same command: it resumes from the newest complete checkpoint and finishes.
    assert run(argv, tmp_path / "resume.log") == 0, (tmp_path / "resume.log").read_text()[-3000:]
    log = (crash / "log.txt").read_text()
    resumed = [int(x) for x in re.findall(r"resumed from .* at iteration (\d+)", log)]
    assert len(resumed) == 1 and resumed[0] % PERIOD == 0 and PERIOD <= resumed[0] <= killed_at, (resumed, killed_at)
    print(f"killed after iteration {killed_at}, resumed from the checkpoint at iteration {resumed[0]}")

    # Final state (parameters, BN statistics, momentum, step, PRNG state): bitwise equal.
    a = _flat(_read_step(ref / "checkpoints" / str(MAX_ITER)))
    b = _flat(_read_step(crash / "checkpoints" / str(MAX_ITER)))
    assert sorted(a) == sorted(b) and len(a) > 50
    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
    assert not differ, differ[:10]
    assert int(a["/train/step"]) == MAX_ITER
    init = _flat(_read_step(ref / "checkpoints" / str(PERIOD)))
    assert any(a[k].tobytes() != init[k].tobytes() for k in a if k.startswith("/variables/params"))  # it trained

    # Loss trajectory: every iteration's losses, lr and gradient norm are the uninterrupted run's, both
    # those the killed process logged and those recomputed after the resume.
    ref_recs = _train_records(ref)
    assert [r["iteration"] for r in ref_recs] == list(range(1, MAX_ITER + 1))
    by_it = {r["iteration"]: r for r in ref_recs}
    crash_recs = _train_records(crash)
    first_pass = crash_recs[:killed_at]
    second_pass = crash_recs[killed_at:]
    assert [r["iteration"] for r in first_pass] == list(range(1, killed_at + 1))
    assert [r["iteration"] for r in second_pass] == list(range(resumed[0] + 1, MAX_ITER + 1))
    assert killed_at > resumed[0]  # some iterations ran twice
    for r in first_pass + second_pass:
        assert r == by_it[r["iteration"]], r["iteration"]
    assert len({r["train/lr"] for r in ref_recs}) > 10  # the warmup spans the resume point

    # The final evaluations agree too.
    assert json.loads((ref / "eval" / "metrics.json").read_text()) == \
        json.loads((crash / "eval" / "metrics.json").read_text())
