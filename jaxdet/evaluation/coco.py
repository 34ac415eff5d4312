"""COCO evaluation on the host: detections -> COCO result dicts -> pycocotools' COCOeval.

Host side only: numpy and pycocotools, never jax or ``jaxdet.modeling`` (see DESIGN.md section 3).

The flow at evaluation time::

    evaluator = COCOEvaluator(coco_gt, category_ids, class_names, output_dir="out/bbox")
    for batch, outputs in ...:
        evaluator.add(
            detections_to_coco(batch["image_id"], outputs["boxes"], outputs["scores"], outputs["classes"],
                               outputs["valid"], batch["scale"], batch["orig_size"], category_ids,
                               batch["image_valid"]),
            image_ids=batch["image_id"][batch["image_valid"]],
        )
    metrics = evaluator.evaluate()   # {'AP': 37.1, 'AP50': ..., 'per_category_AP': {...}}

Reference implementations: ``pycocotools/cocoeval.py`` (the metric itself) and detectron2's
``detectron2/evaluation/coco_evaluation.py`` (``instances_to_coco_json``, ``_evaluate_predictions_on_coco``,
``_derive_coco_results``: percent units, nan for missing values, per-category AP at area 'all').
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_METRIC_NAMES",
    "KEYPOINT_METRIC_NAMES",
    "COCOEvaluator",
    "detections_to_coco",
    "evaluate_results_file",
]

# Names of pycocotools' ``COCOeval.stats`` entries, in the order ``COCOeval.summarize`` fills them.
BOX_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# iou_type -> (field every result dict must carry, names of the summary stats).
_IOU_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bbox": ("bbox", BOX_METRIC_NAMES),
    "segm": ("segmentation", BOX_METRIC_NAMES),
    "keypoints": ("keypoints", KEYPOINT_METRIC_NAMES),
}

RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------------------------------------------
# Model outputs -> COCO result dicts
# ----------------------------------------------------------------------------------------------------------------
def _as_array(name: str, x: Any, ndim: int, shape_prefix: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"detections_to_coco: {name} must have {ndim} dims, got shape {a.shape}")
    if shape_prefix is not None and a.shape[: len(shape_prefix)] != shape_prefix:
        raise ValueError(
            f"detections_to_coco: {name} has shape {a.shape}, expected leading dims {shape_prefix}"
        )
    return a


def detections_to_coco(
    image_ids: Any,
    boxes: Any,
    scores: Any,
    classes: Any,
    valid: Any,
    scale: Any,
    orig_size: Any,
    category_ids: Sequence[int],
    image_valid: Any | None = None,
    *,
    image_size: Any | None = None,
    masks: Any | None = None,
    keypoints: Any | None = None,
    mask_paste: str = "torchvision",
) -> list[dict]:
    """Converts a batch of padded detections into COCO result dicts in original-image pixels.

    Pure numpy (jax arrays are accepted and copied to the host with ``np.asarray``; bfloat16 is fine).
    Matches detectron2's ``detector_postprocess`` + ``instances_to_coco_json`` and torchvision's
    ``GeneralizedRCNNTransform.postprocess`` (``torchvision/models/detection/transform.py``): boxes are divided by
    the resize ratio, clipped to the original image, and written as COCO ``[x, y, w, h]`` with ``w = x2 - x1``
    (continuous coordinates, no +1).

    Args:
      image_ids: [B] int, the dataset (COCO) image id of each batch entry.
      boxes: [B, D, 4] float (float32/bfloat16), xyxy in *canvas* pixels (the resized image's frame; the
        padding lies to the right/bottom, so canvas and resized-image coordinates coincide).
      scores: [B, D] float, detection confidence.
      classes: [B, D] int32, contiguous class index 0..C-1.
      valid: [B, D] bool, detection validity mask (padding of the fixed ``detections_per_image``).
      scale: [B] float32, resize ratio resized / original, as in the batch contract.
      orig_size: [B, 2] int32, (height, width) of the original image in pixels.
      category_ids: length-C sequence, ``category_ids[c]`` is the dataset category id of contiguous class c.
      image_valid: [B] bool or None (all valid). Entries with False are padding images (e.g. the last,
        partially filled batch) and produce nothing.
      image_size: optional [B, 2] int, (height, width) of the resized image inside the canvas. When given, the
        per-axis ratios ``image_size / orig_size`` replace ``scale`` (what torchvision and detectron2 do: the
        resized size is floored, so the true ratios differ slightly per axis and from ``scale``).
      masks: optional [B, D, S, S] float mask probabilities, each relative to its box (Mask R-CNN). They are
        pasted into the original image at the box mapped back to original pixels (before clipping, as
        torchvision's ``transform.postprocess``), binarised at 0.5 and written as compressed RLE
        ``"segmentation"`` (``jaxdet.evaluation.masks``; ``mask_paste`` picks the torchvision or detectron2
        convention).
      keypoints: optional [B, D, K, 3] float (x, y, score) in canvas pixels (Keypoint R-CNN); x, y are mapped to
        original pixels like the boxes and written flat as ``"keypoints"`` ``[x1, y1, s1, ...]`` (the third
        value is the keypoint score; pycocotools ignores it for detections).

    Returns:
      A list of dicts ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (float, original-image
      pixels), "score": float}`` (plus ``"segmentation"`` / ``"keypoints"`` when given), one per valid
      detection of a valid image, in batch then detection order. Boxes that become empty after clipping are
      kept (width or height 0); they simply match nothing.

    Raises:
      ValueError: on inconsistent shapes, an empty ``category_ids``, a class index outside 0..C-1 on a valid
        detection, or a non-positive / non-finite ratio or original size on a valid image.
    """
    boxes = _as_array("boxes", boxes, 3)
    if boxes.shape[-1] != 4:
        raise ValueError(f"detections_to_coco: boxes must be [B, D, 4] xyxy, got shape {boxes.shape}")
    B, D = boxes.shape[:2]
    boxes = boxes.astype(np.float64)
    scores = _as_array("scores", scores, 2, (B, D)).astype(np.float64)
    classes = _as_array("classes", classes, 2, (B, D))
    valid = _as_array("valid", valid, 2, (B, D)).astype(bool)
    image_ids = _as_array("image_ids", image_ids, 1, (B,))
    scale = _as_array("scale", scale, 1, (B,)).astype(np.float64)
    orig_size = _as_array("orig_size", orig_size, 2, (B, 2)).astype(np.float64)
    if image_valid is None:
        image_valid = np.ones((B,), bool)
    else:
        image_valid = _as_array("image_valid", image_valid, 1, (B,)).astype(bool)
    lut = np.asarray(list(category_ids), dtype=np.int64)
    if lut.ndim != 1 or lut.size == 0:
        raise ValueError(f"detections_to_coco: category_ids must be a non-empty 1-D sequence, got {category_ids!r}")

    if image_size is not None:
        image_size = _as_array("image_size", image_size, 2, (B, 2)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_y = image_size[:, 0] / orig_size[:, 0]
            ratio_x = image_size[:, 1] / orig_size[:, 1]
    else:
        ratio_y = ratio_x = scale

    bad = image_valid & ~(
        np.isfinite(ratio_y) & (ratio_y > 0) & np.isfinite(ratio_x) & (ratio_x > 0) & np.all(orig_size > 0, axis=1)
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"detections_to_coco: image {int(image_ids[i])} (batch index {i}) has an invalid resize ratio "
            f"(y {ratio_y[i]}, x {ratio_x[i]}) or original size {orig_size[i].tolist()}; both must be positive"
        )

    keep = valid & image_valid[:, None]
    out_of_range = keep & ((classes < 0) | (classes >= lut.size))
    if out_of_range.any():
        b, d = (int(v[0]) for v in np.nonzero(out_of_range))
        raise ValueError(
            f"detections_to_coco: class index {int(classes[b, d])} of detection {d} in image {int(image_ids[b])} "
            f"is outside 0..{lut.size - 1} (len(category_ids) = {lut.size})"
        )

    # Padding images may carry scale 0: divide by 1 there (their detections are dropped anyway).
    ry = np.where(image_valid, ratio_y, 1.0)[:, None]
    rx = np.where(image_valid, ratio_x, 1.0)[:, None]
    h = orig_size[:, 0][:, None]
    w = orig_size[:, 1][:, None]
    x1 = np.clip(boxes[..., 0] / rx, 0.0, w)
    y1 = np.clip(boxes[..., 1] / ry, 0.0, h)
    x2 = np.clip(boxes[..., 2] / rx, 0.0, w)
    y2 = np.clip(boxes[..., 3] / ry, 0.0, h)
    xywh = np.stack([x1, y1, np.maximum(x2 - x1, 0.0), np.maximum(y2 - y1, 0.0)], axis=-1)

    results = []
    for b, d in zip(*np.nonzero(keep)):
        results.append(
            {
                "image_id": int(image_ids[b]),
                "category_id": int(lut[classes[b, d]]),
                "bbox": [float(v) for v in xywh[b, d]],
                "score": float(scores[b, d]),
            }
        )
    if masks is not None:
        _add_segmentations(results, keep, _as_array("masks", masks, 4, (B, D)).astype(np.float32),
                           boxes / np.stack([rx, ry, rx, ry], -1), orig_size, mask_paste)
    if keypoints is not None:
        kp = _as_array("keypoints", keypoints, 4, (B, D)).astype(np.float64)
        kp = np.concatenate([kp[..., :1] / rx[..., None, None], kp[..., 1:2] / ry[..., None, None], kp[..., 2:]], -1)
        for r, (b, d) in zip(results, zip(*np.nonzero(keep))):
            r["keypoints"] = [float(v) for v in kp[b, d].reshape(-1)]
    return results


def _add_segmentations(results: list[dict], keep: np.ndarray, masks: np.ndarray, boxes_orig: np.ndarray,
                       orig_size: np.ndarray, style: str) -> None:
    """Adds ``"segmentation"`` RLEs to ``results`` (one per True entry of ``keep``, in the same order)."""
    from jaxdet.evaluation.masks import encode_rle, paste_masks  # noqa: PLC0415

    i = 0
    for b in range(keep.shape[0]):
        ds = np.flatnonzero(keep[b])
        if not ds.size:
            continue
        hw = (int(orig_size[b, 0]), int(orig_size[b, 1]))
        full = paste_masks(masks[b, ds], boxes_orig[b, ds], hw, 0.5, style)
        for m in full:
            results[i]["segmentation"] = encode_rle(m)
            i += 1


# ----------------------------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------------------------
def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):  # RLE counts from pycocotools.mask.encode
        return o.decode("ascii")
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


def _percent(v: float) -> float:
    """pycocotools marks 'no ground truth here' with -1; detectron2 reports it as nan."""
    return float(v) * 100.0 if v >= 0 else float("nan")


def _run_quietly(fn, *args, **kwargs) -> tuple[Any, str]:
    """Calls ``fn`` with pycocotools' prints captured; returns (result, captured text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def _format_table(pairs: Sequence[tuple[str, float]], num_columns: int = 3) -> str:
    """A plain-text table of (category, AP) pairs, ``num_columns`` pairs per row (detectron2's layout)."""
    if not pairs:
        return "(no categories)"
    name_w = max(len("category"), *(len(n) for n, _ in pairs))
    cells = [f"{n:<{name_w}} | {v:6.3f}" for n, v in pairs]
    header = f"{'category':<{name_w}} | {'AP':>6}"
    ncol = min(num_columns, len(cells))
    sep = " | "
    lines = [sep.join([header] * ncol), "-" * len(sep.join([header] * ncol))]
    for i in range(0, len(cells), ncol):
        lines.append(sep.join(cells[i : i + ncol]))
    return "\n".join(lines)


class COCOEvaluator:
    """Accumulates COCO result dicts and scores them with pycocotools' ``COCOeval``.

    Which images are evaluated: only the images that were actually evaluated, passed to ``COCOeval`` as
    ``params.imgIds``, so a partial run (a few batches, a debug subset) is scored on those images only and the
    ground truth of the other images does not count as missed. An image counts as evaluated when its id was
    registered through ``add(..., image_ids=...)`` or appears in a result dict. Register the ids of every
    evaluated image (also those with no detections: their ground truth must count as missed); if no image id is
    known at all (nothing was added), every image of the annotation file is evaluated, which gives AP 0.

    Which categories are evaluated: ``category_ids`` (``params.catIds``), i.e. the classes the model predicts.

    Units: every metric is in percent (0..100), as detectron2 reports them; a value with no ground truth to
    measure it on (pycocotools' -1, e.g. APs when there are no small objects, or the AP of a category absent from
    the evaluated images) is reported as nan.

    The task is a parameter, not a subclass: ``iou_type`` 'bbox' (result dicts carry ``bbox``), 'segm'
    (``segmentation``: a compressed RLE dict ``{"size": [h, w], "counts": str|bytes}`` in original-image pixels;
    any ``bbox`` in the dict is dropped before scoring so that object areas are mask areas, as detectron2 does) or
    'keypoints' (``keypoints``: flat ``[x1, y1, v1, ...]`` in original-image pixels; OKS with COCO's default
    person sigmas from ``pycocotools.cocoeval.Params.setKpParams`` unless ``kpt_oks_sigmas`` is given).

    Matches ``pycocotools/cocoeval.py`` (metric) and ``detectron2/evaluation/coco_evaluation.py`` (reporting).

    Output files (when ``output_dir`` is given; overwritten on each ``evaluate``, so give each evaluator its own
    folder): ``coco_instances_results.json`` (the result dicts, COCO results format) and ``metrics.json`` (the
    dict ``evaluate`` returns plus ``"iou_type"``, nan written as null to keep the file strict JSON).
    """

    def __init__(
        self,
        coco_gt: COCO | str | os.PathLike,
        category_ids: Sequence[int],
        class_names: Sequence[str],
        iou_type: str = "bbox",
        output_dir: str | os.PathLike | None = None,
        *,
        kpt_oks_sigmas: Sequence[float] | None = None,
        gt_name: str | None = None,
    ):
        """Builds the evaluator.

        Args:
          coco_gt: the ground truth, a ``pycocotools.coco.COCO`` or the path of a COCO annotation json.
          category_ids: length-C sequence, dataset category id of each contiguous class 0..C-1.
          class_names: length-C sequence of unique names, used as keys of ``per_category_AP``.
          iou_type: 'bbox', 'segm' or 'keypoints'.
          output_dir: folder for ``coco_instances_results.json`` and ``metrics.json``; None writes nothing.
          kpt_oks_sigmas: keypoints only, per-keypoint OKS sigmas; None keeps pycocotools' COCO person sigmas.
          gt_name: how error messages name the ground truth, e.g. the path of the json the ``COCO`` object was
            loaded from (a ``COCO`` object does not remember it); default: the path, or a description.

        Raises:
          FileNotFoundError: ``coco_gt`` is a path that does not exist.
          ValueError: unknown ``iou_type``; ``category_ids``/``class_names`` empty, of different lengths or with
            duplicates; a category id absent from the annotation file; ``kpt_oks_sigmas`` with a non-keypoint
            ``iou_type``.
        """
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"COCOEvaluator: iou_type must be one of {sorted(_IOU_TYPES)}, got {iou_type!r}")
        if isinstance(coco_gt, (str, os.PathLike)):
            path = pathlib.Path(coco_gt)
            if not path.is_file():
                raise FileNotFoundError(f"COCOEvaluator: annotation file {str(path)!r} not found")
            coco_gt, _ = _run_quietly(COCO, str(path))
            self._gt_source = f"annotation file {str(path)!r}"
        else:
            info = coco_gt.dataset.get("info", {}) if isinstance(coco_gt.dataset, dict) else {}
            desc = info.get("description") if isinstance(info, dict) else None
            self._gt_source = f"the ground-truth COCO object ({len(coco_gt.imgs)} images" + (
                f", info.description {desc!r})" if desc else ")"
            )
        if gt_name is not None:
            self._gt_source = f"annotation file {gt_name!r}"
        self.coco_gt = coco_gt
        self.iou_type = iou_type
        self._field, self._metric_names = _IOU_TYPES[iou_type]

        self.category_ids = [int(c) for c in category_ids]
        self.class_names = [str(n) for n in class_names]
        if not self.category_ids:
            raise ValueError("COCOEvaluator: category_ids is empty")
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"COCOEvaluator: {len(self.category_ids)} category_ids but {len(self.class_names)} class_names"
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"COCOEvaluator: duplicate entries in category_ids {self.category_ids}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"COCOEvaluator: duplicate entries in class_names {self.class_names}")
        missing = sorted(set(self.category_ids) - set(coco_gt.getCatIds()))
        if missing:
            raise ValueError(f"COCOEvaluator: category ids {missing[:10]} are not in {self._gt_source}")
        self._name_of = dict(zip(self.category_ids, self.class_names))

        if kpt_oks_sigmas is not None:
            if iou_type != "keypoints":
                raise ValueError(f"COCOEvaluator: kpt_oks_sigmas only applies to iou_type 'keypoints', not {iou_type!r}")
            kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            if kpt_oks_sigmas.ndim != 1 or kpt_oks_sigmas.size == 0:
                raise ValueError(f"COCOEvaluator: kpt_oks_sigmas must be a non-empty 1-D sequence, got {kpt_oks_sigmas}")
        self.kpt_oks_sigmas = kpt_oks_sigmas

        self.output_dir = pathlib.Path(output_dir) if output_dir is not None else None
        self._gt_image_ids = set(coco_gt.getImgIds())
        self.reset()

    # ------------------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets every result and image id added so far (e.g. between periodic evaluations in training)."""
        self._results: list[dict] = []
        self._image_ids: set[int] = set()

    def _check_image_ids(self, ids: Iterable[int], what: str) -> None:
        unknown = sorted(set(ids) - self._gt_image_ids)
        if unknown:
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise ValueError(
                f"COCOEvaluator: {what} image ids {unknown[:5]}{more} are not in {self._gt_source}; "
                "were the detections made on another split?"
            )

    def add(self, batch_results: Sequence[Mapping[str, Any]], image_ids: Any | None = None) -> None:
        """Adds the COCO result dicts of one batch (e.g. the output of ``detections_to_coco``).

        Args:
          batch_results: list of dicts with ``image_id`` (int), ``category_id`` (dataset id), ``score`` (float)
            and the field of the ``iou_type``: ``bbox`` [x, y, w, h] in original-image pixels, ``segmentation``
            (compressed RLE) or ``keypoints`` (flat x, y, v list).
          image_ids: optional [N] ints, the ids of every image evaluated in this batch, including those with no
            detection (their ground truth must count as missed); padding images must be left out.

        Raises:
          ValueError: a result misses a required key or has a malformed ``bbox``/``keypoints``; an image id (of a
            result or of ``image_ids``) is not in the annotation file (the message names the first few ids and the
            file); a category id is not one of ``category_ids``.
        """
        batch_results = list(batch_results)
        required = ("image_id", "category_id", "score", self._field)
        for i, r in enumerate(batch_results):
            if not isinstance(r, Mapping):
                raise ValueError(f"COCOEvaluator.add: result {i} is a {type(r).__name__}, not a dict")
            absent = [k for k in required if k not in r]
            if absent:
                raise ValueError(
                    f"COCOEvaluator.add: result {i} (image {r.get('image_id')}) lacks {absent} "
                    f"required for iou_type {self.iou_type!r}"
                )
            if self.iou_type == "bbox" and len(r["bbox"]) != 4:
                raise ValueError(f"COCOEvaluator.add: result {i} bbox must be [x, y, w, h], got {r['bbox']!r}")
            if self.iou_type == "keypoints":
                n = len(r["keypoints"])
                if n == 0 or n % 3:
                    raise ValueError(f"COCOEvaluator.add: result {i} keypoints length {n} is not a positive multiple of 3")
                if self.kpt_oks_sigmas is not None and n != 3 * self.kpt_oks_sigmas.size:
                    raise ValueError(
                        f"COCOEvaluator.add: result {i} has {n // 3} keypoints but kpt_oks_sigmas has "
                        f"{self.kpt_oks_sigmas.size}"
                    )
        result_image_ids = {int(r["image_id"]) for r in batch_results}
        self._check_image_ids(result_image_ids, "detection")
        registered = set()
        if image_ids is not None:
            registered = {int(i) for i in np.asarray(image_ids).reshape(-1)}
            self._check_image_ids(registered, "registered")
        bad_cats = sorted({int(r["category_id"]) for r in batch_results} - set(self.category_ids))
        if bad_cats:
            raise ValueError(
                f"COCOEvaluator.add: category ids {bad_cats[:10]} are not among the evaluated category_ids "
                f"{self.category_ids[:10]}{'...' if len(self.category_ids) > 10 else ''}"
            )
        self._results.extend(batch_results)
        self._image_ids |= result_image_ids | registered

    # ------------------------------------------------------------------------------------------------------------
    def _results_coco(self) -> COCO:
        """The results as a pycocotools COCO object; an empty one when there are none (loadRes crashes then)."""
        if not self._results:
            res = COCO()
            res.dataset = {
                "images": list(self.coco_gt.dataset["images"]),
                "categories": copy.deepcopy(self.coco_gt.dataset.get("categories", [])),
                "annotations": [],
            }
            _run_quietly(res.createIndex)
            return res
        # Shallow copies: loadRes adds id/area/iscrowd (and a polygon) to each dict; keep ours clean.
        anns = [dict(r) for r in self._results]
        if self.iou_type == "segm":
            for a in anns:  # loadRes takes the box area when a bbox is present; mask AP needs the mask area
                a.pop("bbox", None)
        res, text = _run_quietly(self.coco_gt.loadRes, anns)
        logger.debug("pycocotools loadRes: %s", text.strip())
        return res

    def evaluate(self) -> dict[str, Any]:
        """Scores everything added so far.

        Returns:
          dict with the pycocotools summary stats in percent under ``BOX_METRIC_NAMES`` ('AP', 'AP50', 'AP75',
          'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl') for 'bbox'/'segm', or
          ``KEYPOINT_METRIC_NAMES`` for 'keypoints'; and ``'per_category_AP'``: {class_name: AP in percent,
          averaged over IoU 0.50:0.95 at area 'all' and the largest maxDets, nan for a category with no ground
          truth in the evaluated images}. With no detections at all every AP is 0 (nan where there is no ground
          truth). Also logs pycocotools' summary and a per-category table, and writes the output files.
        """
        if self._image_ids:
            img_ids = sorted(self._image_ids)
        else:
            img_ids = sorted(self._gt_image_ids)
            logger.warning(
                "COCOEvaluator: no image id was added; evaluating all %d images of %s", len(img_ids), self._gt_source
            )
        if not self._results:
            logger.warning("COCOEvaluator: no detections; every AP is 0")

        coco_dt = self._results_coco()
        coco_eval = COCOeval(self.coco_gt, coco_dt, iouType=self.iou_type)
        coco_eval.params.imgIds = img_ids
        coco_eval.params.catIds = sorted(self.category_ids)
        if self.kpt_oks_sigmas is not None:
            coco_eval.params.kpt_oks_sigmas = self.kpt_oks_sigmas
        _, text = _run_quietly(coco_eval.evaluate)
        logger.debug("pycocotools evaluate: %s", text.strip())
        _, text = _run_quietly(coco_eval.accumulate)
        logger.debug("pycocotools accumulate: %s", text.strip())
        _, summary = _run_quietly(coco_eval.summarize)

        metrics: dict[str, Any] = {
            name: _percent(v) for name, v in zip(self._metric_names, coco_eval.stats)
        }
        # precision: [T iou thresholds, R recall thresholds, K categories, A area ranges, M max dets]
        precision = coco_eval.eval["precision"]
        per_category: dict[str, float] = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_category[self._name_of[int(cat_id)]] = float(np.mean(p)) * 100.0 if p.size else float("nan")
        # Report in the model's class order, not sorted by dataset id.
        metrics["per_category_AP"] = {n: per_category[n] for n in self.class_names}

        logger.info(
            "COCO %s evaluation of %d detections on %d images (%s):\n%s",
            self.iou_type, len(self._results), len(img_ids), self._gt_source, summary.rstrip(),
        )
        logger.info(
            "Per-category %s AP:\n%s", self.iou_type, _format_table(list(metrics["per_category_AP"].items()))
        )
        if self.output_dir is not None:
            self._write(metrics)
        return metrics

    def _write(self, metrics: Mapping[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        results_path = self.output_dir / RESULTS_FILE
        with open(results_path, "w") as f:
            json.dump(self._results, f, default=_json_default)
        metrics_path = self.output_dir / METRICS_FILE
        with open(metrics_path, "w") as f:
            json.dump(_nan_to_none({"iou_type": self.iou_type, **metrics}), f, indent=2, allow_nan=False)
        logger.info("COCOEvaluator: wrote %s and %s", results_path, metrics_path)


def evaluate_results_file(
    gt_json: str | os.PathLike,
    results_json: str | os.PathLike,
    *,
    iou_type: str = "bbox",
    img_ids: Sequence[int] | None = None,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Scores a COCO results json against a COCO annotation json (e.g. ``coco_instances_results.json``).

    Evaluates every category of the annotation file (class names from its ``categories``) and, unless
    ``img_ids`` is given, every image of the annotation file: a results file cannot say which images without
    detections were evaluated, so this is the official protocol (images with no detection count their ground
    truth as missed). Pass ``img_ids`` to score a subset.

    Args:
      gt_json: path of the COCO annotation json.
      results_json: path of a json list of COCO result dicts (see ``COCOEvaluator.add``).
      iou_type: 'bbox', 'segm' or 'keypoints'.
      img_ids: optional image ids to restrict the evaluation to.
      output_dir: optional folder for ``metrics.json`` and a copy of the results (see ``COCOEvaluator``).

    Returns:
      The dict of ``COCOEvaluator.evaluate``.

    Raises:
      FileNotFoundError: either file is missing.
      ValueError: the results file is not a json list, or its image / category ids are not in the annotation file.
    """
    results_path = pathlib.Path(results_json)
    if not results_path.is_file():
        raise FileNotFoundError(f"evaluate_results_file: results file {str(results_path)!r} not found")
    with open(results_path) as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"evaluate_results_file: {str(results_path)!r} is not valid json: {e}") from e
    if not isinstance(results, list):
        raise ValueError(
            f"evaluate_results_file: {str(results_path)!r} must hold a json list of result dicts, "
            f"got {type(results).__name__}"
        )
    gt_path = pathlib.Path(gt_json)
    if not gt_path.is_file():
        raise FileNotFoundError(f"evaluate_results_file: annotation file {str(gt_path)!r} not found")
    coco_gt, _ = _run_quietly(COCO, str(gt_path))
    cats = sorted(coco_gt.dataset.get("categories", []), key=lambda c: c["id"])
    evaluator = COCOEvaluator(
        coco_gt,
        [c["id"] for c in cats],
        [c["name"] for c in cats],
        iou_type=iou_type,
        output_dir=output_dir,
        gt_name=str(gt_path),
    )
    evaluator.add(results, image_ids=coco_gt.getImgIds() if img_ids is None else img_ids)
    return evaluator.evaluate()
