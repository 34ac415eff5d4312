"""Train a detector and evaluate it with pycocotools.

    python -m jaxdet.train --config configs/faster_rcnn.py --config.data.root=/path/to/coco
    python -m jaxdet.train --config configs/quickstart.py          # embedded synthetic dataset, no download

Every config field can be overridden (``--config.solver.base_lr=0.01``). The output folder
(``config.output_dir``) receives ``log.txt``, ``metrics.jsonl``, TensorBoard event files,
``config.json``, orbax checkpoints under ``checkpoints/`` and the final evaluation
(``coco_instances_results.json``, ``metrics.json``) under ``eval/``. A run whose output folder already
holds a checkpoint resumes from it unless ``--noresume``.

Many hosts: pass ``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or rely on the
cluster's environment, which ``jax.distributed.initialize()`` reads by itself, with ``--distributed``).
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from jaxdet.data.pipeline import make_train_iterator
from jaxdet.engine import checkpoint as ckpt_lib
from jaxdet.engine import parallel
from jaxdet.engine.evaluator import inference_on_dataset
from jaxdet.engine.logger import MetricWriter, setup_logging
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import TrainState, create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.engine.bootstrap import init_variables, load_datasets, load_initial_weights, model_meta
from jaxdet.modeling.build import build_detector, trainable_mask

log = logging.getLogger("jaxdet.train")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or Inf (``solver.nan_policy='stop'``)."""


def train(config, resume: bool = True) -> dict:
    """Trains ``config`` to ``solver.max_iter`` and evaluates; returns the final evaluation metrics."""
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
    tx, schedule = build_optimizer(config.solver, variables["params"],
                                   trainable_mask(variables["params"], config.model.backbone.freeze_at))
    state = create_train_state(variables, tx, jax.random.key_data(jax.random.key(config.seed)))
    meta = model_meta(config, train_ds, num_classes)

    checkpointer = ckpt_lib.Checkpointer(os.path.join(out_dir, "checkpoints"), config.solver.max_to_keep)
    if resume and checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(ckpt_lib.abstract(state))
        log.info("resumed from %s at iteration %d", checkpointer.directory, int(state.step))
    state = parallel.replicate(state, mesh)
    start = int(jax.device_get(state.step))

    train_step = make_train_step(model, tx, schedule, mesh, skip_nonfinite=config.solver.nan_policy == "skip")
    predict_step = make_predict_step(model, mesh)
    writer = MetricWriter(out_dir, enabled=is_main)
    max_iter = config.solver.max_iter
    batches = make_train_iterator(
        train_ds, batch_size=config.solver.ims_per_batch, canvases=config.input.canvases,
        min_size_train=config.input.min_size_train, max_size_train=config.input.max_size_train,
        max_instances=config.data.max_instances, seed=config.seed, start_step=start, num_steps=max_iter - start,
        process_index=jax.process_index(), process_count=jax.process_count(), num_workers=config.data.num_workers,
        prefetch=config.data.prefetch, channel_order=config.input.format, flip_prob=config.input.random_flip)

    window: list[dict] = []
    t_window, t_compile = time.perf_counter(), None
    pending = None
    bar = tqdm(total=max_iter, initial=start, desc="train", unit="it", disable=not is_main, dynamic_ncols=True,
               mininterval=2.0)

    def handle(metrics):
        """Host side of one finished step (runs one step behind the device)."""
        nonlocal t_window
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        it = int(m.pop("step"))
        if not m.pop("finite"):
            bad = [k for k, v in m.items() if k.startswith("loss") and not np.isfinite(v)]
            msg = f"non-finite loss at iteration {it}: {', '.join(f'{k}={m[k]}' for k in bad)}"
            if config.solver.nan_policy == "skip":
                log.warning("%s; update skipped", msg)
                return
            raise NonFiniteLossError(msg + f"; the last good checkpoint is in {checkpointer.directory}")
        window.append(m)
        done = it + 1
        bar.update(1)
        if done % config.log_period == 0 or done == max_iter:
            avg = {k: float(np.median([w[k] for w in window])) for k in window[0]}
            dt = (time.perf_counter() - t_window) / len(window)
            avg["lr"] = m["lr"]
            eta = dt * (max_iter - done)
            terms = "  ".join(f"{k}: {v:.4f}" for k, v in avg.items() if k.startswith("loss"))
            log.info("iter %d/%d  %s  lr: %.5f  %.3f s/it  eta %s", done, max_iter, terms, avg["lr"], dt,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
            bar.set_postfix(loss=f"{avg['loss_total']:.3f}", lr=f"{avg['lr']:.4f}")
            writer.write(done, {**avg, "s_per_iter": dt}, prefix="train/")
            window.clear()
            t_window = time.perf_counter()

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
                handle(pending)
                pending = None
                checkpointer.save(state, meta)
            if config.test.eval_period and done % config.test.eval_period == 0 and done < max_iter:
                handle(pending) if pending is not None else None
                pending = None
                evaluate_and_log(predict_step, state, val_ds, config, mesh, writer, done,
                                 os.path.join(out_dir, f"eval_{done:07d}"))
        if pending is not None:
            handle(pending)
    finally:
        bar.close()
        checkpointer.wait()
    final_step = int(jax.device_get(state.step))
    if checkpointer.latest_step() != final_step:
        checkpointer.save(state, meta)
        checkpointer.wait()
    metrics = evaluate_and_log(predict_step, state, val_ds, config, mesh, writer, final_step,
                               os.path.join(out_dir, "eval"))
    writer.close()
    checkpointer.close()
    return metrics


def evaluate_and_log(predict_step, state: TrainState, dataset, config, mesh, writer, step: int, out: str) -> dict:
    """Evaluates the current weights on ``dataset`` and logs the box AP summary."""
    metrics = inference_on_dataset(predict_step, state.variables(), dataset, config, mesh,
                                   out if jax.process_index() == 0 else None)
    writer.write(step, {k: v for k, v in metrics.items() if k != "per_category_AP"}, prefix="bbox/")
    log.info("iteration %d: box AP %.2f  AP50 %.2f  AP75 %.2f", step, metrics["AP"], metrics["AP50"], metrics["AP75"])
    return metrics


def define_flags():
    """The command-line flags (defined only when run as a program, so the module stays importable)."""
    config = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
    flags.DEFINE_bool("resume", True, "Resume from the latest checkpoint in output_dir (--noresume starts fresh).")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host; reads the cluster env).")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
    return config


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize`` from the flags, or from the cluster environment with ``--distributed``."""
    f = flags.FLAGS
    if f.coordinator_address or f.distributed:
        jax.distributed.initialize(coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                                   process_id=f.process_id)


def main(argv):
    del argv
    config = flags.FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/faster_rcnn.py")
    maybe_initialize_distributed()
    train(config, resume=flags.FLAGS.resume)


if __name__ == "__main__":
    define_flags()
    app.run(main)
