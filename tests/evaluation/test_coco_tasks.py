"""Mask and keypoint results (detections_to_coco with masks / keypoints) scored by pycocotools."""
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from jaxdet.evaluation.coco import COCOEvaluator, detections_to_coco


def _gt(with_keypoints=False):
    cat = {"id": 1, "name": "thing"}
    ann = {"id": 1, "image_id": 7, "category_id": 1, "bbox": [20, 10, 40, 30], "area": 1200.0, "iscrowd": 0,
           "segmentation": [[20, 10, 60, 10, 60, 40, 20, 40]]}
    if with_keypoints:
        cat["keypoints"] = ["a", "b"]
        ann.update(keypoints=[25, 15, 2, 50, 35, 2], num_keypoints=2)
    coco = COCO()
    coco.dataset = {"images": [{"id": 7, "height": 50, "width": 80, "file_name": "x.jpg"}], "categories": [cat],
                    "annotations": [ann]}
    coco.createIndex()
    return coco


def _batch(**extra):
    # the image was resized x2 into the canvas; one valid detection at the gt box, one padding slot
    boxes = np.array([[[40, 20, 120, 80], [0, 0, 0, 0]]], np.float32)
    return detections_to_coco(np.array([7]), boxes, np.array([[0.9, 0.0]]), np.array([[0, 0]]),
                              np.array([[True, False]]), np.array([2.0], np.float32), np.array([[50, 80]]), [1],
                              image_size=np.array([[100, 160]]), **extra)


def test_masks_become_rle_in_original_pixels_and_score():
    masks = np.zeros((1, 2, 28, 28), np.float32)
    masks[0, 0] = 1.0
    res = _batch(masks=masks)
    assert len(res) == 1 and res[0]["bbox"] == [20.0, 10.0, 40.0, 30.0]
    m = mask_util.decode(res[0]["segmentation"]).astype(bool)
    assert m.shape == (50, 80)
    box = np.zeros((50, 80), bool)
    box[10:40, 20:60] = True
    # torchvision pastes into the integer-truncated box expanded by one mask cell: ~1 px wider per side here
    assert (m & box).sum() / (m | box).sum() > 0.88
    ev = COCOEvaluator(_gt(), [1], ["thing"], "segm")
    ev.add(res, image_ids=[7])
    metrics = ev.evaluate()
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["AP"] > 50.0


def test_keypoints_mapped_back_and_scored():
    kps = np.zeros((1, 2, 2, 3), np.float32)
    kps[0, 0] = [[50, 30, 0.8], [100, 70, 0.7]]  # canvas pixels = 2x the gt keypoints
    res = _batch(keypoints=kps)
    assert res[0]["keypoints"] == pytest.approx([25, 15, 0.8, 50, 35, 0.7])
    ev = COCOEvaluator(_gt(True), [1], ["thing"], "keypoints", kpt_oks_sigmas=[0.05, 0.05])
    ev.add(res, image_ids=[7])
    assert ev.evaluate()["AP"] == pytest.approx(100.0)
    kps[0, 0, :, :2] += 6.0  # 3 px off in original pixels: OKS drops below the strict thresholds
    ev.reset()
    ev.add(_batch(keypoints=kps), image_ids=[7])
    assert ev.evaluate()["AP"] < 100.0
