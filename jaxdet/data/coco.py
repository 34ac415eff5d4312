"""COCO-format detection datasets read with pycocotools, checked and cleaned on the host.

`load_coco` turns an ``instances_*.json`` file plus its image folder into a `CocoDataset`: one record per
image with its ground truth as numpy arrays, boxes converted from COCO's ``[x, y, w, h]`` to ``xyxy`` in
original-image pixels (continuous coordinates: a box covering pixel columns 0..9 is x1=0, x2=10), dataset
category ids mapped to contiguous class ids ``0..C-1`` (sorted by category id, as detectron2's
``load_coco_json`` and torchvision's ``references/detection/coco_utils.py`` do).

Cleaning policies (each counted in ``CocoDataset.stats`` and logged once with `logging`):

==========================  =========================================================================
``nonfinite_boxes``         a bbox with a NaN/inf coordinate is dropped
``clipped_boxes``           a bbox reaching outside the image is clipped to ``[0, W] x [0, H]``
``degenerate_boxes``        a bbox whose width or height is < 1 px after clipping is dropped
``invalid_polygons``        a polygon of a ``segmentation`` list with fewer than 3 points, an odd number of
                            coordinates or a NaN/inf/non-number coordinate is removed from the list
``invalid_segmentations``   an annotation whose polygon list is non-empty but has no valid polygon left is
                            dropped, box included (detectron2's ``load_coco_json`` drops these instances
                            too); ``segmentation: []`` (none given) keeps the box
``skipped_empty_images``    with ``skip_empty=True`` (training), images without any remaining non-crowd
                            instance are dropped, as detectron2's
                            ``filter_images_with_only_crowd_annotations`` (evaluation keeps every image)
==========================  =========================================================================

Self-intersecting polygons are kept as they are (pycocotools rasterises them with its scanline fill; the
box comes from ``bbox``). RLE segmentations (crowd regions) are not checked. The cleaning only shapes the
training records; evaluation scores against the unmodified json.

Crowd annotations (``iscrowd=1``) are kept with ``is_crowd=True``; the model ignores them in matching.

Errors: an unreadable json or one without ``images``/``annotations``/``categories`` raises ValueError
naming the file; an annotation whose ``image_id`` or ``category_id`` is not declared raises ValueError
naming the annotation id and the file; images listed in the json but absent from ``image_dir`` raise
FileNotFoundError naming the first few and the count.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CocoDataset", "load_coco"]

_MAX_MISSING_LISTED = 5


@dataclasses.dataclass
class CocoDataset:
    """A COCO detection dataset held in memory, ready for the host pipeline.

    Attributes:
      records: one dict per image, sorted by ``image_id``, each with
        ``image_id`` (int), ``file_name`` (str, absolute path), ``height``/``width`` (int, original pixels,
        as declared in the json), ``boxes`` float32 [n, 4] xyxy in original-image pixels (clipped to the
        image), ``classes`` int32 [n] contiguous ids in ``0..C-1``, ``is_crowd`` bool [n],
        ``segmentations`` (list of n COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` or RLE dicts, as in the
        json, for Mask R-CNN) and ``ann_ids`` int64 [n] (the json annotation ids); in a keypoint dataset also
        ``keypoints`` float32 [n, K, 3] (x, y, visibility in original pixels; zeros where an annotation has
        none).
      category_ids: contiguous class id -> dataset category id (sorted ascending).
      class_names: contiguous class id -> category name.
      json_path: absolute path of the annotation file.
      image_dir: absolute path of the image folder.
      coco: the ``pycocotools.coco.COCO`` object over the unmodified json (the ground truth for evaluation).
      name: a short name (defaults to the json file's stem, e.g. ``instances_val2017``).
      stats: counts of the cleaning policies, see the module docstring, plus ``num_images``,
        ``num_instances`` and ``num_crowd`` of the records kept.
      keypoint_names: the ``keypoints`` names of the categories (COCO person_keypoints: 17); () if none.
      keypoint_oks_sigmas: per-keypoint OKS sigmas from a category's optional ``kpt_oks_sigmas`` entry (a
        jaxdet extension for non-person keypoints); None means COCO's person sigmas.
    """

    records: list[dict[str, Any]] = dataclasses.field(repr=False)
    category_ids: list[int]
    class_names: list[str]
    json_path: str
    image_dir: str
    coco: Any = dataclasses.field(repr=False)
    name: str
    stats: dict[str, int]
    keypoint_names: tuple = ()
    keypoint_oks_sigmas: tuple | None = None

    @property
    def num_keypoints(self) -> int:
        """K, the keypoints per instance declared by the categories (0: not a keypoint dataset)."""
        return len(self.keypoint_names)

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (background not counted)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.records)

    def class_to_category(self, classes: np.ndarray) -> np.ndarray:
        """Maps contiguous class ids (int array, any shape) back to dataset category ids (int64, same shape)."""
        table = np.asarray(self.category_ids, dtype=np.int64)
        return table[np.asarray(classes, dtype=np.int64)]

    @property
    def category_to_class(self) -> dict[int, int]:
        """Dataset category id -> contiguous class id."""
        return {c: i for i, c in enumerate(self.category_ids)}


def _read_json(json_path: str) -> dict:
    try:
        with open(json_path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {json_path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"COCO annotation file {json_path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {json_path}: top level is {type(data).__name__}, expected an object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"COCO annotation file {json_path} lacks the key(s) {missing}")
    for k in ("images", "annotations", "categories"):
        if not isinstance(data[k], list):
            raise ValueError(f"COCO annotation file {json_path}: '{k}' is {type(data[k]).__name__}, expected a list")
    return data


def _valid_polygon(poly) -> bool:
    """A COCO polygon ``[x0, y0, x1, y1, ...]`` with >= 3 points and finite numeric coordinates."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        return all(math.isfinite(float(v)) for v in poly)
    except (TypeError, ValueError):
        return False


def _keypoint_schema(categories: list, json_path: str) -> tuple[tuple, tuple | None]:
    """(keypoint names, OKS sigmas or None) declared by the categories; every category that declares
    keypoints must declare the same list."""
    declared = {tuple(c["keypoints"]) for c in categories if isinstance(c, dict) and c.get("keypoints")}
    if len(declared) > 1:
        raise ValueError(f"{json_path}: categories declare different keypoint lists {sorted(declared)}")
    names = next(iter(declared)) if declared else ()
    sigmas = None
    for c in categories:
        if isinstance(c, dict) and c.get("kpt_oks_sigmas") is not None:
            sigmas = tuple(float(v) for v in c["kpt_oks_sigmas"])
            if len(sigmas) != len(names):
                raise ValueError(f"{json_path}: category {c.get('id')} has {len(sigmas)} kpt_oks_sigmas for "
                                 f"{len(names)} keypoints")
    return names, sigmas


def _keypoints_of(ann: dict, num_keypoints: int, json_path: str) -> np.ndarray:
    """An annotation's ``keypoints`` [x, y, v] * K as float32 [K, 3] (zeros when absent).

    Raises:
      ValueError: a keypoints list of another length than 3 K, or a non-finite value.
    """
    kp = ann.get("keypoints")
    if not kp:
        return np.zeros((num_keypoints, 3), np.float32)
    arr = np.asarray(kp, dtype=np.float32)
    if arr.shape != (3 * num_keypoints,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{json_path}: annotation {ann.get('id')} has keypoints of length {arr.size} "
                         f"(expected 3 x {num_keypoints} finite numbers)")
    arr = arr.reshape(num_keypoints, 3)
    arr[arr[:, 2] <= 0] = 0.0  # unlabelled: (0, 0, 0) as COCO writes them
    return arr


def _make_coco(data: dict):
    from pycocotools.coco import COCO  # imported lazily: pycocotools prints on construction

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike, *, skip_empty: bool,
              name: str | None = None) -> CocoDataset:
    """Reads a COCO ``instances_*.json`` and checks it against its image folder.

    Args:
      json_path: the COCO annotation file.
      image_dir: the folder holding the images named by each image's ``file_name``.
      skip_empty: drop images without any non-crowd instance left after cleaning (True for training, as
        detectron2; False for evaluation, which must see every image).
      name: a short name for logs; defaults to the json file's stem.

    Returns:
      A `CocoDataset` (see its docstring for the record layout and conventions).

    Raises:
      FileNotFoundError: the json file is missing, or images it lists are missing from ``image_dir``
        (the message names the first few and the count).
      ValueError: the json is unreadable, lacks ``images``/``annotations``/``categories``, has an image
        without id/file_name/height/width or a duplicate id, or an annotation refers to an undeclared
        ``image_id``/``category_id`` or has a malformed ``bbox`` (the message names the annotation id and
        the file).
    """
    json_path = os.path.abspath(os.fspath(json_path))
    image_dir = os.path.abspath(os.fspath(image_dir))
    name = name or os.path.splitext(os.path.basename(json_path))[0]
    data = _read_json(json_path)

    # Categories: contiguous ids in ascending dataset-id order.
    cats = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise ValueError(f"{json_path}: category entry without an 'id': {c!r}")
        if c["id"] in cats:
            raise ValueError(f"{json_path}: duplicate category id {c['id']}")
        cats[int(c["id"])] = str(c.get("name", c["id"]))
    category_ids = sorted(cats)
    cat_to_class = {cid: i for i, cid in enumerate(category_ids)}
    keypoint_names, oks_sigmas = _keypoint_schema(data["categories"], json_path)

    # Images.
    images = {}
    for im in data["images"]:
        if not isinstance(im, dict):
            raise ValueError(f"{json_path}: image entry is not an object: {im!r}")
        miss = [k for k in ("id", "file_name", "height", "width") if k not in im]
        if miss:
            raise ValueError(f"{json_path}: image {im.get('id', im)!r} lacks {miss}")
        iid = int(im["id"])
        if iid in images:
            raise ValueError(f"{json_path}: duplicate image id {iid}")
        h, w = int(im["height"]), int(im["width"])
        if h <= 0 or w <= 0:
            raise ValueError(f"{json_path}: image {iid} ({im['file_name']}) has size {h}x{w}")
        images[iid] = im

    missing = [im["file_name"] for im in images.values()
               if not os.path.exists(os.path.join(image_dir, im["file_name"]))]
    if missing:
        shown = ", ".join(os.path.join(image_dir, f) for f in missing[:_MAX_MISSING_LISTED])
        raise FileNotFoundError(
            f"{len(missing)} of {len(images)} images listed in {json_path} are missing from {image_dir}: "
            f"{shown}{' ...' if len(missing) > _MAX_MISSING_LISTED else ''}")

    stats = dict(num_images_json=len(images), num_annotations_json=len(data["annotations"]),
                 nonfinite_boxes=0, clipped_boxes=0, degenerate_boxes=0, invalid_polygons=0,
                 invalid_segmentations=0, skipped_empty_images=0)

    per_image: dict[int, list] = {iid: [] for iid in images}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"{json_path}: annotation entry is not an object: {ann!r}")
        aid = ann.get("id")
        iid = ann.get("image_id")
        if iid not in images:
            raise ValueError(f"{json_path}: annotation {aid} refers to image_id {iid!r}, which is not in 'images'")
        cid = ann.get("category_id")
        if cid not in cat_to_class:
            raise ValueError(
                f"{json_path}: annotation {aid} refers to category_id {cid!r}, which is not in 'categories'")
        bbox = ann.get("bbox")
        try:
            x, y, bw, bh = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise ValueError(f"{json_path}: annotation {aid} has a malformed bbox {bbox!r} "
                             "(expected [x, y, width, height])") from None
        if not all(math.isfinite(v) for v in (x, y, bw, bh)):
            stats["nonfinite_boxes"] += 1
            continue
        im = images[iid]
        H, W = float(im["height"]), float(im["width"])
        x1, y1, x2, y2 = x, y, x + bw, y + bh
        cx1, cy1 = min(max(x1, 0.0), W), min(max(y1, 0.0), H)
        cx2, cy2 = min(max(x2, 0.0), W), min(max(y2, 0.0), H)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            stats["clipped_boxes"] += 1
        if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
            stats["degenerate_boxes"] += 1
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            polygons = [p for p in seg if _valid_polygon(p)]
            if not polygons:
                stats["invalid_polygons"] += len(seg)
                stats["invalid_segmentations"] += 1
                continue
            if len(polygons) != len(seg):
                stats["invalid_polygons"] += len(seg) - len(polygons)
                ann = {**ann, "segmentation": polygons}
        per_image[iid].append((ann, (cx1, cy1, cx2, cy2), cat_to_class[cid]))

    records = []
    for iid in sorted(images):
        anns = per_image[iid]
        is_crowd = np.array([bool(a.get("iscrowd", 0)) for a, _, _ in anns], dtype=bool)
        if skip_empty and not np.any(~is_crowd):
            stats["skipped_empty_images"] += 1
            continue
        im = images[iid]
        records.append(dict(
            image_id=iid,
            file_name=os.path.join(image_dir, im["file_name"]),
            height=int(im["height"]),
            width=int(im["width"]),
            boxes=np.array([b for _, b, _ in anns], dtype=np.float32).reshape(-1, 4),
            classes=np.array([c for _, _, c in anns], dtype=np.int32),
            is_crowd=is_crowd,
            segmentations=[a.get("segmentation") for a, _, _ in anns],
            ann_ids=np.array([a.get("id", -1) for a, _, _ in anns], dtype=np.int64),
        ))
        if keypoint_names:
            records[-1]["keypoints"] = np.stack(
                [_keypoints_of(a, len(keypoint_names), json_path) for a, _, _ in anns]
            ).reshape(-1, len(keypoint_names), 3) if anns else np.zeros((0, len(keypoint_names), 3), np.float32)
    stats["num_images"] = len(records)
    stats["num_instances"] = int(sum(len(r["classes"]) for r in records))
    stats["num_crowd"] = int(sum(int(r["is_crowd"].sum()) for r in records))

    for key, what in (("nonfinite_boxes", "annotations with a NaN/inf bbox dropped"),
                      ("degenerate_boxes", "annotations with a box narrower or shorter than 1 px dropped"),
                      ("invalid_polygons", "polygons with < 3 points or a non-finite coordinate removed"),
                      ("invalid_segmentations", "annotations without a valid polygon dropped"),
                      ("clipped_boxes", "boxes clipped to their image"),
                      ("skipped_empty_images", "images without a non-crowd instance skipped")):
        if stats[key]:
            logger.warning("%s (%s): %d %s", name, json_path, stats[key], what)
    logger.info("%s: %d images, %d instances (%d crowd), %d classes", name, stats["num_images"],
                stats["num_instances"], stats["num_crowd"], len(category_ids))

    return CocoDataset(records=records, category_ids=category_ids,
                       class_names=[cats[c] for c in category_ids], json_path=json_path,
                       image_dir=image_dir, coco=_make_coco(data), name=name, stats=stats,
                       keypoint_names=keypoint_names, keypoint_oks_sigmas=oks_sigmas)
