"""Run a detector over a dataset and score it with pycocotools: box AP, plus mask AP when the model outputs
``masks`` and keypoint AP when it outputs ``keypoints`` (detectron2's ``COCOEvaluator`` tasks)."""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxdet.data.coco import CocoDataset
from jaxdet.data.pipeline import eval_batches, make_eval_iterator
from jaxdet.engine import parallel
from jaxdet.evaluation.coco import COCOEvaluator, detections_to_coco

log = logging.getLogger(__name__)

_MODEL_KEYS = ("image", "image_size")
_HOST_KEYS = ("image_id", "image_valid", "image_size", "scale", "orig_size")  # what consume() reads


def inference_on_dataset(predict_step, variables, dataset: CocoDataset, config, mesh: Mesh,
                         output_dir: str | None, category_ids=None) -> dict:
    """Detections for every image of ``dataset``, scored with pycocotools.

    Args:
      predict_step: from :func:`jaxdet.engine.steps.make_predict_step`.
      variables: the model variables (replicated on the mesh).
      dataset: the evaluation :class:`CocoDataset` (all images, also those without objects).
      config: the run config (``input.*``, ``test.ims_per_batch``, ``test.max_images``, ``data.*``).
      mesh: the device mesh.
      output_dir: where ``coco_instances_results.json`` (detections in COCO format: dataset category ids,
        xywh boxes in original-image pixels) and ``metrics.json`` go; None writes nothing.
      category_ids: the model's class -> category id table when it differs from the dataset's (e.g.
        torchvision's 90 COCO ids, 10 of them unused); detections of categories the annotation file lacks
        are dropped. Default: the dataset's own table.

    Returns:
      the box metrics of :meth:`COCOEvaluator.evaluate` (AP, AP50, ..., per_category_AP) plus
      ``inference_s_per_image``; for a model with ``masks`` also ``"segm"``: the mask metrics (files in
      ``output_dir/segm``), with ``keypoints`` also ``"keypoints"``: the keypoint metrics (OKS with the
      dataset's ``keypoint_oks_sigmas`` or COCO's person sigmas; files in ``output_dir/keypoints``).

    Raises:
      ValueError: ``test.ims_per_batch`` does not divide over the devices.
    """
    batch_size = config.test.ims_per_batch
    parallel.check_batch_size(batch_size, mesh, "test.ims_per_batch")
    if config.test.max_images and config.test.max_images < len(dataset):
        dataset = dataclasses.replace(dataset, records=dataset.records[:config.test.max_images])
    if config.data.format == "voc":  # VOC AP (11-point or area), difficult objects ignored
        from jaxdet.evaluation.voc import VOCEvaluator

        evaluator = VOCEvaluator(dataset, use_07_metric=config.test.voc_07_metric, output_dir=output_dir)
    else:
        evaluator = COCOEvaluator(dataset.coco, dataset.category_ids, dataset.class_names, "bbox", output_dir,
                                  gt_name=str(dataset.json_path))
    kwargs = dict(batch_size=batch_size, canvases=config.input.canvases, min_size_test=config.input.min_size_test,
                  max_size_test=config.input.max_size_test)
    num_batches = len(eval_batches(dataset, **kwargs))
    it = make_eval_iterator(dataset, **kwargs, max_instances=config.data.max_instances,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            num_workers=config.data.num_workers, channel_order=config.input.format)
    model_ids = list(dataset.category_ids if category_ids is None else category_ids)
    known = set(dataset.category_ids)
    dropped = [0]
    t0, n_images = time.perf_counter(), [0]
    pending = None
    evaluators = {"bbox": evaluator}

    def task_evaluator(iou_type: str):
        if iou_type not in evaluators:
            sub = None if output_dir is None else os.path.join(output_dir, iou_type)
            sigmas = dataset.keypoint_oks_sigmas if iou_type == "keypoints" else None
            evaluators[iou_type] = COCOEvaluator(dataset.coco, dataset.category_ids, dataset.class_names, iou_type,
                                                 sub, gt_name=str(dataset.json_path), kpt_oks_sigmas=sigmas)
        return evaluators[iou_type]

    def consume(host_batch, out):
        # every process gets the whole global batch (a gather across processes when there are several)
        host_batch, out = parallel.to_host(({k: host_batch[k] for k in _HOST_KEYS}, out))
        n_images[0] += int(np.sum(host_batch["image_valid"]))
        results = detections_to_coco(host_batch["image_id"], out["boxes"], out["scores"], out["classes"],
                                     out["valid"], host_batch["scale"], host_batch["orig_size"], model_ids,
                                     host_batch["image_valid"], image_size=host_batch["image_size"],
                                     masks=out.get("masks"), keypoints=out.get("keypoints"))
        if len(known) != len(model_ids):
            kept = [r for r in results if r["category_id"] in known]
            dropped[0] += len(results) - len(kept)
            results = kept
        ids = host_batch["image_id"][host_batch["image_valid"]]
        evaluator.add([{k: v for k, v in r.items() if k in ("image_id", "category_id", "bbox", "score")}
                       for r in results], image_ids=ids)
        for key, iou_type in (("masks", "segm"), ("keypoints", "keypoints")):
            if key in out and config.data.format != "voc":
                task_evaluator(iou_type).add(results, image_ids=ids)

    for _, batch in tqdm(it, total=num_batches, desc="eval", unit="batch", leave=False):
        out = predict_step(variables, parallel.shard_batch({k: batch[k] for k in _MODEL_KEYS}, mesh))
        if pending is not None:  # overlap host post-processing of batch i-1 with device work on batch i
            consume(*pending)
        pending = (batch, out)
    if pending is not None:
        consume(*pending)
    dt = time.perf_counter() - t0
    if dropped[0]:
        log.info("%d detections of categories absent from %s dropped", dropped[0], dataset.json_path)
    metrics = evaluator.evaluate()
    for iou_type, ev in evaluators.items():
        if iou_type != "bbox":
            metrics[iou_type] = ev.evaluate()
            log.info("%s AP %.2f  AP50 %.2f  AP75 %.2f", iou_type, metrics[iou_type]["AP"], metrics[iou_type]["AP50"],
                     metrics[iou_type]["AP75"])
    metrics["inference_s_per_image"] = dt / max(n_images[0], 1)
    log.info("evaluated %d images in %.1f s (%.3f s/image including data loading and compilation)", n_images[0], dt,
             metrics["inference_s_per_image"])
    return metrics
