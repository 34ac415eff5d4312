"""Box-cropped instance masks and keypoints on the host (jaxdet/data/instances.py) and in the loader."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from jaxdet.data import instances as I
from jaxdet.data import pipeline as P
from jaxdet.data.coco import load_coco

COCO_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]


def test_polygon_right_half_of_its_box():
    # box 10..30 x 20..60; polygon = right half of the box -> the right half of the S x S grid
    poly = [[20, 20, 30, 20, 30, 60, 20, 60]]
    m = I.rasterize_in_box(poly, (10, 20, 30, 60), 8, (100, 100))
    want = np.zeros((8, 8), np.uint8)
    want[:, 4:] = 1
    np.testing.assert_array_equal(m, want)


def test_rle_and_polygon_agree_and_empty_means_box():
    h, w = 90, 120
    poly = [[30.0, 10.0, 100.0, 10.0, 100.0, 70.0, 30.0, 70.0]]  # a rectangle, whole box
    box = (20.0, 5.0, 110.0, 80.0)
    rle = mask_util.merge(mask_util.frPyObjects(poly, h, w))
    a = I.rasterize_in_box(poly, box, 30, (h, w))
    b = I.rasterize_in_box(rle, box, 30, (h, w))
    iou = np.logical_and(a, b).sum() / np.logical_or(a, b).sum()
    assert iou > 0.93, iou  # nearest-sampled RLE vs polygon rasterised in the box frame
    # the rectangle covers x 30..100 of the box 20..110 -> columns (10/90*30=3.33 .. 26.7)
    assert a[:, :3].sum() == 0 and a[:, 27:].sum() == 0 and a[10, 4:26].all()
    np.testing.assert_array_equal(I.rasterize_in_box([], box, 4, (h, w)), np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="unrecognised segmentation"):
        I.rasterize_in_box("abc", box, 4, (h, w))


def test_keypoint_flip_indices_and_hflip():
    perm = I.keypoint_flip_indices(COCO_KEYPOINTS)
    assert perm[0] == 0 and perm[1] == 2 and perm[2] == 1 and perm[15] == 16 and perm[16] == 15
    np.testing.assert_array_equal(perm[perm], np.arange(17))
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 1] = (10, 5, 2)   # left_eye at x = 10
    kp[0, 2] = (30, 5, 1)   # right_eye at x = 30
    out = I.hflip_keypoints(kp, 100, perm)
    np.testing.assert_allclose(out[0, 1], (70, 5, 1))  # the new left eye is the old right one, mirrored
    np.testing.assert_allclose(out[0, 2], (90, 5, 2))
    np.testing.assert_array_equal(out[0, 0], (0, 0, 0))  # unlabelled stays at the origin
    np.testing.assert_allclose(I.hflip_keypoints(out, 100, perm), kp)
    np.testing.assert_allclose(I.resize_keypoints(kp, (50, 200), (100, 100))[0, 2], (15, 10, 1))


def test_loader_masks_follow_the_flip(coco128_root):
    ds = load_coco(coco128_root / "annotations" / "instances_val2017.json", coco128_root / "val2017",
                   skip_empty=True)
    rec = next(r for r in ds.records if len(r["classes"]) >= 3)
    kw = dict(canvas_hw=(512, 512), min_size=320, max_size=512, max_instances=8, mask_size=56)
    a = P.load_example(rec, flip=False, **kw)
    b = P.load_example(rec, flip=True, **kw)
    assert a["gt_masks"].shape == (8, 56, 56) and a["gt_masks"].dtype == np.uint8
    n = int(a["gt_valid"].sum())
    assert all(a["gt_masks"][i].sum() > 0 for i in range(n) if not a["gt_is_crowd"][i])
    np.testing.assert_array_equal(b["gt_masks"], a["gt_masks"][:, :, ::-1])
    assert a["gt_masks"][n:].sum() == 0
    # The box-frame mask agrees with the full-image rasterisation of the same polygon, cropped to the box.
    i = int(np.argmax([(bx[2] - bx[0]) * (bx[3] - bx[1]) for bx in rec["boxes"]]))
    full = mask_util.decode(mask_util.merge(mask_util.frPyObjects(rec["segmentations"][i], rec["height"],
                                                                   rec["width"])))
    x1, y1, x2, y2 = rec["boxes"][i]
    m = I.rasterize_in_box(rec["segmentations"][i], rec["boxes"][i], 56, (rec["height"], rec["width"]))
    ys = np.floor(y1 + (np.arange(56) + 0.5) * (y2 - y1) / 56).astype(int)
    xs = np.floor(x1 + (np.arange(56) + 0.5) * (x2 - x1) / 56).astype(int)
    ref = full[np.clip(ys, 0, rec["height"] - 1)][:, np.clip(xs, 0, rec["width"] - 1)]
    assert np.logical_and(m, ref).sum() / np.logical_or(m, ref).sum() > 0.9


def _keypoint_dataset(tmp_path, coco128_root):
    src = json.loads((coco128_root / "annotations" / "instances_val2017.json").read_text())
    im = src["images"][0]
    kps = [0.0] * 51
    kps[3:6] = [10.0, 20.0, 2.0]   # left_eye
    kps[6:9] = [40.0, 20.0, 1.0]   # right_eye
    data = {"images": [im], "categories": [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS,
                                            "skeleton": [[1, 2]]}],
            "annotations": [{"id": 1, "image_id": im["id"], "category_id": 1, "bbox": [5, 5, 50, 50],
                             "area": 2500, "iscrowd": 0, "keypoints": kps, "num_keypoints": 2,
                             "segmentation": []}]}
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(data))
    return load_coco(path, coco128_root / "val2017", skip_empty=True), im


def test_loader_keypoints(tmp_path, coco128_root):
    ds, im = _keypoint_dataset(tmp_path, coco128_root)
    assert ds.num_keypoints == 17 and ds.records[0]["keypoints"].shape == (1, 17, 3)
    flip = tuple(I.keypoint_flip_indices(ds.keypoint_names))
    kw = dict(canvas_hw=(1344, 1344), min_size=im["height"] * 2, max_size=4000, max_instances=4,
              keypoint_flip=flip)
    a = P.load_example(ds.records[0], flip=False, **kw)
    b = P.load_example(ds.records[0], flip=True, **kw)
    nw = int(a["image_size"][1])
    assert a["gt_keypoints"].shape == (4, 17, 3)
    np.testing.assert_allclose(a["gt_keypoints"][0, 1], (20, 40, 2), rtol=1e-6)   # scaled x2
    np.testing.assert_allclose(b["gt_keypoints"][0, 1], (nw - 80, 40, 1), rtol=1e-6)  # old right eye, mirrored
    np.testing.assert_allclose(b["gt_keypoints"][0, 2], (nw - 20, 40, 2), rtol=1e-6)
    assert not b["gt_keypoints"][1:].any()
    d = P.dummy_example((64, 64), 4, mask_size=0, num_keypoints=17)
    assert d["gt_keypoints"].shape == (4, 17, 3)


def test_keypoints_requested_on_a_box_dataset_fails(coco128_root):
    ds = load_coco(coco128_root / "annotations" / "instances_val2017.json", coco128_root / "val2017",
                   skip_empty=True)
    with pytest.raises(ValueError, match="no category declares 'keypoints'"):
        P.make_eval_iterator(ds, batch_size=2, canvases=((512, 512),), min_size_test=320, max_size_test=512,
                             keypoints=True)


def test_bad_keypoints_length_names_the_file(tmp_path, coco128_root):
    ds, im = _keypoint_dataset(tmp_path, coco128_root)
    path = tmp_path / "person_keypoints.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["keypoints"] = [1.0, 2.0, 2.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="person_keypoints.json: annotation 1 has keypoints of length 3"):
        load_coco(path, coco128_root / "val2017", skip_empty=True)
