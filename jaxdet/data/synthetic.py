"""A small synthetic COCO-layout detection dataset: coloured shapes on textured backgrounds.

The embedded default dataset of ``configs/quickstart.py``: no download, a few seconds to make, and easy
enough that a small Faster R-CNN trained from scratch on a CPU reaches a meaningful box AP.

Layout written under ``root`` (the same as COCO 2017, so `jaxdet.data.coco.load_coco` reads it)::

    annotations/instances_train2017.json   annotations/instances_val2017.json
    train2017/000000000001.jpg ...          val2017/000010000001.jpg ...
    synthetic_coco.json                     (the generation parameters: the idempotency marker)

Each image (height and width drawn per image from ``image_size``) has a textured background (smooth
colour noise, a linear gradient, or soft stripes, plus fine grain) and 1..``max_objects`` shapes of the
classes ``circle``, ``rectangle`` and ``triangle`` (category ids 1, 2, 3), each a filled polygon of a
random saturated colour (independent of the class: the class is in the shape) with a little shading,
sized so its longer box side is between ``object_size[0]`` and ``object_size[1]`` pixels, rectangles and
triangles rotated. Objects lie fully inside the image and may overlap (box IoU <= 0.3); later objects
occlude earlier ones (hiding at most 30% of an object's area), and annotations are amodal:
``segmentation`` is the whole polygon in COCO's continuous pixel coordinates, ``bbox`` its exact extent
``[x, y, w, h]``, ``area`` its polygon area, ``iscrowd`` 0. Pixels are rasterised from the same
polygons with pycocotools, so annotation and image agree. The "grain" of the objects is the image-wide
sensor noise; a 3x3 smoothing softens the polygon edges.

Determinism: image i of a split is drawn from ``numpy.random.default_rng([seed, split, i])``; the same
parameters give byte-identical files. Train and val are disjoint draws (val is a held-out set of the same
distribution), image ids are ``1..num_train`` for train and ``10_000_001..`` for val.

Keypoint mode (``keypoints=True``, for Keypoint R-CNN; ``configs/keypoint_rcnn_synthetic.py``): the same kind of
images (rectangles drawn with probability 0.6, circles and triangles 0.2 each), but only the rectangles are
annotated, as the single category ``rectangle`` (id 1); circles and triangles are unannotated distractors.
Each rectangle has K = 5 keypoints (:data:`KEYPOINT_NAMES`): its four corners, named by their place on the
unrotated rectangle (``left_top``, ``right_top``, ``right_bottom``, ``left_bottom``; rotations stay within
+-30 degrees, so the names are unambiguous, and a horizontal flip swaps ``left_*`` and ``right_*``), and its
centre. Keypoints are COCO ``[x, y, v] * K`` in continuous pixel coordinates (the polygon's vertices exactly):
``v = 2`` visible, ``v = 1`` labelled but hidden by an object drawn later (the pixel under the point belongs to
its mask), ``v = 0`` unlabelled (``x = y = 0``; each point with probability 0.1, as COCO's unannotated joints).
The category carries ``keypoints`` (names), ``skeleton`` (the outline, 1-based) and ``kpt_oks_sigmas``
(:data:`KEYPOINT_OKS_SIGMAS`, a jaxdet extension read by ``jaxdet.data.coco.load_coco``: the OKS sigmas for
COCO keypoint AP). Annotation files: ``annotations/keypoints_{train,val}2017.json``; each annotation also has
``num_keypoints`` (labelled points). The default (shapes) mode is unchanged by this option: the same parameters
give the same bytes as before.

CLI: ``python -m jaxdet.data.synthetic --root DIR [--num-train N] [--num-val N] [--seed S] [--keypoints]``.
"""
from __future__ import annotations

import argparse
import colorsys
import io
import json
import logging
import os
import pathlib
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = ["CLASS_NAMES", "KEYPOINT_NAMES", "KEYPOINT_SKELETON", "KEYPOINT_OKS_SIGMAS", "generate_synthetic_coco",
           "main"]

CLASS_NAMES = ("circle", "rectangle", "triangle")
#: Keypoint mode: the rectangle's corners (in the order of its polygon) and its centre.
KEYPOINT_NAMES = ("left_top", "right_top", "right_bottom", "left_bottom", "center")
#: COCO ``skeleton`` (1-based keypoint index pairs): the rectangle's outline.
KEYPOINT_SKELETON = ((1, 2), (2, 3), (3, 4), (4, 1))
#: Per-keypoint OKS sigmas (COCO's range is 0.025 for eyes .. 0.107 for hips; corners and centre are precise).
KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05, 0.05, 0.05)
_KP_CLASS = 1                      # the annotated class in keypoint mode (rectangle)
_KP_CLASS_PROBS = (0.2, 0.6, 0.2)  # class probabilities in keypoint mode (circle, rectangle, triangle)
_KP_UNLABELLED = 0.1               # probability of an unlabelled keypoint (v = 0)
_VERSION = 1
_MARKER = "synthetic_coco.json"
_SPLITS = (("train2017", 0, 1), ("val2017", 1, 10_000_001))  # folder, split seed, first image id
_MAX_BOX_IOU = 0.3
_MAX_OCCLUDED = 0.3  # at most this fraction of an object's area is hidden by later ones
_SOFTEN = ImageFilter.Kernel((3, 3), (1, 2, 1, 2, 4, 2, 1, 2, 1), scale=16)


def _size_range(image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """(h, w) or ((h_lo, h_hi), (w_lo, w_hi)) -> inclusive ranges."""
    h, w = image_size
    hr = (int(h), int(h)) if np.isscalar(h) else (int(h[0]), int(h[1]))
    wr = (int(w), int(w)) if np.isscalar(w) else (int(w[0]), int(w[1]))
    if min(hr + wr) < 32 or hr[0] > hr[1] or wr[0] > wr[1]:
        raise ValueError(f"image_size must be (h, w) or ((h_lo, h_hi), (w_lo, w_hi)) with sides >= 32, "
                         f"got {image_size!r}")
    return hr, wr


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [h, w, 3] in 0..255, muted colours (so saturated objects stand out)."""
    base = rng.uniform(60, 190, size=3)
    grey = base.mean()
    base = grey + 0.45 * (base - grey)  # desaturate
    kind = rng.integers(3)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    base = base.astype(np.float32)
    if kind == 0:  # smooth colour noise: a coarse random grid upsampled
        gh, gw = rng.integers(3, 9, size=2)
        grid = rng.normal(0, 28, size=(gh, gw, 3)) + base
        grid = np.clip(grid, 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)
    elif kind == 1:  # linear gradient between two muted colours
        other = np.clip(base + rng.normal(0, 45, size=3), 20, 235).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    else:  # soft stripes
        other = np.clip(base + rng.normal(0, 30, size=3), 20, 235).astype(np.float32)
        theta = rng.uniform(0, np.pi)
        k = np.float32(2 * np.pi / rng.uniform(8, 40))
        t = 0.5 + 0.5 * np.sin(k * (xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))))
        img = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    return img.astype(np.float32)


def _object_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A saturated colour far (RGB distance >= 110) from the background colour ``avoid``."""
    best, best_d = None, -1.0
    for _ in range(20):
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0)
        c = 255 * np.array(colorsys.hsv_to_rgb(hue, sat, val))
        if rng.random() < 0.15:
            c = np.full(3, rng.choice([25.0, 235.0]))  # occasional black/white object
        d = float(np.linalg.norm(c - avoid))
        if d > best_d:
            best, best_d = c, d
        if d >= 110:
            break
    return best.astype(np.float32)


def _shape_polygon(rng: np.random.Generator, cls: int, side: float) -> np.ndarray:
    """Vertices float64 [k, 2] (x, y) of a shape centred at 0 whose box side is about ``side`` px."""
    if cls == 0:  # circle (a 32-gon)
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(a), np.sin(a)], 1) * (side / 2)
    elif cls == 1:  # rectangle, aspect 0.5..2, rotated by up to 30 degrees
        ar = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        hw, hh = side / 2 * min(1.0, ar), side / 2 * min(1.0, 1 / ar)
        pts = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        pts = _rotate(pts, rng.uniform(-np.pi / 6, np.pi / 6))
    else:  # triangle: a jittered equilateral, any rotation
        a = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(0, 2 * np.pi) + rng.uniform(-0.25, 0.25, 3)
        r = (side / 2) * rng.uniform(0.9, 1.1, 3)
        pts = np.stack([np.cos(a) * r, np.sin(a) * r], 1)
    ext = pts.max(0) - pts.min(0)
    pts = pts * (side / max(float(ext.max()), 1e-6))  # the longer box side is exactly `side`
    return pts - (pts.max(0) + pts.min(0)) / 2


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _make_image(rng: np.random.Generator, h: int, w: int, max_objects: int,
                object_size: tuple[int, int], keypoints: bool = False) -> tuple[np.ndarray, list[dict]]:
    """uint8 [h, w, 3] image and its annotations (category_id, bbox, area, segmentation; in keypoint mode only
    the rectangles, with category 1 and ``keypoints`` / ``num_keypoints``, see the module docstring)."""
    from pycocotools import mask as mask_utils

    img = _background(rng, h, w)
    n = int(rng.integers(1, max_objects + 1))
    lo = float(object_size[0])
    hi = float(min(object_size[1], 0.7 * min(h, w)))
    boxes: list[np.ndarray] = []
    anns = []
    visible: list[tuple[np.ndarray, int]] = []  # (visible part, full area) of each object drawn
    masks: list[np.ndarray] = []                # keypoint mode: the mask of each object drawn
    owner: list[int] = []                       # keypoint mode: the object index of each annotation
    for _ in range(n):
        if keypoints:
            cls = int(rng.choice(len(CLASS_NAMES), p=_KP_CLASS_PROBS))
        else:
            cls = int(rng.integers(len(CLASS_NAMES)))
        for _try in range(30):
            side = float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))
            pts = _shape_polygon(rng, cls, side)
            ext = pts.max(0) - pts.min(0)
            cx = rng.uniform(1 + ext[0] / 2, w - 1 - ext[0] / 2)
            cy = rng.uniform(1 + ext[1] / 2, h - 1 - ext[1] / 2)
            poly = np.round(pts + [cx, cy], 2)
            box = np.concatenate([poly.min(0), poly.max(0)])
            if not all(_box_iou(box, b) <= _MAX_BOX_IOU for b in boxes):
                continue
            flat = [float(v) for v in poly.reshape(-1)]
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], h, w))).astype(bool)
            # every earlier object must stay mostly visible
            if all((vis & ~mask).sum() >= (1 - _MAX_OCCLUDED) * full for vis, full in visible):
                break
        else:
            continue
        visible = [(vis & ~mask, full) for vis, full in visible] + [(mask, max(int(mask.sum()), 1))]
        boxes.append(box)
        # work inside the box only
        bx1, by1 = int(np.floor(box[0])), int(np.floor(box[1]))
        bx2, by2 = int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1
        m = mask[by1:by2, bx1:bx2]
        region = img[by1:by2, bx1:bx2]
        under = region[m].mean(0) if m.any() else region.reshape(-1, 3).mean(0)
        colour = _object_colour(rng, under)
        # shading: a gentle linear light across the object
        theta = rng.uniform(0, 2 * np.pi)
        gy, gx = np.mgrid[by1:by2, bx1:bx2].astype(np.float32)
        shade = ((gx - cx) * np.cos(theta) + (gy - cy) * np.sin(theta)) / max(side, 1.0) * rng.uniform(10, 35)
        region[m] = (colour[None, None] + shade[..., None])[m]
        x1, y1, x2, y2 = (float(v) for v in box)
        area = 0.5 * abs(float(np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1))))
        if keypoints:
            masks.append(mask)
            if cls != _KP_CLASS:
                continue  # a distractor: drawn, not annotated
            owner.append(len(masks) - 1)
            centre = poly.mean(0)
            kps = np.concatenate([poly, centre[None]], 0)          # [5, 2]: corners in polygon order, centre
            anns.append(dict(category_id=1, bbox=[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                             area=round(area, 2), segmentation=[flat], iscrowd=0, keypoints=kps))
            continue
        anns.append(dict(category_id=cls + 1, bbox=[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                         area=round(area, 2), segmentation=[flat], iscrowd=0))
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * 5.0  # sensor grain
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = out.filter(_SOFTEN)  # soften the hard polygon edges
    if keypoints:
        for a, i in zip(anns, owner):
            _label_keypoints(rng, a, masks[i + 1:], h, w)
    return np.asarray(out), anns


def _label_keypoints(rng: np.random.Generator, ann: dict, later_masks: list[np.ndarray], h: int, w: int) -> None:
    """Replaces ``ann["keypoints"]`` (float [K, 2]) by COCO's flat ``[x, y, v] * K`` (v = 1 where an object drawn
    later covers the pixel under the point, 0 with probability ``_KP_UNLABELLED``, else 2) and sets
    ``num_keypoints``."""
    pts = ann["keypoints"]
    cover = np.zeros((h, w), bool)
    for m in later_masks:
        cover |= m
    flat, labelled = [], 0
    unlabelled = rng.random(len(pts)) < _KP_UNLABELLED
    for (x, y), drop in zip(pts, unlabelled):
        if drop:
            flat += [0.0, 0.0, 0]
            continue
        px, py = min(max(int(np.floor(x)), 0), w - 1), min(max(int(np.floor(y)), 0), h - 1)
        flat += [round(float(x), 2), round(float(y), 2), 1 if cover[py, px] else 2]
        labelled += 1
    ann["keypoints"] = flat
    ann["num_keypoints"] = labelled


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
    else:
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _params(num_train, num_val, image_size, max_objects, object_size, seed, image_format, keypoints=False) -> dict:
    hr, wr = _size_range(image_size)
    params = dict(version=_VERSION, num_train=int(num_train), num_val=int(num_val), image_size=[list(hr), list(wr)],
                  max_objects=int(max_objects), object_size=[int(object_size[0]), int(object_size[1])],
                  seed=int(seed), image_format=image_format)
    if keypoints:  # only then: a shapes dataset keeps the marker (and so the files) it had
        params["keypoints"] = True
    return params


def _annotation_file(root: pathlib.Path, folder: str, params: dict) -> pathlib.Path:
    """``annotations/instances_<folder>.json``, or ``keypoints_<folder>.json`` in keypoint mode."""
    prefix = "keypoints" if params.get("keypoints") else "instances"
    return root / "annotations" / f"{prefix}_{folder}.json"


def _is_complete(root: pathlib.Path, params: dict) -> bool:
    marker = root / _MARKER
    if not marker.exists():
        return False
    try:
        if json.loads(marker.read_text()) != params:
            return False
        for folder, _, _ in _SPLITS:
            data = json.loads(_annotation_file(root, folder, params).read_text())
            if not all((root / folder / im["file_name"]).exists() for im in data["images"]):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def _remove_previous(root: pathlib.Path) -> None:
    """Deletes the files a previous generation (with a marker) wrote, nothing else."""
    if not (root / _MARKER).exists():
        return
    try:
        previous = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        previous = {}
    previous = previous if isinstance(previous, dict) else {}
    for folder, _, _ in _SPLITS:
        ann = _annotation_file(root, folder, previous)
        try:
            data = json.loads(ann.read_text())
        except (OSError, ValueError):
            continue
        for im in data.get("images", []):
            (root / folder / im["file_name"]).unlink(missing_ok=True)
        ann.unlink(missing_ok=True)
    (root / _MARKER).unlink(missing_ok=True)


def generate_synthetic_coco(root: str | os.PathLike, *, num_train: int = 512, num_val: int = 128,
                            image_size: Sequence = ((256, 320), (256, 320)), max_objects: int = 6,
                            object_size: tuple[int, int] = (16, 128), seed: int = 0,
                            image_format: str = "jpg", keypoints: bool = False) -> pathlib.Path:
    """Writes (or reuses) the synthetic COCO dataset under ``root`` and returns ``root`` as a Path.

    Args:
      root: output folder (created if needed).
      num_train, num_val: number of images per split (val is held out: disjoint random draws).
      image_size: ``(h, w)`` for a fixed size or ``((h_lo, h_hi), (w_lo, w_hi))`` (inclusive) drawn per image.
      max_objects: objects per image are drawn uniformly in ``1..max_objects`` (fewer if they do not fit
        without overlapping more than box IoU 0.3).
      object_size: (min, max) of an object's longer box side, in pixels (max is also capped at 0.7 x the
        image's short side).
      seed: the dataset seed; the same parameters give byte-identical files.
      image_format: 'jpg' (quality 92) or 'png'.
      keypoints: write the keypoint dataset instead (annotated rectangles with 5 keypoints, unannotated
        distractors, ``annotations/keypoints_*.json``; see the module docstring).

    If ``root`` already holds a complete generation with the same parameters (``synthetic_coco.json``), it
    is reused untouched; a generation with other parameters is replaced (only its own files are removed).

    Raises:
      ValueError: bad sizes or counts, or an unknown image_format.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if num_train < 0 or num_val < 0 or max_objects < 1:
        raise ValueError(f"need num_train, num_val >= 0 and max_objects >= 1, got {num_train}, {num_val}, "
                         f"{max_objects}")
    if not 4 <= object_size[0] <= object_size[1]:
        raise ValueError(f"object_size must be (min, max) with 4 <= min <= max, got {object_size!r}")
    root = pathlib.Path(root)
    params = _params(num_train, num_val, image_size, max_objects, object_size, seed, image_format, keypoints)
    if _is_complete(root, params):
        logger.info("synthetic COCO at %s is up to date, reused", root)
        return root
    _remove_previous(root)
    (hr, wr) = params["image_size"]
    if keypoints:
        categories = [dict(id=1, name=CLASS_NAMES[_KP_CLASS], supercategory="shape", keypoints=list(KEYPOINT_NAMES),
                           skeleton=[list(p) for p in KEYPOINT_SKELETON], kpt_oks_sigmas=list(KEYPOINT_OKS_SIGMAS))]
    else:
        categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(CLASS_NAMES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for (folder, split, first_id), count in zip(_SPLITS, (num_train, num_val)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"synthetic {folder}", unit="img", leave=False, mininterval=1.0):
            rng = np.random.default_rng([int(seed), split, i])
            h, w = int(rng.integers(hr[0], hr[1] + 1)), int(rng.integers(wr[0], wr[1] + 1))
            pixels, anns = _make_image(rng, h, w, max_objects, tuple(object_size), keypoints)
            image_id = first_id + i
            file_name = f"{image_id:012d}.{image_format}"
            (root / folder / file_name).write_bytes(_encode(pixels, image_format))
            images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
            for a in anns:
                annotations.append(dict(id=ann_id, image_id=image_id, **a))
                ann_id += 1
        description = "jaxdet synthetic keypoints" if keypoints else "jaxdet synthetic shapes"
        data = dict(info=dict(description=description, version=str(_VERSION), year=2024),
                    licenses=[], categories=categories, images=images, annotations=annotations)
        _annotation_file(root, folder, params).write_text(json.dumps(data))
    (root / _MARKER).write_text(json.dumps(params, indent=1))  # last: marks the generation complete
    logger.info("wrote synthetic COCO to %s: %d train, %d val images", root, num_train, num_val)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: ``python -m jaxdet.data.synthetic --root DIR``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="output folder")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-val", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--keypoints", action="store_true", help="write the keypoint dataset (rectangles, 5 keypoints)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = generate_synthetic_coco(a.root, num_train=a.num_train, num_val=a.num_val, seed=a.seed,
                                   image_format=a.format, keypoints=a.keypoints)
    print(root)


if __name__ == "__main__":
    main()
