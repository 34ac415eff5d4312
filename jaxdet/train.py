"""Train a detector and evaluate it with pycocotools.

    python -m jaxdet.train --config configs/faster_rcnn.py --config.data.root=/path/to/coco
    python -m jaxdet.train --config configs/quickstart.py          # embedded synthetic dataset, no download

Every config field can be overridden (``--config.solver.base_lr=0.01``); an unknown key or a value of the
wrong type stops the program before any work, naming the key. The output folder (``config.output_dir``)
receives ``log.txt``, ``metrics.jsonl``, TensorBoard event files, ``config.json``, orbax checkpoints under
``checkpoints/`` (the last ``solver.max_to_keep``) and ``checkpoints_best/`` (the best box AP of the
evaluations), and the final evaluation (``coco_instances_results.json``, ``metrics.json``) under ``eval/``.

Crash and resume: a run whose output folder holds a checkpoint resumes from its newest intact one (a
damaged newest checkpoint is reported and the previous one used); ``--no-resume`` (or ``--noresume``)
starts over, moving earlier checkpoints aside. The data order, every augmentation and the step's PRNG key
are functions of (seed, step) and the PRNG state is in the checkpoint, so a resumed run computes exactly
the steps the uninterrupted run would have.

Non-finite losses: with ``solver.nan_policy="stop"`` (default) the run stops at the first NaN/Inf loss or
gradient, naming the iteration and the terms, without writing a checkpoint (the last good one stays),
and the program exits with status 1. With ``"skip"`` such steps leave the weights and optimizer state
unchanged, are counted (``train/nonfinite_skipped`` in ``metrics.jsonl``) and logged; more than
:data:`MAX_CONSECUTIVE_NONFINITE` in a row still stop the run (it has diverged).

Many hosts: start the same command on every host with ``--coordinator_address=host0:port``,
``--num_processes=P`` and ``--process_id=p`` (or the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or with ``--distributed`` on a cluster that
``jax.distributed.initialize()`` detects by itself (SLURM, Open MPI, Kubernetes, Cloud TPU). Each process
loads its ``B / P`` rows of every global batch; the step runs on the mesh of all devices; every process
writes its part of each orbax checkpoint and restores from it; logs, ``metrics.jsonl``, TensorBoard
events and evaluation files are written by process 0 only (the detections are gathered first, so every
process gets the same metrics). On CPU the cross-process collectives use gloo (jax's default).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from jaxdet.data.pipeline import instance_target_args, make_train_iterator
from jaxdet.engine import checkpoint as ckpt_lib
from jaxdet.engine import parallel
from jaxdet.engine.bootstrap import init_variables, load_datasets, load_initial_weights, model_meta
from jaxdet.engine.evaluator import inference_on_dataset
from jaxdet.engine.logger import MetricWriter, setup_logging
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import TrainState, create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.modeling.build import build_detector, trainable_mask

log = logging.getLogger("jaxdet.train")

#: With ``solver.nan_policy="skip"``, this many non-finite steps in a row stop the run anyway.
MAX_CONSECUTIVE_NONFINITE = 10

NAN_POLICIES = ("stop", "skip")


class ConfigError(ValueError):
    """A config value the train loop cannot use (raised by :func:`validate_config` before any work)."""


class NonFiniteLossError(RuntimeError):
    """A training loss or gradient is NaN or Inf (``solver.nan_policy='stop'``, or too many in a row with
    ``'skip'``); the message names the iteration (1-based, as in the log) and the non-finite terms."""


def validate_config(config) -> None:
    """Checks the values the train loop relies on, before any work (data, compilation) starts.

    Raises:
      ConfigError (a ValueError): a value out of range; the message names the config key and the allowed
        values.
    """
    def need(ok: bool, key: str, value, what: str):
        if not ok:
            raise ConfigError(f"config {key}={value!r}: {what}")

    s = config.solver
    need(s.nan_policy in NAN_POLICIES, "solver.nan_policy", s.nan_policy, f"must be one of {NAN_POLICIES}")
    for key, value in (("solver.max_iter", s.max_iter), ("solver.ims_per_batch", s.ims_per_batch),
                       ("solver.checkpoint_period", s.checkpoint_period), ("solver.max_to_keep", s.max_to_keep),
                       ("log_period", config.log_period), ("test.ims_per_batch", config.test.ims_per_batch),
                       ("data.max_instances", config.data.max_instances)):
        need(isinstance(value, int) and value > 0, key, value, "must be a positive integer")
    need(config.test.eval_period >= 0, "test.eval_period", config.test.eval_period, "must be >= 0 (0: at the end)")
    need(len(config.input.canvases) > 0, "input.canvases", config.input.canvases, "needs at least one (H, W)")


def _rss_mb() -> float:
    """This process's resident set size in MiB (Linux ``/proc/self/statm``; elsewhere the peak RSS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _move_aside(path: str) -> None:
    """Renames an earlier run's checkpoint folder ``path`` to ``path.previous-<time>`` (a fresh start)."""
    if jax.process_index() == 0 and os.path.isdir(path) and os.listdir(path):
        dst = ckpt_lib.rename_aside(path, f".previous-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("starting over (--no-resume): moved the earlier checkpoints %s to %s", path, dst)
    parallel.sync_processes("jaxdet_move_aside")


def train(config, resume: bool = True) -> dict:
    """Trains ``config`` to ``solver.max_iter``, evaluating at ``test.eval_period`` and at the end.

    Args:
      config: a locked run config (``configs/*.py`` with overrides).
      resume: continue from the newest intact checkpoint in ``output_dir/checkpoints`` if there is one;
        False starts over (an earlier run's checkpoints are renamed ``checkpoints.previous-<time>``).

    Returns:
      the final evaluation metrics (COCO's 12 numbers in percent, ``per_category_AP``).

    Raises:
      ConfigError: a bad config value (before any work).
      ValueError: a checkpoint that does not fit the config or was trained on other classes, or bad data
        (see :mod:`jaxdet.data.coco` and :mod:`jaxdet.data.pipeline`).
      NonFiniteLossError: a NaN/Inf loss or gradient (see the module docstring).
      CheckpointDamagedError: resuming, and every checkpoint in the folder is damaged.
    """
    validate_config(config)
    out_dir = os.path.abspath(config.output_dir)
    setup_logging(out_dir, jax.process_index())
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1, default=str)
    log.info("devices: %d (%s), processes: %d", jax.device_count(), jax.devices()[0].platform, jax.process_count())

    loaded = load_initial_weights(config, config.model.weights) if config.model.weights else None
    train_ds, val_ds = load_datasets(config)
    num_classes = config.model.num_classes if config.model.num_classes > 0 else train_ds.num_classes
    if num_classes != train_ds.num_classes:
        raise ValueError(f"model.num_classes={num_classes} but {train_ds.json_path} has {train_ds.num_classes}")
    model = build_detector(config.model, num_classes)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.solver.ims_per_batch, mesh)

    variables = init_variables(model, config, config.seed)
    if loaded is not None:
        variables = ckpt_lib.merge_variables(variables, loaded, config.model.weights, allow_missing=True)
    trainable = trainable_mask(variables["params"], config.model.backbone.freeze_at)
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable)
    state = create_train_state(variables, tx, jax.random.key_data(jax.random.key(config.seed)))
    meta = model_meta(config, train_ds, num_classes)

    ckpt_dir, best_dir = os.path.join(out_dir, "checkpoints"), os.path.join(out_dir, "checkpoints_best")
    if not resume:
        _move_aside(ckpt_dir)
        _move_aside(best_dir)
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, config.solver.max_to_keep)
    best = ckpt_lib.BestCheckpointer(best_dir, metric="AP", mode="max")
    if resume and checkpointer.latest_step() is not None:
        state, saved_meta = checkpointer.restore(ckpt_lib.abstract(state, parallel.replicated(mesh)))
        saved_ids = (saved_meta or {}).get("category_ids")
        if saved_ids is not None and list(saved_ids) != meta["category_ids"]:
            raise ValueError(f"the checkpoints in {checkpointer.directory} were trained on other classes (category "
                             f"ids {saved_ids[:10]}...) than {train_ds.json_path} ({meta['category_ids'][:10]}...); "
                             "use another output_dir or --no-resume")
        log.info("resumed from %s at iteration %d", checkpointer.directory, int(state.step))
    state = parallel.replicate(state, mesh)
    start = int(jax.device_get(state.step))
    max_iter = config.solver.max_iter
    if start >= max_iter:
        log.info("the checkpoint is at iteration %d >= solver.max_iter=%d: nothing to train", start, max_iter)

    skip = config.solver.nan_policy == "skip"
    train_step = parallel.align_processes(
        make_train_step(model, tx, schedule, mesh, skip_nonfinite=skip, trainable=trainable), "train")
    predict_step = parallel.align_processes(make_predict_step(model, mesh), "predict")
    writer = MetricWriter(out_dir, enabled=is_main)
    batches = make_train_iterator(
        train_ds, batch_size=config.solver.ims_per_batch, canvases=config.input.canvases,
        min_size_train=config.input.min_size_train, max_size_train=config.input.max_size_train,
        max_instances=config.data.max_instances, seed=config.seed, start_step=start,
        num_steps=max(max_iter - start, 0), process_index=jax.process_index(), process_count=jax.process_count(),
        num_workers=config.data.num_workers, prefetch=config.data.prefetch, channel_order=config.input.format,
        flip_prob=config.input.random_flip, **instance_target_args(config, train_ds))

    window: list[dict] = []
    t_window, t_compile = time.perf_counter(), None
    pending = None
    skipped = {"total": 0, "in_a_row": 0}
    bar = tqdm(total=max_iter, initial=min(start, max_iter), desc="train", unit="it", disable=not is_main,
               dynamic_ncols=True, mininterval=2.0)

    def handle(metrics):
        """Host side of one finished step (runs one step behind the device)."""
        nonlocal t_window
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        done = int(m.pop("step")) + 1  # 1-based iteration, as in the log lines and metrics.jsonl
        bar.update(1)
        if not m.pop("finite"):
            bad = [k for k in sorted(m) if k.startswith("loss")] + ["grad_norm"]
            bad = [k for k in bad if not np.isfinite(m[k])]
            msg = f"non-finite loss at iteration {done}: {', '.join(f'{k}={m[k]}' for k in bad)}"
            skipped["in_a_row"] += 1
            if skip and skipped["in_a_row"] <= MAX_CONSECUTIVE_NONFINITE:
                skipped["total"] += 1
                log.warning("%s; update skipped (solver.nan_policy='skip'; %d skipped so far)", msg,
                            skipped["total"])
                return
            if skip:
                msg += f" ({skipped['in_a_row']} non-finite steps in a row)"
            latest = checkpointer.latest_step()
            raise NonFiniteLossError(msg + "; no checkpoint written, the last good one is " + (
                checkpointer.step_dir(latest) if latest is not None else f"absent (none in {checkpointer.directory})"))
        skipped["in_a_row"] = 0
        window.append(m)
        if done % config.log_period == 0 or done == max_iter:
            avg = {k: float(np.median([w[k] for w in window])) for k in window[0]}
            dt = (time.perf_counter() - t_window) / len(window)
            avg["lr"] = m["lr"]
            eta = dt * (max_iter - done)
            terms = "  ".join(f"{k}: {v:.4f}" for k, v in avg.items() if k.startswith("loss"))
            rss = _rss_mb()
            log.info("iter %d/%d  %s  lr: %.5f  %.3f s/it  eta %s  host mem %.0f MiB", done, max_iter, terms,
                     avg["lr"], dt, time.strftime("%H:%M:%S", time.gmtime(eta)), rss)
            bar.set_postfix(loss=f"{avg['loss_total']:.3f}", lr=f"{avg['lr']:.4f}")
            writer.write(done, {**avg, "s_per_iter": dt, "host_rss_mb": rss,
                                "nonfinite_skipped": skipped["total"]}, prefix="train/")
            window.clear()
            t_window = time.perf_counter()

    def evaluate_now(done: int, out: str) -> dict:
        metrics = evaluate_and_log(predict_step, state, val_ds, config, mesh, writer, done, out)
        best.update(state, meta, metrics)
        return metrics

    try:
        for step, batch in batches:
            t0 = time.perf_counter()
            state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
            if t_compile is None:
                jax.block_until_ready(metrics)
                t_compile = time.perf_counter() - t0
                log.info("first train step (compilation + run): %.1f s", t_compile)
                t_window = time.perf_counter()
            if pending is not None:
                handle(pending)
            pending = metrics
            done = step + 1
            if done % config.solver.checkpoint_period == 0 and done < max_iter:
                handle(pending)  # raises before a non-finite state is saved
                pending = None
                checkpointer.save(state, meta)
            if config.test.eval_period and done % config.test.eval_period == 0 and done < max_iter:
                handle(pending) if pending is not None else None
                pending = None
                evaluate_now(done, os.path.join(out_dir, f"eval_{done:07d}"))
        if pending is not None:
            handle(pending)
    finally:
        bar.close()
        checkpointer.wait()
        best.wait()
    final_step = int(jax.device_get(state.step))
    if checkpointer.latest_step() != final_step:
        checkpointer.save(state, meta)
        checkpointer.wait()
    metrics = evaluate_now(final_step, os.path.join(out_dir, "eval"))
    writer.close()
    checkpointer.close()
    best.close()
    return metrics


def evaluate_and_log(predict_step, state: TrainState, dataset, config, mesh, writer, step: int, out: str) -> dict:
    """Evaluates the current weights on ``dataset`` and logs the AP summaries (``bbox/*``, and ``segm/*`` or
    ``keypoints/*`` for Mask / Keypoint R-CNN, in the metrics)."""
    metrics = inference_on_dataset(predict_step, state.variables(), dataset, config, mesh,
                                   out if jax.process_index() == 0 else None)
    writer.write(step, {k: v for k, v in metrics.items() if not isinstance(v, dict)}, prefix="bbox/")
    for task in ("segm", "keypoints"):
        if task in metrics:
            writer.write(step, {k: v for k, v in metrics[task].items() if not isinstance(v, dict)}, prefix=f"{task}/")
    log.info("iteration %d: box AP %.2f  AP50 %.2f  AP75 %.2f", step, metrics["AP"], metrics["AP50"], metrics["AP75"])
    return metrics


def run(config, resume: bool = True) -> dict:
    """:func:`train` for the command line: a non-finite loss or a bad config value is logged as one line and
    ends the program with exit status 1 (``SystemExit(1)``); other errors propagate with their traceback."""
    try:
        return train(config, resume=resume)
    except NonFiniteLossError as e:
        log.error("training stopped: %s", e)
        raise SystemExit(1) from None
    except ConfigError as e:
        log.error("%s", e)
        raise SystemExit(1) from None


# ------------------------------------------------------------------------------------ command line

_ARGV_SPELLINGS = {"--no-resume": "--noresume", "--no_resume": "--noresume"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accepts ``--no-resume`` / ``--no_resume`` for absl's ``--noresume`` (other arguments unchanged)."""
    return [_ARGV_SPELLINGS.get(a, a) for a in argv]


def unknown_config_overrides(argv: list[str]) -> list[str]:
    """The ``--config.a.b=value`` overrides in ``argv`` whose key ``a.b`` the config file lacks.

    Reads the config file named by ``--config=path`` / ``--config path`` (without overrides). Returns []
    when there is no config file or it cannot be loaded (absl then reports that itself).
    """
    from jaxdet.config import load_config

    path = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None:
        return []
    try:
        config = load_config(path)
    except Exception:  # noqa: BLE001 -- absl reports a bad config file with its own message
        return []
    bad = []
    for a in argv:
        if not a.startswith("--config."):
            continue
        key = a[len("--config."):].split("=", 1)[0]
        node, ok = config, True
        for part in key.split("."):
            if hasattr(node, "keys") and part in node:
                node = node[part]
            else:
                ok = False
                break
        if not ok:
            bad.append(key)
    return bad


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that reports an unknown config key as one line naming the key, then exits 1.

    (ml_collections raises a bare ``AttributeError``/``KeyError`` with a traceback for an unknown override;
    a value of the wrong type is already an absl ``flags.Error`` with the flag named.)
    """
    try:
        return flags.FLAGS(normalize_argv(argv))
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except (AttributeError, KeyError) as e:
        keys = unknown_config_overrides(argv)
        what = (f"unknown config key(s) {', '.join(keys)}" if keys else f"bad config override ({e})")
        sys.stderr.write(f"FATAL Flags parsing error: {what}; the config file has no such field (see "
                         "--helpfull for the keys)\n")
        sys.exit(1)


def define_flags():
    """The command-line flags (defined only when run as a program, so the module stays importable)."""
    config = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
    flags.DEFINE_bool("resume", True, "Resume from the newest intact checkpoint in output_dir "
                      "(--no-resume / --noresume starts over, moving earlier checkpoints aside).")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host; reads the cluster env).")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                        "(default: $JAX_COORDINATOR_ADDRESS).")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (default: $JAX_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (default: $JAX_PROCESS_ID).")
    return config


#: Environment variables read when the corresponding flag is not given (launchers set them).
DISTRIBUTED_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
                   "process_id": "JAX_PROCESS_ID"}


def distributed_settings(flag_values: dict, environ=os.environ) -> dict | None:
    """The arguments of ``jax.distributed.initialize`` (None: run as a single process).

    Args:
      flag_values: ``{"coordinator_address", "num_processes", "process_id", "distributed"}`` from the flags.
      environ: where :data:`DISTRIBUTED_ENV` is read for a flag left unset.

    Returns:
      ``{"coordinator_address", "num_processes", "process_id"}`` (None entries are detected by jax from the
      cluster environment), or None when neither a coordinator address nor ``--distributed`` is given.

    Raises:
      ValueError: ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` is not an integer.
    """
    out = {}
    for key, var in DISTRIBUTED_ENV.items():
        value = flag_values.get(key)
        if value is None and environ.get(var, "") != "":
            value = environ[var]
            if key != "coordinator_address":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"{var}={value!r} is not an integer") from None
        out[key] = value
    if out["coordinator_address"] or flag_values.get("distributed"):
        return out
    return None


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize`` from the flags or the environment (see :func:`distributed_settings`)."""
    f = flags.FLAGS
    settings = distributed_settings({"coordinator_address": f.coordinator_address, "num_processes": f.num_processes,
                                     "process_id": f.process_id, "distributed": f.distributed})
    if settings is not None:
        jax.distributed.initialize(**settings)
        ckpt_lib.use_distributed_barriers()


def main(argv):
    del argv
    config = flags.FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/faster_rcnn.py")
    maybe_initialize_distributed()
    run(config, resume=flags.FLAGS.resume)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
