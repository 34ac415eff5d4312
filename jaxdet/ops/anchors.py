"""Anchor boxes, computed with NumPy from static shapes (constants under ``jax.jit``).

Matches ``torchvision.models.detection.anchor_utils.AnchorGenerator``:
  * ``cell_anchors``: zero-centred anchors ``round([-w, -h, w, h] / 2)`` with ``h = size * sqrt(r)``,
    ``w = size / sqrt(r)`` and aspect ratio r = height / width, ordered ratio-major
    (for each ratio, each size), computed in float32 and rounded half-to-even like ``torch.round``;
  * ``grid_anchors``: the cell anchors shifted to ``(x * stride_w, y * stride_h)`` for every feature
    location, location-major (row y, then column x, then anchor), i.e. row ``(y * W + x) * A + a``.

Boxes are xyxy in input-canvas pixels. A RetinaNet level uses sizes ``(s, s*2**(1/3), s*2**(2/3))``
and ratios (0.5, 1, 2); an FPN R-CNN level uses one size (32, 64, 128, 256, 512 for P2..P6).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

IntPair = Union[int, Tuple[int, int], Sequence[int]]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one feature level.

    Args:
      sizes: anchor sizes (sqrt of the area) in pixels, e.g. (32,) or (32, 40.3, 50.8).
      aspect_ratios: height / width ratios, e.g. (0.5, 1.0, 2.0).
    Returns:
      np.ndarray [len(aspect_ratios) * len(sizes), 4] float32, xyxy around (0, 0), rounded.
    Raises:
      ValueError: on empty or non-positive sizes/ratios.
    Matches ``AnchorGenerator.generate_anchors``.
    """
    scales = np.asarray(sizes, dtype=np.float32).reshape(-1)
    ratios = np.asarray(aspect_ratios, dtype=np.float32).reshape(-1)
    if scales.size == 0 or ratios.size == 0:
        raise ValueError(f"sizes and aspect_ratios must be non-empty, got {sizes!r}, {aspect_ratios!r}")
    if np.any(scales <= 0) or np.any(ratios <= 0):
        raise ValueError(f"sizes and aspect_ratios must be positive, got {sizes!r}, {aspect_ratios!r}")
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(base).astype(np.float32)


def _pair(x: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        x = (int(x), int(x))
    x = tuple(x)
    if len(x) != 2 or any(int(v) != v or v <= 0 for v in x):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {x!r}")
    return int(x[0]), int(x[1])


def grid_anchors(feature_hw: Sequence[int], stride: IntPair, cell: np.ndarray) -> np.ndarray:
    """All anchors of one feature map.

    Args:
      feature_hw: (H_f, W_f) static feature-map size.
      stride: int or (stride_h, stride_w), pixels between adjacent feature locations
        (torchvision uses ``canvas_size // feature_size`` per axis).
      cell: [A, 4] zero-centred anchors from :func:`cell_anchors`.
    Returns:
      np.ndarray [H_f * W_f * A, 4] float32, xyxy in canvas pixels, row ``(y * W_f + x) * A + a``.
    Matches ``AnchorGenerator.grid_anchors``.
    """
    if len(feature_hw) != 2 or any(int(v) != v or v < 0 for v in feature_hw):
        raise ValueError(f"feature_hw must be (height, width) non-negative ints, got {feature_hw!r}")
    h, w = int(feature_hw[0]), int(feature_hw[1])
    sh, sw = _pair(stride, "stride")
    cell = np.asarray(cell, dtype=np.float32)
    if cell.ndim != 2 or cell.shape[1] != 4:
        raise ValueError(f"cell anchors must have shape [A, 4], got {cell.shape}")
    shifts_x = np.arange(w, dtype=np.int32) * sw
    shifts_y = np.arange(h, dtype=np.int32) * sh
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(np.float32)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


def multilevel_anchors(
    feature_shapes: Sequence[Sequence[int]],
    strides: Sequence[IntPair],
    sizes_per_level: Sequence[Sequence[float]],
    aspect_ratios: Union[Sequence[float], Sequence[Sequence[float]]] = (0.5, 1.0, 2.0),
) -> list:
    """Anchors of every level of a feature pyramid.

    Args:
      feature_shapes: [(H_l, W_l)] static feature sizes, one per level.
      strides: [stride_l] ints or (stride_h, stride_w) pairs, one per level.
      sizes_per_level: [sizes_l] anchor sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
      aspect_ratios: one tuple of ratios shared by all levels, or one tuple per level.
    Returns:
      list of np.ndarray [H_l * W_l * A_l, 4] float32 (concatenate them for torchvision's
      per-image anchor order: level-major).
    Raises:
      ValueError: if the per-level lists differ in length.
    """
    n = len(feature_shapes)
    if len(strides) != n or len(sizes_per_level) != n:
        raise ValueError(
            f"feature_shapes ({n}), strides ({len(strides)}) and sizes_per_level ({len(sizes_per_level)}) "
            "must have one entry per level"
        )
    if len(aspect_ratios) > 0 and isinstance(aspect_ratios[0], (list, tuple, np.ndarray)):
        ratios_per_level = list(aspect_ratios)
        if len(ratios_per_level) != n:
            raise ValueError(f"aspect_ratios has {len(ratios_per_level)} levels, expected {n}")
    else:
        ratios_per_level = [aspect_ratios] * n
    return [
        grid_anchors(shape, stride, cell_anchors(sizes, ratios))
        for shape, stride, sizes, ratios in zip(feature_shapes, strides, sizes_per_level, ratios_per_level)
    ]
