"""Many hosts on one machine: ``python -m jaxdet.train`` as 2 processes x 4 CPU devices equals 1 process x 8
devices with the same global batch, and both resume from the checkpoints they wrote.

The 2-process run is the real entry point started twice on localhost: process 0 gets the
``--coordinator_address/--num_processes/--process_id`` flags, process 1 the ``JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID`` environment variables a launcher sets; the cross-process collectives
run on gloo (jax's CPU default). Each process loads its 4 rows of every global batch of 8. The backbone's
trainable BatchNorm is ``norm='bn'``: statistics per device, 8 groups of 1 image in both set-ups.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from jaxdet.engine.checkpoint import load_variables
from tests.reliability.tiny_cli import REPO, train_argv, subprocess_env

OVERRIDES = {"solver.ims_per_batch": 8, "test.ims_per_batch": 8, "test.max_images": 8, "solver.warmup_iters": 0,
             "solver.base_lr": 0.01, "log_period": 1, "solver.checkpoint_period": 1, "solver.max_to_keep": 5,
             # per-device BatchNorm: its statistics groups must be the 8 devices of both processes, not 4
             "model.backbone.norm": "bn"}
TIMEOUT = 900  # seconds per run (all processes of it); compilation dominates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(runs: list[tuple[list[str], dict]], logs: list) -> None:
    """Starts every ``(argv, env)`` at once and waits for all; if one fails or the time runs out, kills the
    others (they would wait on collectives forever) and fails with every log's tail."""
    procs = []
    try:
        for (argv, env), log in zip(runs, logs):
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * len(procs):
        tails = "\n".join(f"----- {log} (exit {c}) -----\n{open(log, errors='replace').read()[-4000:]}"
                          for log, c in zip(logs, codes))
        raise AssertionError(f"exit statuses {codes} (a negative status: killed after a failure or the "
                             f"{TIMEOUT} s timeout)\n{tails}")


def _env(devices: int, **extra: str) -> dict:
    env = subprocess_env()
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
    return env


def train_two_processes(coco128_root, out, tmp_path, max_iter: int) -> None:
    """The tiny run on 2 processes x 4 devices (process 0 from flags, process 1 from the environment)."""
    argv = train_argv(coco128_root, out, **OVERRIDES, **{"solver.max_iter": max_iter})
    address = f"localhost:{_free_port()}"
    runs = [(argv + [f"--coordinator_address={address}", "--num_processes=2", "--process_id=0"], _env(4)),
            (argv, _env(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1"))]
    _launch(runs, [tmp_path / f"two_{max_iter}_p{i}.log" for i in range(2)])


def train_one_process(coco128_root, out, tmp_path, max_iter: int) -> None:
    """The same run on 1 process x 8 devices."""
    argv = train_argv(coco128_root, out, **OVERRIDES, **{"solver.max_iter": max_iter})
    _launch([(argv, _env(8))], [tmp_path / f"one_{max_iter}.log"])


def _losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["iteration"]: r["train/loss_total"] for r in records if "train/loss_total" in r}


def _max_param_diff(a: dict, b: dict) -> float:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    return max(float(np.max(np.abs(fa[k] - fb[k]))) for k in fa)


def _flat(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in _flat(v, f"{prefix}/{k}").items()}
    return {prefix: np.asarray(tree, np.float64)}


def test_two_processes_match_one_and_resume(coco128_root, tmp_path):
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    train_two_processes(coco128_root, two, tmp_path, max_iter=3)
    train_one_process(coco128_root, one, tmp_path, max_iter=3)

    # every process wrote its part of each checkpoint, with the checksums of the replicated state
    ckpt = lambda out, step: load_variables(str(out / "checkpoints" / str(step)))[0]
    step3 = two / "checkpoints" / "3"
    assert sorted(p.name for p in (step3 / "variables").glob("ocdbt.process_*")) == ["ocdbt.process_0",
                                                                                   "ocdbt.process_1"]
    assert (step3 / "checksums").is_dir()
    # only process 0 writes the run's files: one record per iteration, the log, the evaluation
    assert (two / "eval" / "metrics.json").exists() and (two / "log.txt").exists()
    l_two, l_one = _losses(two), _losses(one)
    assert sorted(l_two) == [1, 2, 3] and sorted(l_one) == [1, 2, 3]

    # The first update is the strict check of the batch split over processes and of the gradient averaging
    # over all 8 devices: the two runs differ only in the rounding of the cross-device gradient sum (gloo's
    # ring vs XLA's in-process all-reduce add in another order, ~1 ulp).
    diff1 = _max_param_diff(ckpt(two, 1)["params"], ckpt(one, 1)["params"])
    stats1 = _max_param_diff(ckpt(two, 1)["batch_stats"], ckpt(one, 1)["batch_stats"])
    update3 = _max_param_diff(ckpt(one, 3)["params"], ckpt(one, 1)["params"])
    diff3 = _max_param_diff(ckpt(two, 3)["params"], ckpt(one, 3)["params"])
    print(f"after step 1: max|param diff| {diff1:.3g}, max|batch_stats diff| {stats1:.3g}; after step 3: "
          f"{diff3:.3g} (steps 2-3 moved the parameters by up to {update3:.3g}); losses {l_two} vs {l_one}")
    assert diff1 < 1e-5 and stats1 < 1e-5
    for it in (1, 2):
        assert abs(l_two[it] - l_one[it]) < 1e-5 * max(1.0, abs(l_one[it]))
    # Later steps: the ~1e-9 differences can flip near-tied discrete choices (RPN top-k and NMS over the
    # still nearly uniform objectness of a fresh model, RoI labels at the IoU thresholds), which moves the
    # loss by ~1e-3; a wrong batch split or gradient average moves the update by its own size.
    assert update3 > 1e-3 and diff3 < 0.05 * update3

    # Resume: the 2-process checkpoint of step 3 is restored by 2 processes and, copied, by 1 process with 8
    # devices; from the same restored state step 4 agrees as strictly as step 1 did.
    resumed = tmp_path / "one_process_from_two"
    shutil.copytree(two / "checkpoints", resumed / "checkpoints")
    train_two_processes(coco128_root, two, tmp_path, max_iter=4)
    train_one_process(coco128_root, resumed, tmp_path, max_iter=4)
    for out in (two, resumed):
        assert "resumed from" in (out / "log.txt").read_text()
        assert 4 in _losses(out) and 2 not in _losses(resumed)
    diff4 = _max_param_diff(ckpt(two, 4)["params"], ckpt(resumed, 4)["params"])
    moved = _max_param_diff(ckpt(two, 4)["params"], ckpt(two, 3)["params"])
    l4_two, l4_one = _losses(two)[4], _losses(resumed)[4]
    print(f"step 4 resumed from the 2-process checkpoint: max|param diff| {diff4:.3g} (update {moved:.3g}); "
          f"loss {l4_two:.7f} (2 processes) vs {l4_one:.7f} (1 process)")
    assert moved > 1e-4 and diff4 < 1e-5
    assert abs(l4_two - l4_one) < 1e-5 * max(1.0, abs(l4_one))


def test_distributed_settings_from_flags_and_environment():
    from jaxdet.train import distributed_settings

    unset = {"coordinator_address": None, "num_processes": None, "process_id": None, "distributed": False}
    assert distributed_settings(unset, {}) is None  # a single process
    env = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert distributed_settings(unset, env) == {"coordinator_address": "host0:1234", "num_processes": 4,
                                                "process_id": 2}
    flags = {"coordinator_address": "a:1", "num_processes": 2, "process_id": 0, "distributed": False}
    assert distributed_settings(flags, env) == {"coordinator_address": "a:1", "num_processes": 2, "process_id": 0}
    # --distributed alone: jax detects the rest from the cluster (SLURM, Open MPI, ...)
    assert distributed_settings({**unset, "distributed": True}, {}) == {
        "coordinator_address": None, "num_processes": None, "process_id": None}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed_settings(unset, {**env, "JAX_PROCESS_ID": "first"})
