"""Host-side image and box transforms (numpy + Pillow), one pure function each.

Conventions: images are ``uint8 [H, W, 3]`` arrays (HWC); boxes are ``float32 [n, 4]`` xyxy in continuous
pixel coordinates of the image they go with (a box covering pixel columns 0..9 has x1=0, x2=10, as in
torchvision and detectron2). Sizes are ``(height, width)``.

The training/eval chain of `jaxdet.data.pipeline` is::

    decode_image -> resize_scale/resize_image (+ resize_boxes) -> hflip (train) -> pad_to_canvas
                 -> pad_instances

which reproduces torchvision's ``GeneralizedRCNNTransform`` (``torchvision/models/detection/transform.py``)
resize rule and box scaling, followed by detectron2-style padding into a fixed canvas (see DESIGN.md §1).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

logger = logging.getLogger(__name__)

__all__ = [
    "decode_image", "resize_scale", "resized_size", "resize_image", "resize_boxes", "hflip",
    "choose_canvas", "pad_to_canvas", "select_instances", "pad_instances",
]

_warned_truncation_flag = False
_warned_too_many = False


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3] RGB. 16-bit/32-bit integer images are scaled by 1/257 (0..65535 -> 0..255)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "F":
        a = np.clip(np.round(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, 1, P, ...
    return np.asarray(img, dtype=np.uint8)


def decode_image(path: str | os.PathLike, channel_order: str = "RGB") -> np.ndarray:
    """Reads an image file as 8-bit 3-channel pixels, upright.

    Applies the EXIF orientation (``PIL.ImageOps.exif_transpose``, as detectron2's
    ``detection_utils.read_image``), converts grayscale, palette, RGBA (alpha dropped), CMYK and
    16-bit images to 8-bit RGB (16-bit values are divided by 257), then reorders channels if asked.

    Args:
      path: the image file (any format Pillow reads: JPEG, PNG, ...).
      channel_order: ``'RGB'`` (torchvision weights) or ``'BGR'`` (MSRA/detectron2/Caffe2 weights).

    Returns:
      uint8 [H, W, 3], H and W after the EXIF rotation.

    Raises:
      FileNotFoundError: the file does not exist (the message names it).
      ValueError: the file is empty, not an image, corrupt or truncated (the message names it), or
        ``channel_order`` is neither 'RGB' nor 'BGR'.

    Truncated files raise because the pixels are decoded eagerly (``Image.load()``) with Pillow's
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` left False; if some other code sets that flag True, Pillow fills
    the missing part with grey and this function can no longer tell (a warning is logged once).
    """
    global _warned_truncation_flag
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    path = os.fspath(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncation_flag:
        _warned_truncation_flag = True
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images will load silently")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    if size == 0:
        raise ValueError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb8(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ValueError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
    if channel_order == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def resize_scale(h: int, w: int, min_size: float, max_size: float) -> float:
    """The resize factor of torchvision's ``GeneralizedRCNNTransform`` (``_resize_image_and_masks``).

    ``scale = min(min_size / min(h, w), max_size / max(h, w))`` in float64: the short side goes to
    ``min_size`` unless the long side would then exceed ``max_size``. The output size is
    `resized_size` ``= (floor(h * scale), floor(w * scale))`` (``F.interpolate(scale_factor=...,
    recompute_scale_factor=True)`` truncates).

    Args:
      h, w: original image height and width (pixels, > 0).
      min_size, max_size: target short side and cap on the long side (pixels).

    Raises:
      ValueError: a non-positive size.
    """
    if h <= 0 or w <= 0 or min_size <= 0 or max_size <= 0:
        raise ValueError(f"resize_scale needs positive sizes, got h={h}, w={w}, min_size={min_size}, "
                         f"max_size={max_size}")
    return min(float(min_size) / min(h, w), float(max_size) / max(h, w))


def resized_size(h: int, w: int, min_size: float, max_size: float) -> tuple[int, int]:
    """(new_h, new_w) = (floor(h * scale), floor(w * scale)) with ``scale = resize_scale(...)``, as torchvision."""
    s = resize_scale(h, w, min_size, max_size)
    return int(h * s), int(w * s)


def resize_image(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, C] image to [new_h, new_w, C] with Pillow (``Image.BILINEAR``).

    Pillow's bilinear filter widens its support when downscaling (antialiasing) and rounds to uint8, so the
    pixels are close to but not bit-identical with torch's ``F.interpolate(mode='bilinear',
    align_corners=False)`` on float images; parity tests against torchvision therefore feed float images to
    both sides rather than going through this function. The geometry is the same (half-pixel centres: output
    column ``x`` samples input ``(x + 0.5) * w / new_w - 0.5``), so boxes scale by ``new / old`` exactly.

    Raises:
      ValueError: ``image`` is not uint8 [H, W, 3] or a target size is < 1.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"resize_image expects uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if new_h < 1 or new_w < 1:
        raise ValueError(f"resize_image: target size {new_h}x{new_w} is empty")
    if (new_h, new_w) == image.shape[:2]:
        return image.copy()
    out = Image.fromarray(image).resize((int(new_w), int(new_h)), resample=Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def resize_boxes(boxes: np.ndarray, orig_hw: Sequence[int], new_hw: Sequence[int]) -> np.ndarray:
    """Scales xyxy boxes float32 [n, 4] from an (h, w) image to a (new_h, new_w) one.

    x scales by ``new_w / w`` and y by ``new_h / h`` (float32 ratios of the integer sizes), exactly as
    torchvision's ``transform.resize_boxes``. Returns float32 [n, 4].
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    rh = np.float32(new_hw[0]) / np.float32(orig_hw[0])
    rw = np.float32(new_hw[1]) / np.float32(orig_hw[1])
    return boxes * np.array([rw, rh, rw, rh], dtype=np.float32)


def hflip(image: np.ndarray, boxes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of an image [H, W, C] and its xyxy boxes float32 [n, 4].

    ``x1' = width - x2``, ``x2' = width - x1`` (continuous coordinates, as torchvision's
    ``references/detection/transforms.RandomHorizontalFlip`` and detectron2's ``HFlipTransform``).
    ``width`` is the width of the image the boxes live in (normally ``image.shape[1]``).

    Returns (flipped image, same dtype and shape; flipped boxes, float32 [n, 4]).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def choose_canvas(h: int, w: int, canvases: Sequence[Sequence[int]]) -> int:
    """Index of the smallest canvas (by area, first on ties) that a resized (h, w) image fits in.

    Args:
      h, w: the resized image size (pixels).
      canvases: list of (H, W) canvas sizes from the config.

    Raises:
      ValueError: no canvas has ``H >= h`` and ``W >= w`` (the message gives the size and the canvases).
    """
    best, best_area = -1, None
    for i, (ch, cw) in enumerate(canvases):
        if ch >= h and cw >= w and (best_area is None or ch * cw < best_area):
            best, best_area = i, ch * cw
    if best < 0:
        raise ValueError(f"a resized image of {h}x{w} (HxW) fits in none of the canvases {list(map(tuple, canvases))}")
    return best


def pad_to_canvas(image: np.ndarray, canvas_hw: Sequence[int]) -> np.ndarray:
    """Places an image [h, w, C] at the top-left of a zero canvas [H, W, C] (same dtype).

    Padding goes to the bottom and right, so box coordinates are unchanged (as torchvision's
    ``batch_images`` and detectron2's ``ImageList.from_tensors``).

    Raises:
      ValueError: the image is larger than the canvas.
    """
    H, W = int(canvas_hw[0]), int(canvas_hw[1])
    h, w = image.shape[:2]
    if h > H or w > W:
        raise ValueError(f"image of {h}x{w} does not fit in the canvas {H}x{W}")
    out = np.zeros((H, W) + image.shape[2:], dtype=image.dtype)
    out[:h, :w] = image
    return out


def select_instances(boxes: np.ndarray, is_crowd: np.ndarray, max_instances: int) -> np.ndarray:
    """Indices (int64 [k], k = min(n, max_instances), ascending) of the instances kept in a padded slot.

    Policy when ``n > max_instances``: non-crowd instances before crowd ones, larger box area first
    (ties by original order); the kept indices are returned in their original order. Small objects are
    the least costly to lose for training signal, crowd regions only suppress negatives. A warning with the
    counts is logged the first time it happens.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    if n <= max_instances:
        return np.arange(n, dtype=np.int64)
    global _warned_too_many
    if not _warned_too_many:
        _warned_too_many = True
        logger.warning("an image has %d instances > max_instances=%d: keeping the %d largest non-crowd first "
                       "(logged once)", n, max_instances, max_instances)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((np.arange(n), -area, np.asarray(is_crowd, dtype=bool)))
    return np.sort(order[:max_instances]).astype(np.int64)


def pad_instances(boxes: np.ndarray, classes: np.ndarray, is_crowd: np.ndarray, max_instances: int):
    """Pads (or trims, see `select_instances`) an image's ground truth to ``max_instances`` slots.

    Args:
      boxes: float32 [n, 4] xyxy; classes: int [n]; is_crowd: bool [n].
      max_instances: M, the static number of slots.

    Returns:
      (boxes float32 [M, 4], classes int32 [M], valid bool [M], is_crowd bool [M]); padded slots are zero
      boxes, class 0, valid False, is_crowd False.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int32).reshape(-1)
    is_crowd = np.asarray(is_crowd, dtype=bool).reshape(-1)
    if not (boxes.shape[0] == classes.shape[0] == is_crowd.shape[0]):
        raise ValueError(f"pad_instances: {boxes.shape[0]} boxes, {classes.shape[0]} classes, "
                         f"{is_crowd.shape[0]} is_crowd flags")
    keep = select_instances(boxes, is_crowd, max_instances)
    k = keep.shape[0]
    out_boxes = np.zeros((max_instances, 4), np.float32)
    out_classes = np.zeros((max_instances,), np.int32)
    valid = np.zeros((max_instances,), bool)
    crowd = np.zeros((max_instances,), bool)
    out_boxes[:k] = boxes[keep]
    out_classes[:k] = classes[keep]
    valid[:k] = True
    crowd[:k] = is_crowd[keep]
    return out_boxes, out_classes, valid, crowd
