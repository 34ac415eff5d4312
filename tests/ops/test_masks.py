"""jaxdet.ops.masks.mask_targets (box-cropped masks) against torchvision's ``project_masks_on_boxes`` (RoIAlign of
the full-image masks), on hand-made masks whose S x S box crop is exact (box side == S, integer corners)."""
import jax
import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import project_masks_on_boxes

from jaxdet.ops.masks import mask_targets

H, W, S, SIZE = 50, 70, 16, 28
#: integer boxes of side S: interior ones, one touching the top-left corner, one the right and bottom borders
BOXES = np.array([[5, 7, 21, 23], [30, 20, 46, 36], [0, 0, 16, 16], [54, 34, 70, 50], [40, 3, 56, 19]], np.float32)
INTERIOR = [0, 1, 4]


def _instances(rng, boxes, h=H, w=W):
    """Full-image masks [M, H, W] uint8: each a union of 3 random box-aligned rectangles inside its box (the box
    is their tight bounding box: the first rectangle spans it), plus a few single pixels."""
    full = np.zeros((len(boxes), h, w), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        full[k, y1:y2, x1 + (x2 - x1) // 3: x1 + 2 * (x2 - x1) // 3] = 1  # spans the box vertically ...
        full[k, y1 + (y2 - y1) // 2: y1 + (y2 - y1) // 2 + 2, x1:x2] = 1   # ... and horizontally
        for _ in range(2):
            a, b = sorted(rng.integers(x1, x2 + 1, 2))
            c, d = sorted(rng.integers(y1, y2 + 1, 2))
            full[k, c:d, a:b] = 1
        full[k, rng.integers(y1, y2, 4), rng.integers(x1, x2, 4)] = 1
    return full


def _rois(rng, boxes, n_per_box, jitter, h=H, w=W):
    """RoIs around each box: corners moved by up to ``jitter`` px (float), clipped to the image, some tiny."""
    rois, idx = [], []
    for k, b in enumerate(boxes):
        r = b[None] + rng.uniform(-jitter, jitter, (n_per_box, 4))
        r[:3] = b  # the box itself (torchvision appends the gt boxes to the proposals)
        r[3, 2:] = r[3, :2] + 0.4  # smaller than a pixel: RoIAlign's width/height clamp to 1
        r[:, [0, 2]] = np.clip(r[:, [0, 2]], 0, w)
        r[:, [1, 3]] = np.clip(r[:, [1, 3]], 0, h)
        r[:, 2:] = np.maximum(r[:, 2:], r[:, :2])
        rois.append(r)
        idx += [k] * n_per_box
    return np.concatenate(rois).astype(np.float32), np.asarray(idx, np.int32)


def _torchvision(full, rois, idx, size=SIZE):
    with torch.no_grad():
        return project_masks_on_boxes(torch.from_numpy(full), torch.from_numpy(rois), torch.from_numpy(idx),
                                      size).numpy()


def _crop(full, boxes):
    return np.stack([m[int(b[1]):int(b[3]), int(b[0]):int(b[2])] for m, b in zip(full, boxes)])


_targets = jax.jit(mask_targets, static_argnames=("size", "max_sampling_ratio"))


def test_equals_torchvision_on_full_image_masks():
    rng = np.random.default_rng(0)
    full = _instances(rng, BOXES)
    crops = _crop(full, BOXES)
    assert crops.shape == (5, S, S) and crops.sum() == full.sum()  # the crop is exact
    rois, idx = _rois(rng, BOXES, 40, jitter=8.0)
    ref = _torchvision(full, rois, idx)
    out = np.asarray(_targets(crops, BOXES, rois, idx, size=SIZE, image_size=np.array([H, W], np.int32)))
    assert out.shape == (len(rois), SIZE, SIZE) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    assert ref.max() > 0.999 and 0.1 < ref.mean() < 0.9  # not trivial: the RoIs see mask, edges and background
    # at the image border torchvision repeats the edge pixel: without image_size (fade to 0 everywhere) only the
    # boxes away from the border stay exact
    no_size = np.asarray(_targets(crops, BOXES, rois, idx, size=SIZE))
    interior = np.isin(idx, INTERIOR)
    np.testing.assert_allclose(no_size[interior], ref[interior], rtol=0, atol=1e-5)
    assert np.abs(no_size[~interior] - ref[~interior]).max() > 0.1


def test_other_output_sizes_and_padding_rois():
    rng = np.random.default_rng(1)
    full = _instances(rng, BOXES)
    rois, idx = _rois(rng, BOXES, 10, jitter=4.0)
    for size in (7, 14):
        ref = _torchvision(full, rois, idx, size)
        # small outputs need bigger adaptive grids than the default cap (ceil(24 px / 7) = 4 samples per bin)
        out = np.asarray(_targets(_crop(full, BOXES), BOXES, rois, idx, size=size,
                                  image_size=np.array([H, W], np.int32), max_sampling_ratio=4))
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # padding: zero-area boxes and out-of-range slots give finite values (masked out by the caller)
    boxes = BOXES.copy()
    boxes[2] = 0.0
    idx = idx.copy()
    idx[:5] = 99
    out = np.asarray(_targets(_crop(full, BOXES), boxes, rois, idx, size=SIZE))
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


def test_resized_crop_approximates_torchvision():
    """Boxes of side 2S (the crop is a 2x area-downsampling, exact because the rectangles sit on even pixels):
    the targets are a resampling of torchvision's, equal after thresholding almost everywhere."""
    rng = np.random.default_rng(2)
    boxes = np.array([[4, 6, 36, 38], [40, 10, 72, 42], [10, 40, 42, 72]], np.float32)
    h, w = 80, 90
    full = np.repeat(np.repeat(_instances(rng, boxes / 2, h // 2, w // 2), 2, axis=1), 2, axis=2)
    crops = _crop(full, boxes).reshape(3, S, 2, S, 2).mean(axis=(2, 4))
    assert set(np.unique(crops)) <= {0.0, 1.0}
    rois, idx = _rois(rng, boxes, 30, jitter=10.0, h=h, w=w)
    ref = _torchvision(full, rois, idx)
    out = np.asarray(_targets(crops.astype(np.uint8), boxes, rois, idx, size=SIZE, image_size=np.array([h, w])))
    assert np.abs(out - ref).mean() < 0.03  # measured 0.018
    assert np.mean((out >= 0.5) == (ref >= 0.5)) > 0.99  # measured 0.995


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="gt_masks must be"):
        mask_targets(np.zeros((2, 4, 5)), np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="gt_boxes must be"):
        mask_targets(np.zeros((2, 4, 4)), np.zeros((3, 4)), np.zeros((3, 4)), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="matched_idxs"):
        mask_targets(np.zeros((2, 4, 4)), np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(2, np.int32))
