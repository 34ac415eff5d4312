"""Mask R-CNN masks on the host: box-relative S x S probabilities -> full-image binary masks -> COCO RLE.

Two pasting conventions exist and they differ by up to a pixel at mask borders:

* ``"torchvision"`` (:func:`paste_masks_torchvision`): ``torchvision/models/detection/roi_heads.py``
  ``paste_masks_in_image``: the mask is padded by one cell, its box expanded accordingly and truncated to
  integers, the mask resized to the integer box size with bilinear ``F.interpolate(align_corners=False)``;
* ``"detectron2"`` (:func:`paste_masks_detectron2`): ``detectron2/layers/mask_ops.py::_do_paste_mask``,
  ``grid_sample`` at each pixel centre of the continuous box.

jaxdet's models follow torchvision, so :func:`paste_masks` defaults to the torchvision convention.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["paste_masks", "paste_masks_torchvision", "paste_masks_detectron2", "encode_rle"]


def _check(masks, boxes, who: str):
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64)
    if masks.ndim != 3 or boxes.ndim != 2 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"{who}: masks must be [N, S, S] and boxes [N, 4], got {masks.shape} and {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{who}: boxes must be finite")
    return masks, boxes


def _linear_weights(in_size: int, out_size: int):
    """Source indices and weights of PyTorch's bilinear resize (``align_corners=False``) along one axis:
    src = max((dst + 0.5) * in / out - 0.5, 0); i0 = floor(src), i1 = min(i0 + 1, in - 1)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0).astype(np.float32)
    return i0, i1, np.float32(1.0) - l1, l1


def paste_masks_torchvision(masks, boxes, image_hw: Sequence[int], threshold: float | None = 0.5) -> np.ndarray:
    """Pastes box-relative masks into the image as torchvision's ``paste_masks_in_image`` (padding 1).

    Args:
      masks: float [N, M, M] probabilities, each covering its box.
      boxes: float [N, 4] xyxy in the target image's pixels.
      image_hw: (H, W) of the target image.
      threshold: binarisation threshold (``> threshold``, as torchvision's COCO evaluation ``masks > 0.5``);
        None returns the float32 probabilities.

    Returns:
      bool [N, H, W] (float32 with ``threshold=None``).

    Raises:
      ValueError: masks not [N, M, M], boxes not [N, 4], or a non-finite box.
    """
    masks, boxes = _check(masks, boxes, "paste_masks_torchvision")
    H, W = int(image_hw[0]), int(image_hw[1])
    n, m = masks.shape[:2]
    scale = np.float32((m + 2) / m)
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    b = boxes.astype(np.float32)
    w_half = (b[:, 2] - b[:, 0]) * np.float32(0.5) * scale
    h_half = (b[:, 3] - b[:, 1]) * np.float32(0.5) * scale
    x_c = (b[:, 2] + b[:, 0]) * np.float32(0.5)
    y_c = (b[:, 3] + b[:, 1]) * np.float32(0.5)
    exp = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1)
    exp = np.trunc(exp).astype(np.int64)  # Tensor.to(torch.int64) truncates toward zero
    out = np.zeros((n, H, W), np.float32)
    for i in range(n):
        x0b, y0b, x1b, y1b = (int(v) for v in exp[i])
        w, h = max(x1b - x0b + 1, 1), max(y1b - y0b + 1, 1)
        r0, r1, rl0, rl1 = _linear_weights(m + 2, h)
        c0, c1, cl0, cl1 = _linear_weights(m + 2, w)
        p = padded[i]
        top = p[r0][:, c0] * cl0 + p[r0][:, c1] * cl1
        bottom = p[r1][:, c0] * cl0 + p[r1][:, c1] * cl1
        resized = top * rl0[:, None] + bottom * rl1[:, None]
        x_0, x_1 = max(x0b, 0), min(x1b + 1, W)
        y_0, y_1 = max(y0b, 0), min(y1b + 1, H)
        if x_1 > x_0 and y_1 > y_0:
            out[i, y_0:y_1, x_0:x_1] = resized[y_0 - y0b:y_1 - y0b, x_0 - x0b:x_1 - x0b]
    return out if threshold is None else out > threshold


def paste_masks_detectron2(masks, boxes, image_hw: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Pastes box-relative mask probabilities into full-image boolean masks, as detectron2 does.

    Matches detectron2's ``layers/mask_ops.py::_do_paste_mask`` (and torchvision's ``paste_masks_in_image`` up
    to its one-pixel padding): the value at image pixel centre ``(x + 0.5, y + 0.5)`` is the bilinear sample of
    the ``S x S`` mask at ``u = (x + 0.5 - x1) / (x2 - x1) * S - 0.5`` (columns, and likewise rows), with zero
    outside the mask (``F.grid_sample(align_corners=False, padding_mode="zeros")``), then ``>= threshold``.

    Args:
      masks: float [N, S, S] (or [N, Sh, Sw]) probabilities in 0..1, each covering its box.
      boxes: float [N, 4] xyxy in the target image's continuous pixel coordinates.
      image_hw: (H, W) of the target image.
      threshold: binarisation threshold.

    Returns:
      bool [N, H, W].

    Raises:
      ValueError: masks not [N, Sh, Sw], boxes not [N, 4], or a non-finite box.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64)
    if masks.ndim != 3 or boxes.ndim != 2 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks_detectron2: masks must be [N, S, S] and boxes [N, 4], got {masks.shape} and {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("paste_masks_detectron2: boxes must be finite")
    H, W = int(image_hw[0]), int(image_hw[1])
    n, sh, sw = masks.shape
    out = np.zeros((n, H, W), bool)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i]
        bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        # the pixels whose sample can be non-zero: within one mask cell (plus a pixel) of the box
        px, py = int(math.ceil(bw / sw)) + 1, int(math.ceil(bh / sh)) + 1
        c0, c1 = max(int(math.floor(x1)) - px, 0), min(int(math.ceil(x2)) + px, W)
        r0, r1 = max(int(math.floor(y1)) - py, 0), min(int(math.ceil(y2)) + py, H)
        if c1 <= c0 or r1 <= r0:
            continue
        u = (np.arange(c0, c1) + 0.5 - x1) / bw * sw - 0.5
        v = (np.arange(r0, r1) + 0.5 - y1) / bh * sh - 0.5
        padded = np.pad(masks[i], 1)  # zero border: samples outside the mask fade to 0
        u, v = u + 1.0, v + 1.0
        u = np.clip(u, 0.0, sw + 1.0)
        v = np.clip(v, 0.0, sh + 1.0)
        u0 = np.minimum(np.floor(u).astype(np.int64), sw)
        v0 = np.minimum(np.floor(v).astype(np.int64), sh)
        fu, fv = (u - u0)[None, :], (v - v0)[:, None]
        a = padded[np.ix_(v0, u0)]
        b = padded[np.ix_(v0, u0 + 1)]
        c = padded[np.ix_(v0 + 1, u0)]
        d = padded[np.ix_(v0 + 1, u0 + 1)]
        val = (a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + d * fu) * fv
        out[i, r0:r1, c0:c1] = val >= threshold
    return out


def paste_masks(masks, boxes, image_hw: Sequence[int], threshold: float = 0.5,
                style: str = "torchvision") -> np.ndarray:
    """Box-relative mask probabilities float [N, S, S] + boxes [N, 4] (xyxy, target-image pixels) -> bool
    [N, H, W] full-image masks, in the ``style`` convention (``"torchvision"`` or ``"detectron2"``; see the
    module docstring).

    Raises:
      ValueError: an unknown style, or the errors of the chosen paste function.
    """
    if style == "torchvision":
        return paste_masks_torchvision(masks, boxes, image_hw, threshold)
    if style == "detectron2":
        return paste_masks_detectron2(masks, boxes, image_hw, threshold)
    raise ValueError(f"paste_masks: style must be 'torchvision' or 'detectron2', got {style!r}")


def encode_rle(mask: np.ndarray) -> dict:
    """bool [H, W] -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (pycocotools ``mask.encode``)."""
    from pycocotools import mask as mask_util  # noqa: PLC0415

    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
