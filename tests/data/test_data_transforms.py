"""Host transforms: decoding (modes, EXIF, bad files), torchvision's resize rule, flip/pad geometry on real masks."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.models.detection import transform as tv_transform

from jaxdet.data import transforms as T

COCO_IMAGE = "000000000009.jpg"


# ---------------------------------------------------------------- decode_image

def test_decode_real_jpeg_rgb_and_bgr(coco128_root):
    path = coco128_root / "train2017" / COCO_IMAGE
    rgb = T.decode_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (480, 640, 3)
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))
    bgr = T.decode_image(path, "BGR")
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert bgr.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match="channel_order"):
        T.decode_image(path, "RGBA")


def test_decode_modes(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = T.decode_image(tmp_path / "l.png")
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)

    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(T.decode_image(tmp_path / "rgba.png"), rgba[:, :, :3])

    g16 = np.array([[0, 257, 65535], [1000, 30000, 12850]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = T.decode_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[:, :, 1], np.round(g16 / 257.0).astype(np.uint8))

    cmyk = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    out = T.decode_image(tmp_path / "cmyk.jpg")
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")))


def test_decode_applies_exif_orientation(tmp_path):
    # A 40x60 (HxW) image, red block at the top-left; EXIF orientation 6 = "rotate 90 CW to display".
    a = np.zeros((40, 60, 3), np.uint8)
    a[:10, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", quality=98, exif=exif)
    out = T.decode_image(tmp_path / "rot.jpg")
    assert out.shape == (60, 40, 3)
    # rotating 90 degrees clockwise moves the top-left block to the top-right
    assert out[:20, -10:, 0].mean() > 200 and out[:20, :10, 0].mean() < 50


def test_decode_bad_files_name_the_file(tmp_path, coco128_root):
    good = (coco128_root / "train2017" / COCO_IMAGE).read_bytes()
    cases = {
        "empty.jpg": b"",
        "garbage.jpg": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        "half.jpg": good[: len(good) // 2],
        "header_only.jpg": good[:300],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            T.decode_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        T.decode_image(tmp_path / "missing.jpg")


# ---------------------------------------------------------------- resize rule

def test_resize_scale_hand_cases():
    assert T.resize_scale(480, 640, 800, 1333) == pytest.approx(800 / 480)
    assert T.resized_size(480, 640, 800, 1333) == (800, 1066)     # 640 * 5/3 = 1066.67, floored
    assert T.resized_size(100, 1000, 800, 1333) == (133, 1333)    # long side capped
    assert T.resized_size(640, 427, 800, 1333) == (1199, 800)     # portrait
    with pytest.raises(ValueError):
        T.resize_scale(0, 10, 800, 1333)


@pytest.mark.parametrize("min_size,max_size", [(800, 1333), (64, 107), (96, 96)])
def test_resize_size_matches_torchvision(min_size, max_size):
    rng = np.random.default_rng(1)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(20, 120, 2))
        img = torch.zeros(1, h, w)
        out, _ = tv_transform._resize_image_and_masks(img, min_size, max_size)
        assert T.resized_size(h, w, min_size, max_size) == tuple(out.shape[-2:]), (h, w)


def test_resize_boxes_matches_torchvision():
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 400, (20, 4)).astype(np.float32)
    ours = T.resize_boxes(boxes, (427, 640), (800, 1199))
    ref = tv_transform.resize_boxes(torch.from_numpy(boxes), [427, 640], [800, 1199]).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_resize_image_upscale_close_to_torch_bilinear():
    # For upscaling Pillow's bilinear and torch's (align_corners=False) are the same filter up to rounding.
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).resize((26, 18), Image.BICUBIC)
    img = np.array(small)
    out = T.resize_image(img, 31, 45)
    assert out.shape == (31, 45, 3) and out.dtype == np.uint8
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(31, 45),
                                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(np.float32) - ref).max() <= 1.01
    const = np.full((10, 20, 3), 77, np.uint8)
    np.testing.assert_array_equal(T.resize_image(const, 7, 3), np.full((7, 3, 3), 77, np.uint8))
    with pytest.raises(ValueError):
        T.resize_image(img.astype(np.float32), 5, 5)


# ---------------------------------------------------------------- flip, canvas, padding

def test_hflip_hand_case():
    img = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    boxes = np.array([[0, 0, 2, 1], [1.5, 0, 5, 2]], np.float32)
    fimg, fboxes = T.hflip(img, boxes, 5)
    np.testing.assert_array_equal(fimg, img[:, ::-1])
    np.testing.assert_array_equal(fboxes, [[3, 0, 5, 1], [0, 0, 3.5, 2]])
    img2, boxes2 = T.hflip(fimg, fboxes, 5)
    np.testing.assert_array_equal(img2, img)
    np.testing.assert_array_equal(boxes2, boxes)


def test_choose_canvas():
    canv = [(512, 512), (384, 640), (640, 384), (800, 1344)]
    assert T.choose_canvas(384, 500, canv) == 1
    assert T.choose_canvas(500, 380, canv) == 2
    assert T.choose_canvas(384, 384, canv) == 1  # (384, 640) and (640, 384) tie in area, first wins...
    assert T.choose_canvas(300, 300, [(640, 384), (512, 512)]) == 0  # ...and a smaller area wins over order
    assert T.choose_canvas(700, 1000, canv) == 3
    with pytest.raises(ValueError, match="900x1000"):
        T.choose_canvas(900, 1000, canv)


def test_pad_to_canvas():
    img = np.full((3, 4, 3), 9, np.uint8)
    out = T.pad_to_canvas(img, (5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:3, :4], img)
    assert out[3:].sum() == 0 and out[:, 4:].sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        T.pad_to_canvas(img, (2, 6))


def test_pad_instances_pads_and_trims_largest_noncrowd_first(caplog):
    boxes = np.array([[0, 0, 1, 1], [0, 0, 10, 10], [0, 0, 5, 5], [0, 0, 20, 20], [0, 0, 3, 3]], np.float32)
    classes = np.array([1, 2, 3, 4, 5])
    crowd = np.array([False, False, False, True, False])
    b, c, v, cr = T.pad_instances(boxes, classes, crowd, 7)
    assert b.shape == (7, 4) and b.dtype == np.float32 and c.dtype == np.int32 and v.dtype == bool
    np.testing.assert_array_equal(v, [1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(c[:5], classes)
    np.testing.assert_array_equal(cr[:5], crowd)
    assert b[5:].sum() == 0 and c[5:].sum() == 0 and not cr[5:].any()

    T._warned_too_many = False
    with caplog.at_level(logging.WARNING, logger="jaxdet.data.transforms"):
        b, c, v, cr = T.pad_instances(boxes, classes, crowd, 3)
        T.pad_instances(boxes, classes, crowd, 3)
    # the 3 largest non-crowd (10, 5, 3 px), the crowd 20-px box loses; original order kept
    np.testing.assert_array_equal(c, [2, 3, 5])
    assert v.all() and not cr.any()
    warnings = [m for m in caplog.messages if "max_instances=3" in m]
    assert len(warnings) == 1 and "5 instances" in warnings[0]
    with pytest.raises(ValueError):
        T.pad_instances(boxes, classes[:4], crowd, 3)


# ------------------------------------------- geometry on real data: transformed box == transformed mask extent

def test_resize_flip_pad_keeps_boxes_on_their_pixels(coco128_root):
    with open(coco128_root / "annotations" / "instances_train2017.json") as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    anns = [a for a in data["annotations"] if not a["iscrowd"] and a["area"] > 2000]
    anns = sorted(anns, key=lambda a: a["id"])[:6]
    checked = 0
    for a in anns:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        x, y, bw, bh = a["bbox"]
        box = np.array([[x, y, x + bw, y + bh]], np.float32)
        m = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))
        m = (m.max(axis=2) if m.ndim == 3 else m).astype(np.uint8) * 255
        # the mask as an image goes through exactly the image path
        mimg = np.repeat(m[:, :, None], 3, axis=2)
        for min_size, max_size, flip in ((160, 267, False), (200, 333, True)):
            nh, nw = T.resized_size(h, w, min_size, max_size)
            out = T.resize_image(mimg, nh, nw)
            ob = T.resize_boxes(box, (h, w), (nh, nw))
            if flip:
                out, ob = T.hflip(out, ob, nw)
            canvas = (352, 352)
            out = T.pad_to_canvas(out, canvas)
            ys, xs = np.nonzero(out[:, :, 0] > 127)
            extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            np.testing.assert_allclose(ob[0], extent, atol=1.5, err_msg=f"ann {a['id']} flip={flip}")
            checked += 1
    assert checked == 12
