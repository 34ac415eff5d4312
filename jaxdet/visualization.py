"""Drawing detections and ground truth on images (host side: numpy + Pillow, matplotlib colour maps).

Everything here works on host numpy arrays in *one image's* pixel frame:

- images are ``uint8 [H, W, 3]`` **RGB** (convert BGR model inputs with ``image[..., ::-1]`` first);
- boxes are ``float [N, 4]`` xyxy in continuous pixel coordinates of that image (a box covering pixel
  columns 0..9 has x1=0, x2=10, as in torchvision, detectron2 and `jaxdet.data.transforms`);
- full-image masks are ``bool [N, H, W]``; model masks (Mask R-CNN, ``[N, S, S]`` probabilities relative to
  their box) become full-image masks with `paste_masks`;
- keypoints are ``float [N, K, 3]``: x, y in the same pixel frame and a visibility/score.

Drawing uses Pillow's ``ImageDraw`` (rectangles, lines, ellipses, text with the bundled FreeType font) and
alpha blending in numpy for masks; colours come from matplotlib's ``tab10``/``tab20`` maps. Layout follows
detectron2's ``utils/visualizer.py`` (a box outline per instance in its class colour, a "name score%" label
on a filled tag above the box, masks blended at 50 %, keypoints as dots joined by the skeleton) and
torchvision's ``utils.draw_bounding_boxes``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxdet.evaluation.masks import paste_masks  # noqa: F401 - re-exported (drawing pastes model masks)

__all__ = ["COCO_PERSON_SKELETON", "class_color", "draw_instances", "paste_masks", "default_sizes"]

#: COCO person keypoint skeleton (0-based keypoint index pairs), as ``person_keypoints_*.json``'s
#: ``skeleton`` minus one.
COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))


@functools.lru_cache(maxsize=None)
def _palette() -> tuple[tuple[int, int, int], ...]:
    """tab10 then the light half of tab20: 20 distinct colours, uint8 RGB."""
    from matplotlib import colormaps

    cols = [colormaps["tab10"](i)[:3] for i in range(10)] + [colormaps["tab20"](2 * i + 1)[:3] for i in range(10)]
    return tuple(tuple(int(round(255 * c)) for c in col) for col in cols)


def class_color(index: int) -> tuple[int, int, int]:
    """The RGB colour (0..255 ints) of contiguous class ``index`` (cycles through 20 matplotlib colours)."""
    pal = _palette()
    return pal[int(index) % len(pal)]


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable bundled font
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def default_sizes(height: int, width: int) -> tuple[int, int]:
    """(line width, font size) in pixels for an image of ``height x width``: the font grows with
    ``sqrt(H * W)`` (at least 10 px, as detectron2's ``Visualizer``), lines are about a sixth of it."""
    font = max(10, int(round(math.sqrt(height * width) / 45)))
    return max(1, int(round(font / 6))), font


def _check(name: str, a: np.ndarray, shape: tuple) -> np.ndarray:
    """``shape`` entries that are None match anything."""
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"draw_instances: {name} must have shape {want}, got {a.shape}")
    return a


def _pixel_rect(box: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Continuous xyxy -> inclusive pixel rectangle (x0, y0, x1, y1) clipped to the image, or None if empty."""
    x0 = max(int(math.floor(box[0] + 0.5)), 0)
    y0 = max(int(math.floor(box[1] + 0.5)), 0)
    x1 = min(int(math.floor(box[2] + 0.5)) - 1, w - 1)
    y1 = min(int(math.floor(box[3] + 0.5)) - 1, h - 1)
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def _text_color(rgb: Sequence[int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def draw_instances(image: np.ndarray, boxes, *, classes=None, scores=None, class_names: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None, masks=None, keypoints=None,
                   keypoint_skeleton: Sequence[tuple[int, int]] | None = None, keypoint_thresh: float = 0.05,
                   colors: Sequence[Sequence[int]] | None = None, line_width: int | None = None,
                   font_size: int | None = None, mask_alpha: float = 0.5) -> np.ndarray:
    """Draws instances (boxes, labels, optional masks and keypoints) on a copy of an RGB image.

    Args:
      image: uint8 [H, W, 3] RGB.
      boxes: float [N, 4] xyxy in ``image``'s continuous pixel coordinates (N may be 0). Each box is outlined
        *inside* its pixel rectangle ``[round(x1), round(x2) - 1] x [round(y1), round(y2) - 1]`` (clipped to
        the image), ``line_width`` pixels thick.
      classes: optional int [N], contiguous class ids (choose the colour, see `class_color`, and the name).
      scores: optional float [N] in 0..1, shown as a percentage after the name.
      class_names: optional names indexed by ``classes`` (default: the class id).
      labels: optional str [N], replacing the generated "name score%" text (an empty string draws no tag).
      masks: optional bool [N, H, W] full-image masks (see `paste_masks` for box-relative model masks),
        blended with ``mask_alpha`` in the instance colour under the outlines.
      keypoints: optional float [N, K, 3] (x, y in pixels, visibility or score); points with the third value
        ``> keypoint_thresh`` are drawn as dots, joined by ``keypoint_skeleton`` (default
        `COCO_PERSON_SKELETON` when K == 17, else none).
      colors: optional RGB per instance (0..255), overriding the class colours.
      line_width, font_size: pixels; default `default_sizes` of the image.
      mask_alpha: mask opacity in [0, 1].

    Returns:
      uint8 [H, W, 3] RGB, a new array (``image`` is not modified). Pixels away from every box outline,
      label tag, mask and keypoint keep their input values exactly.

    Raises:
      ValueError: ``image`` is not uint8 [H, W, 3]; an argument's leading dim is not N or its shape is wrong;
        a box coordinate is not finite; a class id is negative or has no entry in ``class_names``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances: image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    boxes = _check("boxes", np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) == 0
                   else np.asarray(boxes, dtype=np.float64), (None, 4))
    n = boxes.shape[0]
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"draw_instances: boxes must be finite, got {boxes[~np.all(np.isfinite(boxes), 1)][:3]}")
    if classes is not None:
        classes = _check("classes", np.asarray(classes).astype(np.int64), (n,))
        if n and classes.min() < 0:
            raise ValueError(f"draw_instances: negative class id {int(classes.min())}")
        if class_names is not None and n and classes.max() >= len(class_names):
            raise ValueError(f"draw_instances: class id {int(classes.max())} has no name "
                             f"({len(class_names)} class_names)")
    if scores is not None:
        scores = _check("scores", np.asarray(scores, dtype=np.float64), (n,))
    if labels is not None and len(labels) != n:
        raise ValueError(f"draw_instances: {len(labels)} labels for {n} boxes")
    if masks is not None:
        masks = _check("masks", np.asarray(masks).astype(bool), (n, h, w))
    if keypoints is not None:
        keypoints = _check("keypoints", np.asarray(keypoints, dtype=np.float64), (n, None, 3))
    if colors is not None:
        if len(colors) != n:
            raise ValueError(f"draw_instances: {len(colors)} colors for {n} boxes")
        cols = [tuple(int(c) for c in col[:3]) for col in colors]
    elif classes is not None:
        cols = [class_color(c) for c in classes]
    else:
        cols = [class_color(i) for i in range(n)]
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f"draw_instances: mask_alpha must be in [0, 1], got {mask_alpha}")
    lw_default, fs_default = default_sizes(h, w)
    lw = lw_default if line_width is None else int(line_width)
    fs = fs_default if font_size is None else int(font_size)

    out = image.copy()
    if masks is not None and n:
        canvas = out.astype(np.float32)
        for i in range(n):
            m = masks[i]
            canvas[m] = (1.0 - mask_alpha) * canvas[m] + mask_alpha * np.asarray(cols[i], np.float32)
        out = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    rects = [_pixel_rect(b, h, w) for b in boxes]
    for i, r in enumerate(rects):
        if r is not None:
            draw.rectangle(r, outline=cols[i], width=lw)

    if keypoints is not None and n:
        k = keypoints.shape[1]
        skeleton = keypoint_skeleton if keypoint_skeleton is not None else (COCO_PERSON_SKELETON if k == 17 else ())
        rad = max(1, lw + 1)
        for i in range(n):
            kp = keypoints[i]
            vis = np.isfinite(kp).all(1) & (kp[:, 2] > keypoint_thresh)
            for a, b in skeleton:
                if a < k and b < k and vis[a] and vis[b]:
                    draw.line([(kp[a, 0], kp[a, 1]), (kp[b, 0], kp[b, 1])], fill=cols[i], width=lw)
            for j in np.flatnonzero(vis):
                x, y = kp[j, 0], kp[j, 1]
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=cols[i])

    font = _font(fs)
    for i, r in enumerate(rects):
        if labels is not None:
            text = labels[i]
        else:
            parts = []
            if classes is not None:
                c = int(classes[i])
                parts.append(str(class_names[c]) if class_names is not None else str(c))
            if scores is not None:
                parts.append(f"{100 * scores[i]:.0f}%")
            text = " ".join(parts)
        if not text or r is None:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x0, y0 = r[0], r[1] - th
        if y0 < 0:  # no room above the box: put the tag inside its top edge
            y0 = r[1]
        x0 = max(0, min(x0, w - tw))
        draw.rectangle([x0, y0, x0 + tw - 1, y0 + th - 1], fill=cols[i])
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=_text_color(cols[i]), font=font)
    return np.asarray(pil, dtype=np.uint8)


