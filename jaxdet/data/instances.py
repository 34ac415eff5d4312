"""Host-side instance targets beyond boxes: box-cropped masks (Mask R-CNN) and keypoints (Keypoint R-CNN).

Conventions of DESIGN.md section 2:

* ``gt_masks`` [M, S, S] uint8 0/1: each instance's mask *within its own ground-truth box*, resampled to
  S x S. Polygons are rasterised directly in the box frame (x -> (x - x1) * S / (x2 - x1)), as detectron2's
  ``structures/masks.py::rasterize_polygons_within_box``; the device then takes each RoI's 28 x 28 target
  out of this grid with RoIAlign (``jaxdet/ops/masks.py``). The box frame is invariant to resizing and a
  horizontal flip mirrors it, so the host works in original-image pixels and flips the S x S grid.
* ``gt_keypoints`` [M, K, 3] float32: (x, y, visibility) with x, y in canvas pixels (continuous coordinates,
  scaled like the boxes) and COCO visibility 0 (not labelled; then x = y = 0), 1 (labelled, occluded) or
  2 (visible). A horizontal flip maps x -> width - x and swaps left/right keypoints, as torchvision's
  ``references/detection/transforms.py::_flip_coco_person_keypoints`` and detectron2's
  ``transforms/transform.py::HFlipTransform.apply_coords`` + ``keypoint_hflip_indices``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["rasterize_in_box", "instance_masks", "keypoint_flip_indices", "resize_keypoints", "hflip_keypoints",
           "pad_rows"]


def rasterize_in_box(segmentation: Any, box: Sequence[float], size: int, image_hw: Sequence[int]) -> np.ndarray:
    """One instance's mask inside its box, uint8 [size, size] (0/1).

    Args:
      segmentation: a COCO segmentation in original-image pixels: a list of polygons
        ``[[x0, y0, x1, y1, ...], ...]``, an RLE dict (compressed or uncompressed), or None / ``[]`` (no mask
        given: the whole box is taken as the mask).
      box: xyxy float, original-image pixels (the instance's clipped box).
      size: S, the output resolution.
      image_hw: (H, W) of the original image (needed to decode RLE).

    Raises:
      ValueError: an unrecognised segmentation type.
    """
    from pycocotools import mask as mask_util  # noqa: PLC0415 - host-only dependency

    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return np.ones((size, size), np.uint8)
    if isinstance(segmentation, list):
        polys = []
        for p in segmentation:
            p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
            p = (p - [x1, y1]) * [size / bw, size / bh]
            polys.append(p.reshape(-1).tolist())
        rles = mask_util.frPyObjects(polys, size, size)
        return mask_util.decode(mask_util.merge(rles)).astype(np.uint8)
    if isinstance(segmentation, dict):
        h, w = int(image_hw[0]), int(image_hw[1])
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, h, w)
        full = mask_util.decode(rle).astype(np.float32)
        # Sample the full mask at the centres of the S x S box cells (nearest pixel).
        xs = np.clip(np.floor(x1 + (np.arange(size) + 0.5) * bw / size).astype(np.int64), 0, w - 1)
        ys = np.clip(np.floor(y1 + (np.arange(size) + 0.5) * bh / size).astype(np.int64), 0, h - 1)
        return (full[ys[:, None], xs[None, :]] > 0.5).astype(np.uint8)
    raise ValueError(f"unrecognised segmentation of type {type(segmentation).__name__}")


def instance_masks(segmentations: Sequence[Any], boxes: np.ndarray, keep: np.ndarray, size: int,
                   image_hw: Sequence[int], flip: bool, max_instances: int) -> np.ndarray:
    """``gt_masks`` of one image: uint8 [max_instances, size, size], rows in the order of ``keep``.

    Args:
      segmentations: the record's COCO segmentations (original pixels); boxes: float32 [n, 4] their clipped
        boxes in original pixels; keep: int [k] the instances kept in the padded slots
        (:func:`jaxdet.data.transforms.select_instances`).
      size: S; image_hw: original (H, W); flip: mirror each grid horizontally (the image was flipped).
    """
    out = np.zeros((max_instances, size, size), np.uint8)
    for row, i in enumerate(keep):
        m = rasterize_in_box(segmentations[i], boxes[i], size, image_hw)
        out[row] = m[:, ::-1] if flip else m
    return out


# COCO keypoint names are "left_x" / "right_x"; detectron2 builds its flip map from such pairs.
def keypoint_flip_indices(names: Sequence[str]) -> np.ndarray:
    """Index permutation int64 [K] that swaps left/right keypoints: ``flipped[k] = original[perm[k]]``.

    Pairs are found by name: ``left_*`` <-> ``right_*`` (also ``l_*``/``r_*`` and ``*_left``/``*_right``);
    unpaired keypoints map to themselves.
    """
    names = [str(n) for n in names]
    index = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names), dtype=np.int64)
    swaps = (("left_", "right_"), ("right_", "left_"), ("l_", "r_"), ("r_", "l_"))
    for i, n in enumerate(names):
        for a, b in swaps:
            if n.startswith(a) and b + n[len(a):] in index:
                perm[i] = index[b + n[len(a):]]
                break
        else:
            for a, b in (("_left", "_right"), ("_right", "_left")):
                if n.endswith(a) and n[: -len(a)] + b in index:
                    perm[i] = index[n[: -len(a)] + b]
                    break
    return perm


def resize_keypoints(keypoints: np.ndarray, orig_hw: Sequence[int], new_hw: Sequence[int]) -> np.ndarray:
    """Scales keypoints float32 [n, K, 3] (x, y, v) from an (h, w) image to (new_h, new_w): x by
    ``new_w / w``, y by ``new_h / h`` (the ratios of :func:`jaxdet.data.transforms.resize_boxes`, as
    torchvision's ``transform.resize_keypoints``); v unchanged, unlabelled points stay at 0."""
    kp = np.asarray(keypoints, dtype=np.float32).copy()
    rh = np.float32(new_hw[0]) / np.float32(orig_hw[0])
    rw = np.float32(new_hw[1]) / np.float32(orig_hw[1])
    kp[..., 0] *= rw
    kp[..., 1] *= rh
    kp[..., :2] *= (kp[..., 2:3] > 0)
    return kp


def hflip_keypoints(keypoints: np.ndarray, width: int, flip_indices: np.ndarray) -> np.ndarray:
    """Horizontal flip of keypoints float32 [n, K, 3]: ``x -> width - x`` then left/right swapped with
    ``flip_indices`` (:func:`keypoint_flip_indices`); unlabelled points (v = 0) stay at (0, 0, 0)."""
    kp = np.asarray(keypoints, dtype=np.float32).copy()
    kp[..., 0] = width - kp[..., 0]
    kp = kp[:, np.asarray(flip_indices, dtype=np.int64)]
    kp[..., :2] *= (kp[..., 2:3] > 0)
    return kp


def pad_rows(x: np.ndarray, keep: np.ndarray, max_instances: int) -> np.ndarray:
    """``x[keep]`` zero-padded to ``max_instances`` rows (same dtype and trailing shape)."""
    out = np.zeros((max_instances,) + x.shape[1:], x.dtype)
    out[: len(keep)] = x[keep]
    return out
