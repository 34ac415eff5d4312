"""NaN/Inf losses: 'stop' ends the run naming the iteration and the loss terms, writes no checkpoint after
the last good one and exits with status 1; 'skip' leaves the state unchanged for that step and counts it.

The NaN comes from a poisoned batch (its ground-truth boxes set to NaN at one step), which makes the RPN
box-regression loss NaN, through the real train loop.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jaxdet.train as train_mod
from jaxdet.engine.checkpoint import load_variables
from tests.engine.tiny import tiny_config
from tests.reliability.test_kill_and_resume import _flat, _read_step

POISONED_STEP = 2  # 0-based step index: the 3rd iteration ("iteration 3" in the log)


@pytest.fixture
def poison(monkeypatch):
    """Sets the ground-truth boxes of the batches of the given steps to NaN."""
    steps = set()
    real = train_mod.make_train_iterator

    def poisoned(*args, **kwargs):
        for step, batch in real(*args, **kwargs):
            if step in steps:
                batch = dict(batch, gt_boxes=np.full_like(batch["gt_boxes"], np.nan))
            yield step, batch

    monkeypatch.setattr(train_mod, "make_train_iterator", poisoned)
    return steps


def _config(root, out, **kw):
    base = {"solver.max_iter": 5, "solver.checkpoint_period": 1, "solver.max_to_keep": 10, "log_period": 1,
            "test.max_images": 2, "solver.warmup_iters": 0, "solver.base_lr": 0.01}
    return tiny_config(root, str(out), **{**base, **kw})


def _log_lines(out, word):
    """Lines of the run's ``log.txt`` containing ``word`` (train() routes logging there)."""
    return [line for line in (out / "log.txt").read_text().splitlines() if word in line]


def test_skip_policy_keeps_the_state_then_stop_policy_exits_1(coco128_root, tmp_path, poison):
    poison.add(POISONED_STEP)
    out = tmp_path / "run"

    # --- skip: iteration 3's update is not applied, training goes on, the skip is counted
    metrics = train_mod.train(_config(coco128_root, out, **{"solver.nan_policy": "skip", "test.eval_period": 2}),
                              resume=False)
    assert np.isfinite(metrics["AP"])
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2", "3", "4", "5"]
    s2, s3, s4 = (_flat(_read_step(out / "checkpoints" / str(i))) for i in (2, 3, 4))
    state_keys = [k for k in s2 if k != "/train/step"]
    assert all(s3[k].tobytes() == s2[k].tobytes() for k in state_keys)  # weights, BN stats, momentum, rng
    assert (int(s2["/train/step"]), int(s3["/train/step"])) == (2, 3)
    assert any(s4[k].tobytes() != s3[k].tobytes() for k in state_keys if k.startswith("/variables/params"))
    warn = _log_lines(out, "non-finite loss at iteration 3")
    assert len(warn) == 1 and "loss_rpn_reg=nan" in warn[0] and "update skipped" in warn[0], warn
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = {r["iteration"]: r for r in recs if "train/loss_total" in r}
    assert sorted(train_recs) == [1, 2, 4, 5]
    assert [train_recs[i]["train/nonfinite_skipped"] for i in (1, 2, 4, 5)] == [0, 0, 1, 1]
    # evaluations at 2, 4 and the end (5); checkpoints_best holds the first one with the highest AP
    aps = [(r["iteration"], r["bbox/AP"]) for r in recs if "bbox/AP" in r]
    assert [i for i, _ in aps] == [2, 4, 5]
    best_it = max(aps, key=lambda t: (t[1], -t[0]))[0]
    assert os.listdir(out / "checkpoints_best") == [str(best_it)]

    # --- stop, in the same folder with resume=False: earlier checkpoints are moved aside, the run stops at
    # iteration 3 naming the terms, exits 1, and the last checkpoint is the good one of iteration 2.
    with pytest.raises(SystemExit) as exit_info:
        train_mod.run(_config(coco128_root, out, **{"solver.nan_policy": "stop"}), resume=False)
    assert exit_info.value.code == 1
    (msg,) = _log_lines(out, "training stopped")
    assert "non-finite loss at iteration 3:" in msg and "loss_rpn_reg=nan" in msg and "loss_total=nan" in msg
    assert "loss_cls=" not in msg  # only the non-finite terms are named
    assert str(out / "checkpoints" / "2") in msg
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]
    previous = [d for d in os.listdir(out) if d.startswith("checkpoints.previous-")]
    assert len(previous) == 1 and sorted(os.listdir(out / previous[0])) == ["1", "2", "3", "4", "5"]
    variables, _ = load_variables(str(out / "checkpoints" / "2"))
    assert all(np.isfinite(v).all() for v in _flat(variables).values())


def test_skip_policy_stops_a_diverged_run(coco128_root, tmp_path, poison):
    poison.update(range(1, 100))
    n = train_mod.MAX_CONSECUTIVE_NONFINITE
    cfg = _config(coco128_root, tmp_path / "run", **{"solver.nan_policy": "skip", "solver.max_iter": n + 3,
                                                      "solver.checkpoint_period": 100})
    in_a_row = rf"iteration {n + 2}:.*\({n + 1} non-finite steps in a row\)"
    with pytest.raises(train_mod.NonFiniteLossError, match=in_a_row):
        train_mod.train(cfg, resume=False)
    assert not (tmp_path / "run" / "checkpoints" / str(n + 3)).exists()
