"""Pascal VOC detection AP: the 11-point (VOC2007) and area (VOC2010+) definitions, on the host (numpy).

Matches ``voc_eval`` / ``voc_ap`` of py-faster-rcnn (``lib/datasets/voc_eval.py``), which detectron2 copies in
``detectron2/evaluation/pascal_voc_evaluation.py``:

- per class, detections of all images are sorted by descending score (ties keep their input order: a stable
  sort, where py-faster-rcnn's ``np.argsort`` is not stable);
- a detection is matched to the ground truth box of its image with the highest IoU; it is a true positive if
  that IoU is *greater than* ``iou_thresh`` (0.5) and that ground truth is not difficult and not yet matched, a
  false positive if the IoU is not above the threshold or the ground truth was already matched, and neither if
  the ground truth is difficult;
- recall = TP / (number of non-difficult ground truth boxes), precision = TP / (TP + FP), cumulated down the
  ranking;
- 11-point AP (``use_07_metric=True``): the mean over ``t = 0, 0.1, ..., 1`` of the highest precision at
  recall >= t (0 if no such point); area AP: the area under the precision envelope (precision made monotone
  decreasing from the right), summed where recall changes.

IoU: py-faster-rcnn computes it on VOC's 1-based inclusive integer coordinates with ``+1`` in widths and
heights. jaxdet boxes are continuous (``x1 = xmin - 1, x2 = xmax``, see `jaxdet.data.voc`), where the plain
``(x2 - x1) * (y2 - y1)`` is the same number, so IoU here has no ``+1``: detections in jaxdet's frame give
exactly py-faster-rcnn's result on the written-back VOC coordinates (detectron2 writes ``xmin + 1`` for the same
reason).

A class without any non-difficult ground truth has recall 0/0: its AP is nan (py-faster-rcnn divides by zero
too) and it is left out of the mean. ``is_crowd`` ground truth (COCO data evaluated with the VOC metric) is
treated as difficult.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["voc_ap", "voc_eval_class", "VOCEvaluator", "iou_matrix"]


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
    """AP from a precision/recall curve (py-faster-rcnn ``voc_ap``).

    Args:
      recall: float [n], non-decreasing (cumulated down the ranking).
      precision: float [n], same length.
      use_07_metric: True: VOC2007's 11-point interpolation; False: area under the interpolated curve.

    Returns:
      AP in [0, 1] (0.0 for an empty curve).

    Raises:
      ValueError: different lengths or not 1-D.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if rec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall and precision must be 1-D of one length, got {rec.shape}, {prec.shape}")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [n, 4] and b [m, 4] (continuous coordinates) -> float64 [n, m] (0 where a union is 0)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def voc_eval_class(det_image_ids, det_scores, det_boxes, gt: Mapping[Any, tuple[np.ndarray, np.ndarray]],
                   iou_thresh: float = 0.5, use_07_metric: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Recall, precision and AP of ONE class (py-faster-rcnn ``voc_eval`` after its file parsing).

    Args:
      det_image_ids: [n] image ids of the class's detections (any hashable values).
      det_scores: float [n].
      det_boxes: float [n, 4] xyxy, continuous pixel coordinates.
      gt: image id -> (boxes float [m, 4] xyxy, difficult bool [m]) of this class; images absent here have
        none (their detections are false positives).
      iou_thresh: a match needs IoU strictly greater than this.
      use_07_metric: 11-point (True) or area (False) AP.

    Returns:
      (recall float64 [n], precision float64 [n], AP) in ranking order; AP is nan when there is no
      non-difficult ground truth (recall then nan too).

    Raises:
      ValueError: inconsistent lengths or a non-finite score.
    """
    ids = list(det_image_ids)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    if not (len(ids) == scores.shape[0] == boxes.shape[0]):
        raise ValueError(f"voc_eval_class: {len(ids)} image ids, {scores.shape[0]} scores, {boxes.shape[0]} boxes")
    if not np.all(np.isfinite(scores)):
        raise ValueError("voc_eval_class: scores must be finite")
    npos = 0
    gts = {}
    for k, (b, d) in gt.items():
        b = np.asarray(b, np.float64).reshape(-1, 4)
        d = np.asarray(d, bool).reshape(-1)
        if d.shape[0] != b.shape[0]:
            raise ValueError(f"voc_eval_class: image {k!r} has {b.shape[0]} boxes and {d.shape[0]} difficult flags")
        gts[k] = (b, d, np.zeros(b.shape[0], bool))
        npos += int(np.sum(~d))
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(ids))
    fp = np.zeros(len(ids))
    for rank, j in enumerate(order):
        entry = gts.get(ids[j])
        if entry is None or entry[0].shape[0] == 0:
            fp[rank] = 1
            continue
        g, diff, used = entry
        ov = iou_matrix(boxes[j:j + 1], g)[0]
        k = int(np.argmax(ov))
        if ov[k] > iou_thresh:
            if not diff[k]:
                if not used[k]:
                    tp[rank] = 1
                    used[k] = True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos) if npos else np.full_like(tp, np.nan)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc_ap(rec, prec, use_07_metric) if npos else float("nan")
    return rec, prec, ap


class VOCEvaluator:
    """Accumulates detections (COCO result dicts) and scores them with the VOC AP of a `CocoDataset`'s ground truth.

    Same interface as `jaxdet.evaluation.coco.COCOEvaluator` (``add(results, image_ids)``, ``evaluate()``), so
    the inference loop can use either. Ground truth comes from the dataset's records: ``boxes`` (xyxy
    original pixels), ``classes``, ``difficult`` (from `jaxdet.data.voc`; absent: none) and ``is_crowd``
    (treated as difficult).

    Metrics (``evaluate()``, percent, as detectron2's ``PascalVOCDetectionEvaluator``): ``AP50`` (mean over
    classes of the AP at IoU > 0.5 with the chosen definition), ``AP75``, ``AP`` (mean of the class-mean APs at
    IoU thresholds 0.50, 0.55, ..., 0.95), ``AP50_11point`` and ``AP50_area`` (both definitions at 0.5, whatever
    the choice), and ``per_category_AP`` (class name -> AP50, nan without ground truth).
    """

    THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())

    def __init__(self, dataset, use_07_metric: bool = False, output_dir: str | None = None):
        """
        Args:
          dataset: a `jaxdet.data.coco.CocoDataset` (e.g. from `jaxdet.data.voc.load_voc` with
            ``skip_empty=False``): its records, ``category_ids`` and ``class_names``.
          use_07_metric: 11-point AP (VOC2007 test protocol) instead of the area (VOC2010+).
          output_dir: folder for ``voc_metrics.json`` and ``voc_results.json``; None writes nothing.
        """
        self.dataset = dataset
        self.use_07_metric = bool(use_07_metric)
        self.output_dir = output_dir
        self._class_of = {int(c): i for i, c in enumerate(dataset.category_ids)}
        self._known_images = {int(r["image_id"]) for r in dataset.records}
        self.reset()

    def reset(self) -> None:
        """Forgets the detections and image ids added so far."""
        self._results: list[dict] = []
        self._image_ids: set[int] = set()

    def add(self, batch_results: Sequence[Mapping[str, Any]], image_ids=None) -> None:
        """Adds COCO result dicts (``image_id``, ``category_id`` (dataset id), ``bbox`` [x, y, w, h] original
        pixels, ``score``), e.g. from `jaxdet.evaluation.coco.detections_to_coco`, and the ids of every evaluated
        image (also those without detections).

        Raises:
          ValueError: a result lacks a key or has a malformed bbox; an image id not in the dataset; a category
            id not among the dataset's.
        """
        batch_results = list(batch_results)
        for i, r in enumerate(batch_results):
            missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
            if missing:
                raise ValueError(f"VOCEvaluator.add: result {i} lacks {missing}")
            if len(r["bbox"]) != 4:
                raise ValueError(f"VOCEvaluator.add: result {i} bbox must be [x, y, w, h], got {r['bbox']!r}")
            if int(r["category_id"]) not in self._class_of:
                raise ValueError(f"VOCEvaluator.add: result {i} has category_id {r['category_id']}, not one of "
                                 f"{list(self._class_of)[:10]}")
        ids = {int(r["image_id"]) for r in batch_results}
        if image_ids is not None:
            ids |= {int(i) for i in np.asarray(image_ids).reshape(-1)}
        unknown = sorted(ids - self._known_images)
        if unknown:
            raise ValueError(f"VOCEvaluator.add: image ids {unknown[:5]} are not in dataset {self.dataset.name}")
        self._results.extend(batch_results)
        self._image_ids |= ids

    def _per_class_inputs(self):
        C = len(self.dataset.category_ids)
        img_ids = self._image_ids or self._known_images
        if not self._image_ids:
            logger.warning("VOCEvaluator: no image id was added; evaluating all %d images", len(img_ids))
        gt = [dict() for _ in range(C)]
        for r in self.dataset.records:
            iid = int(r["image_id"])
            if iid not in img_ids:
                continue
            diff = np.asarray(r.get("difficult", np.zeros(len(r["classes"]), bool)), bool) | np.asarray(
                r["is_crowd"], bool)
            for c in range(C):
                sel = np.asarray(r["classes"]) == c
                if sel.any():
                    gt[c][iid] = (np.asarray(r["boxes"])[sel], diff[sel])
        dets = [([], [], []) for _ in range(C)]
        for r in self._results:
            c = self._class_of[int(r["category_id"])]
            x, y, w, h = (float(v) for v in r["bbox"])
            dets[c][0].append(int(r["image_id"]))
            dets[c][1].append(float(r["score"]))
            dets[c][2].append((x, y, x + w, y + h))
        return gt, dets

    def evaluate(self) -> dict[str, Any]:
        """Scores everything added so far; returns the metrics of the class docstring (percent)."""
        gt, dets = self._per_class_inputs()
        names = list(self.dataset.class_names)
        per_thresh = {}
        per_class_50 = {}
        ap50_other = []
        for t in self.THRESHOLDS:
            aps = []
            for c in range(len(names)):
                ids, scores, boxes = dets[c]
                _, _, ap = voc_eval_class(ids, scores, np.asarray(boxes).reshape(-1, 4), gt[c], t, self.use_07_metric)
                aps.append(ap)
                if t == 0.5:
                    per_class_50[names[c]] = 100.0 * ap
                    _, _, other = voc_eval_class(ids, scores, np.asarray(boxes).reshape(-1, 4), gt[c], t,
                                                 not self.use_07_metric)
                    ap50_other.append(other)
            per_thresh[t] = _nanmean(aps)
        ap50_11 = per_thresh[0.5] if self.use_07_metric else _nanmean(ap50_other)
        ap50_area = _nanmean(ap50_other) if self.use_07_metric else per_thresh[0.5]
        metrics = {"AP": 100.0 * _nanmean(list(per_thresh.values())), "AP50": 100.0 * per_thresh[0.5],
                   "AP75": 100.0 * per_thresh[0.75], "AP50_11point": 100.0 * ap50_11, "AP50_area": 100.0 * ap50_area,
                   "per_category_AP": per_class_50}
        logger.info("VOC %s evaluation of %d detections on %d images: AP %.2f  AP50 %.2f  AP75 %.2f",
                    "11-point" if self.use_07_metric else "area", len(self._results),
                    len(self._image_ids or self._known_images), metrics["AP"], metrics["AP50"], metrics["AP75"])
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            clean = _nan_to_none(metrics)
            with open(os.path.join(self.output_dir, "voc_metrics.json"), "w") as f:
                json.dump({"metric": "11point" if self.use_07_metric else "area", **clean}, f, indent=2)
            with open(os.path.join(self.output_dir, "voc_results.json"), "w") as f:
                json.dump(self._results, f)
        return metrics


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], np.float64)
    return float(v.mean()) if v.size else float("nan")
