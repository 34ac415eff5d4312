"""Evaluate a checkpoint with pycocotools (box AP) and write COCO-format detections.

    python -m jaxdet.evaluate --config configs/faster_rcnn.py --checkpoint output/faster_rcnn/checkpoints \\
        --config.data.root=/path/to/coco

``--checkpoint`` is a training run's folder, its ``checkpoints/`` folder, one step's folder, or the output of
``checkpoints_convert``. The checkpoint's own classes and pixel convention (its ``meta``) override the config.
Writes ``coco_instances_results.json`` (dataset category ids, ``[x, y, w, h]`` boxes in original-image
pixels) and ``metrics.json`` (the 12 COCO numbers and per-category AP, in percent) to ``--output_dir``
(default ``<config.output_dir>/inference``).
"""
from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxdet.engine import checkpoint as ckpt_lib
from jaxdet.engine.bootstrap import load_datasets, model_shapes
from jaxdet.engine import parallel
from jaxdet.engine.evaluator import inference_on_dataset
from jaxdet.engine.logger import setup_logging
from jaxdet.engine.steps import make_predict_step
from jaxdet.modeling.build import build_detector

log = logging.getLogger("jaxdet.evaluate")


def evaluate(config, checkpoint: str, output_dir: str | None = None) -> dict:
    """Loads ``checkpoint``, runs it over ``config``'s val split and returns the COCO metrics.

    Raises:
      FileNotFoundError: no checkpoint at ``checkpoint``.
      ValueError: the checkpoint does not fit the config (missing/extra/mis-shaped weights, listed), or its
        classes differ from the annotation file's.
    """
    output_dir = os.path.abspath(output_dir or os.path.join(config.output_dir, "inference"))
    setup_logging(output_dir, jax.process_index())
    variables, meta = ckpt_lib.load_variables(checkpoint)
    for change in ckpt_lib.apply_meta_to_config(config, meta, checkpoint):
        log.info("from the checkpoint: %s", change)
    _, val_ds = load_datasets(config, train=False)
    ids = meta.get("category_ids")
    if ids is not None and not set(val_ds.category_ids) <= set(ids):
        missing = sorted(set(val_ds.category_ids) - set(ids))
        raise ValueError(f"checkpoint {checkpoint} predicts {len(ids)} classes but {val_ds.json_path} has "
                         f"categories it does not know: ids {missing[:10]}")
    num_classes = meta.get("num_classes") or (config.model.num_classes if config.model.num_classes > 0
                                              else val_ds.num_classes)
    model = build_detector(config.model, num_classes)
    variables = ckpt_lib.merge_variables(model_shapes(model), variables, checkpoint, allow_missing=False)
    mesh = parallel.make_mesh()
    variables = parallel.replicate(variables, mesh)
    metrics = inference_on_dataset(make_predict_step(model, mesh), variables, val_ds, config, mesh,
                                   output_dir if jax.process_index() == 0 else None, category_ids=ids)
    log.info("box AP %.2f  AP50 %.2f  AP75 %.2f  (%s)", metrics["AP"], metrics["AP50"], metrics["AP75"], output_dir)
    return metrics


def define_flags():
    """The command-line flags (defined only when run as a program, so the module stays importable)."""
    config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Checkpoint folder (a run, its checkpoints/, one step, or converted "
                        "weights).")
    flags.DEFINE_string("output_dir", None, "Where results go (default <config.output_dir>/inference).")


def main(argv):
    del argv
    if flags.FLAGS.config is None or not flags.FLAGS.checkpoint:
        raise app.UsageError("--config and --checkpoint are required")
    evaluate(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.output_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
