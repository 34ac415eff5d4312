"""Pasting Mask R-CNN masks like torchvision (jaxdet/evaluation/masks.py) and RLE encoding."""
import numpy as np
import pytest
from pycocotools import mask as mask_util

from jaxdet.evaluation.masks import encode_rle, paste_masks, paste_masks_torchvision


def test_paste_masks_torchvision_parity():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(0)
    masks = rng.random((6, 28, 28)).astype(np.float32)
    boxes = np.array([[3.3, 4.1, 50.7, 40.2], [0, 0, 80, 60], [70.5, 50.5, 79.9, 59.9], [-5, -3, 20, 10],
                      [10, 10, 12.5, 11], [33.2, 1.7, 140.0, 90.0]], np.float32)
    H, W = 60, 80
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (H, W))[:, 0].numpy()
    ours = paste_masks_torchvision(masks, boxes, (H, W), threshold=None)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_array_equal(paste_masks(masks, boxes, (H, W)), ref > 0.5)


def test_paste_hand_case_and_errors():
    # a 2x2 all-ones mask on the integer box 2..6: expanded by one cell (scale 2) to 0..8 -> the central
    # part of the 9x9 bilinear resize of the zero-padded 4x4 mask is > 0.5
    out = paste_masks_torchvision(np.ones((1, 2, 2), np.float32), [[2, 2, 6, 6]], (10, 10))[0]
    assert out[4, 4] and out[3, 3] and not out[0, 0] and not out[9, 9]
    with pytest.raises(ValueError, match="masks must be"):
        paste_masks(np.ones((2, 2)), [[0, 0, 1, 1]], (4, 4))
    with pytest.raises(ValueError, match="style must be"):
        paste_masks(np.ones((1, 2, 2)), [[0, 0, 1, 1]], (4, 4), style="mmdet")


def test_encode_rle_roundtrip():
    m = np.zeros((7, 9), bool)
    m[2:5, 3:8] = True
    rle = encode_rle(m)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), m)
    assert mask_util.area(rle) == 15
