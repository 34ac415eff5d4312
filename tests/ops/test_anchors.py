"""jaxdet.ops.anchors against torchvision's AnchorGenerator."""
import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from jaxdet.ops.anchors import cell_anchors, grid_anchors, multilevel_anchors


def torchvision_anchors(sizes, ratios, canvas_hw, feature_shapes):
    gen = AnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *canvas_hw), [canvas_hw])
    feats = [torch.zeros(1, 1, h, w) for h, w in feature_shapes]
    return gen(images, feats)[0].numpy(), gen.num_anchors_per_location()


def test_cell_anchors_hand():
    # size 32, ratio 1 -> +-16; ratio 0.5 -> w = 32*sqrt(2) = 45.25, h = 22.63 -> round(+-22.63, +-11.31)
    np.testing.assert_array_equal(
        cell_anchors((32,), (0.5, 1.0)), np.array([[-23, -11, 23, 11], [-16, -16, 16, 16]], np.float32)
    )


def test_cell_anchors_match_torchvision_retinanet_sizes():
    sizes = tuple(x * 2 ** (i / 3) for i in range(3) for x in [32])
    ref = AnchorGenerator((sizes,), ((0.5, 1.0, 2.0),)).cell_anchors[0].numpy()
    np.testing.assert_array_equal(cell_anchors(sizes, (0.5, 1.0, 2.0)), ref)


def test_fpn_anchors_match_torchvision():
    canvas = (128, 192)
    strides = (4, 8, 16, 32, 64)
    shapes = [(canvas[0] // s, canvas[1] // s) for s in strides]
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    ref, _ = torchvision_anchors(sizes, ratios, canvas, shapes)
    ours = multilevel_anchors(shapes, strides, sizes, (0.5, 1.0, 2.0))
    assert [a.shape[0] for a in ours] == [h * w * 3 for h, w in shapes]
    np.testing.assert_array_equal(np.concatenate(ours), ref)
    assert ours[0].dtype == np.float32


def test_retinanet_anchors_match_torchvision():
    canvas = (256, 320)
    strides = (8, 16, 32, 64, 128)
    shapes = [(-(-canvas[0] // s), -(-canvas[1] // s)) for s in strides]  # ceil, like a conv stride
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512])
    ratios = ((0.5, 1.0, 2.0),) * 5
    ref, _ = torchvision_anchors(sizes, ratios, canvas, shapes)
    tv_strides = [(canvas[0] // h, canvas[1] // w) for h, w in shapes]  # torchvision's floor division
    ours = multilevel_anchors(shapes, tv_strides, sizes, ratios)
    np.testing.assert_array_equal(np.concatenate(ours), ref)


def test_grid_anchor_order_is_location_major():
    cell = cell_anchors((16,), (0.5, 1.0, 2.0))
    a = grid_anchors((2, 3), (8, 4), cell)
    assert a.shape == (2 * 3 * 3, 4)
    # row (y * W + x) * A + k = cell[k] shifted by (x*4, y*8)
    y, x, k = 1, 2, 1
    np.testing.assert_array_equal(a[(y * 3 + x) * 3 + k], cell[k] + np.array([x * 4, y * 8, x * 4, y * 8]))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one entry per level"):
        multilevel_anchors([(2, 2)], (4, 8), ((32,),))
    with pytest.raises(ValueError, match="positive"):
        cell_anchors((0,), (1.0,))
    with pytest.raises(ValueError, match="stride"):
        grid_anchors((2, 2), 0, cell_anchors((32,), (1.0,)))
