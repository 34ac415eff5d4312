"""Tests of jaxdet.evaluation.coco against pycocotools and hand-computed COCO metrics."""
import json
import logging
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet.evaluation.coco import (
    BOX_METRIC_NAMES,
    KEYPOINT_METRIC_NAMES,
    COCOEvaluator,
    detections_to_coco,
    evaluate_results_file,
)

ANN = "annotations/instances_train2017.json"


def _load(path):
    return COCO(str(path))


@pytest.fixture(scope="module")
def gt_path(coco128_root):
    return coco128_root / ANN


@pytest.fixture(scope="module")
def coco_gt(gt_path):
    return _load(gt_path)


@pytest.fixture(scope="module")
def cats(coco_gt):
    c = sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])
    return [x["id"] for x in c], [x["name"] for x in c]


def _resize_scale(h, w):
    """torchvision's min(800 / short, 1333 / long)."""
    return min(800.0 / min(h, w), 1333.0 / max(h, w))


def _gt_batches(coco, image_ids, category_ids, batch_size=8, d=64, add_padding=True, seed=0):
    """The non-crowd gt of `image_ids` as padded model outputs in canvas pixels (gt * scale), score 1.

    Every batch also carries junk: invalid detections with score 1 and huge boxes (valid False), and when
    `add_padding` a padded image (image_valid False) whose detections are all marked valid.
    """
    rng = np.random.default_rng(seed)
    contiguous = {c: i for i, c in enumerate(category_ids)}
    for start in range(0, len(image_ids), batch_size):
        ids = list(image_ids[start : start + batch_size])
        n = len(ids) + int(add_padding)
        out = dict(
            image_ids=np.zeros((n,), np.int64),
            boxes=rng.uniform(0, 500, (n, d, 4)).astype(np.float32),
            scores=np.ones((n, d), np.float32),
            classes=rng.integers(0, len(category_ids), (n, d)).astype(np.int32),
            valid=np.zeros((n, d), bool),
            scale=np.zeros((n,), np.float32),
            orig_size=np.zeros((n, 2), np.int32),
            image_valid=np.zeros((n,), bool),
        )
        out["boxes"][..., 2:] += out["boxes"][..., :2]
        for b, img_id in enumerate(ids):
            info = coco.imgs[img_id]
            h, w = info["height"], info["width"]
            s = _resize_scale(h, w)
            anns = [a for a in coco.imgToAnns[img_id] if not a["iscrowd"]]
            assert len(anns) < d
            for j, a in enumerate(anns):
                x, y, bw, bh = a["bbox"]
                out["boxes"][b, j] = np.array([x, y, x + bw, y + bh], np.float32) * np.float32(s)
                out["classes"][b, j] = contiguous[a["category_id"]]
                out["valid"][b, j] = True
            out["image_ids"][b] = img_id
            out["scale"][b] = s
            out["orig_size"][b] = (h, w)
            out["image_valid"][b] = True
        if add_padding:  # a padded image: everything "valid" but the image itself is not
            out["image_ids"][-1] = -1
            out["valid"][-1] = True
        yield ids, out


def _run_gt_as_detections(coco, image_ids, category_ids, class_names, **kw):
    ev = COCOEvaluator(coco, category_ids, class_names, **kw)
    n_valid = 0
    for ids, batch in _gt_batches(coco, image_ids, category_ids):
        res = detections_to_coco(
            batch["image_ids"], batch["boxes"], batch["scores"], batch["classes"], batch["valid"],
            batch["scale"], batch["orig_size"], category_ids, batch["image_valid"],
        )
        expected = int((batch["valid"] & batch["image_valid"][:, None]).sum())
        assert len(res) == expected  # invalid detections and padded images produce nothing
        n_valid += expected
        assert all(r["image_id"] in ids for r in res)
        ev.add(res, image_ids=ids)
    return ev, n_valid


def test_gt_as_detections_from_canvas_pixels_gives_ap_100(coco_gt, cats, gt_path, tmp_path):
    category_ids, class_names = cats
    image_ids = sorted(coco_gt.getImgIds())
    ev, n = _run_gt_as_detections(coco_gt, image_ids, category_ids, class_names, output_dir=tmp_path / "bbox")
    assert n == sum(1 for a in coco_gt.dataset["annotations"] if not a["iscrowd"])
    m = ev.evaluate()
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert m[k] == pytest.approx(100.0), k
    # Several objects of one class per image: one detection per image cannot recall them all.
    assert m["AR1"] < 100.0
    with_gt = {coco_gt.cats[a["category_id"]]["name"] for a in coco_gt.dataset["annotations"] if not a["iscrowd"]}
    assert len(with_gt) == 71
    for name, ap in m["per_category_AP"].items():
        if name in with_gt:
            assert ap == pytest.approx(100.0), name
        else:
            assert math.isnan(ap), name  # no gt for this class in coco128: nan, not a crash
    assert list(m["per_category_AP"]) == class_names

    # Files: the detections in COCO results format and the metrics as strict JSON (nan -> null).
    results = json.loads((tmp_path / "bbox" / "coco_instances_results.json").read_text())
    assert len(results) == n and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    metrics_text = (tmp_path / "bbox" / "metrics.json").read_text()
    assert "NaN" not in metrics_text
    saved = json.loads(metrics_text)
    assert saved["iou_type"] == "bbox" and saved["AP"] == pytest.approx(m["AP"])
    absent = next(c for c in class_names if c not in with_gt)
    assert saved["per_category_AP"][absent] is None

    # The convenience function on the written file gives the same numbers.
    m2 = evaluate_results_file(gt_path, tmp_path / "bbox" / "coco_instances_results.json")
    for k in BOX_METRIC_NAMES:
        assert m2[k] == pytest.approx(m[k]), k


def test_hand_computed_ap_with_101_point_interpolation():
    # One image, two gt boxes of class "a"; class "b" has no gt at all.
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    gt.createIndex()
    ev = COCOEvaluator(gt, [3, 7], ["a", "b"])
    ev.add(
        [
            # false positive, higher score (IoU 0 with both gts)
            {"image_id": 1, "category_id": 3, "bbox": [80, 0, 10, 10], "score": 0.9},
            # true positive, IoU 64 / 100 = 0.64 with gt 1: matched at IoU thresholds 0.50, 0.55, 0.60 only
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 8, 8], "score": 0.8},
        ]
    )
    m = ev.evaluate()
    # At a threshold where the TP matches, in score order: FP, TP -> recall [0, 0.5], precision [0, 0.5].
    # The precision envelope (max to the right) is [0.5, 0.5]. COCO samples it at recall 0, 0.01, ..., 1.00
    # (101 points) taking the first detection with recall >= r: r = 0 -> 0.5; 0 < r <= 0.5 -> 0.5 (50 points);
    # r > 0.5 -> 0. So AP at that threshold = 51 * 0.5 / 101.
    ap_matched = 51 * 0.5 / 101
    assert m["AP50"] == pytest.approx(100 * ap_matched)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(100 * ap_matched * 3 / 10)  # 3 of the 10 IoU thresholds match
    assert m["APs"] == pytest.approx(m["AP"])  # both gts are small (area 100 < 32^2)
    assert math.isnan(m["APm"]) and math.isnan(m["APl"])  # no medium/large gt
    assert m["AR1"] == pytest.approx(0.0)  # with one detection per image only the FP is kept
    assert m["AR10"] == pytest.approx(100 * 0.5 * 3 / 10)
    assert m["AR100"] == pytest.approx(100 * 0.5 * 3 / 10)
    assert m["per_category_AP"]["a"] == pytest.approx(m["AP"])
    assert math.isnan(m["per_category_AP"]["b"])


def test_matches_pycocotools_on_noisy_detections(coco_gt, cats):
    """Wiring check (percent, stat order, imgIds/catIds, per-category indexing) against COCOeval run by hand."""
    category_ids, class_names = cats
    rng = np.random.default_rng(1)
    image_ids = sorted(coco_gt.getImgIds())[:40]
    results = []
    for img_id in image_ids:
        info = coco_gt.imgs[img_id]
        for a in coco_gt.imgToAnns[img_id]:
            x, y, w, h = a["bbox"]
            if rng.random() < 0.2:
                continue  # a miss
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids))
            results.append({"image_id": img_id, "category_id": cat,
                            "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)],
                            "score": float(rng.random())})
        for _ in range(2):  # false positives
            bw, bh = rng.uniform(5, 100, 2)
            results.append({"image_id": img_id, "category_id": int(rng.choice(category_ids)),
                            "bbox": [rng.uniform(0, info["width"] - bw), rng.uniform(0, info["height"] - bh), bw, bh],
                            "score": float(rng.random())})
    ev = COCOEvaluator(coco_gt, category_ids, class_names)
    ev.add(results, image_ids=image_ids)
    m = ev.evaluate()

    ref = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
    ref.params.imgIds = image_ids
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    for name, v in zip(BOX_METRIC_NAMES, ref.stats):
        if v < 0:
            assert math.isnan(m[name]), name
        else:
            assert m[name] == pytest.approx(100 * v), name
    assert 10 < m["AP"] < 90  # not a degenerate case
    person = ref.eval["precision"][:, :, ref.params.catIds.index(1), 0, -1]
    assert m["per_category_AP"]["person"] == pytest.approx(100 * person[person > -1].mean())


def test_only_evaluated_images_count(coco_gt, cats):
    category_ids, class_names = cats
    all_ids = sorted(coco_gt.getImgIds())
    subset = all_ids[:10]
    ev, _ = _run_gt_as_detections(coco_gt, subset, category_ids, class_names)
    m = ev.evaluate()
    assert m["AP"] == pytest.approx(100.0) and m["AR100"] == pytest.approx(100.0)  # other images' gt not counted

    # An image registered without detections: its gt counts as missed.
    empty_img = next(i for i in all_ids[10:] if any(not a["iscrowd"] for a in coco_gt.imgToAnns[i]))
    ev.add([], image_ids=[empty_img])
    m2 = ev.evaluate()
    assert m2["AR100"] < 100.0 and m2["AP"] < 100.0


def test_zero_detections_give_ap_0(coco_gt, cats, tmp_path):
    category_ids, class_names = cats
    ev = COCOEvaluator(coco_gt, category_ids, class_names, output_dir=tmp_path)
    m = ev.evaluate()  # nothing added at all: every gt image is evaluated
    for k in BOX_METRIC_NAMES:
        assert m[k] == 0.0, k
    assert all(v == 0.0 or math.isnan(v) for v in m["per_category_AP"].values())
    assert m["per_category_AP"]["person"] == 0.0
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == []

    ev.add([], image_ids=sorted(coco_gt.getImgIds())[:3])  # registered images, no detections
    m = ev.evaluate()
    assert m["AP"] == 0.0 and m["AR100"] == 0.0


def test_unknown_image_id_raises(gt_path, cats):
    category_ids, class_names = cats
    ev = COCOEvaluator(gt_path, category_ids, class_names)
    det = {"image_id": 987654321, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}
    with pytest.raises(ValueError, match=r"987654321.*instances_train2017\.json"):
        ev.add([det])
    with pytest.raises(ValueError, match="123456789"):
        ev.add([], image_ids=[123456789])
    with pytest.raises(ValueError, match="category ids \\[999\\]"):
        ev.add([dict(det, image_id=9, category_id=999)])
    with pytest.raises(ValueError, match="lacks \\['bbox'\\]"):
        ev.add([{"image_id": 9, "category_id": 1, "score": 0.5}])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOEvaluator(gt_path.parent / "nope.json", category_ids, class_names)
    with pytest.raises(ValueError, match="not in"):
        COCOEvaluator(gt_path, [1, 12345], ["person", "x"])


def test_detections_to_coco_hand_case():
    # Image 0: original 100x200 (h, w), scale 2 -> canvas boxes are twice the original ones.
    # Image 1: padding (image_valid False, scale 0): nothing comes out and nothing divides by zero.
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [20, 40, 60, 100]  # -> original [10, 20, 30, 50] -> xywh [10, 20, 20, 30]
    boxes[0, 1] = [-10, 150, 500, 260]  # -> [-5, 75, 250, 130] -> clipped to [0, 75, 200, 100]
    boxes[0, 2] = [1, 1, 2, 2]  # invalid detection
    boxes[1] = 7
    out = detections_to_coco(
        image_ids=np.array([42, 0]),
        boxes=boxes,
        scores=np.array([[0.9, 0.5, 0.99], [1, 1, 1]], np.float32),
        classes=np.array([[0, 2, 1], [1, 1, 1]], np.int32),
        valid=np.array([[True, True, False], [True, True, True]]),
        scale=np.array([2.0, 0.0], np.float32),
        orig_size=np.array([[100, 200], [0, 0]], np.int32),
        category_ids=[1, 5, 90],
        image_valid=np.array([True, False]),
    )
    assert out == [
        {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 30.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 90, "bbox": [0.0, 75.0, 200.0, 25.0], "score": pytest.approx(0.5)},
    ]
    assert all(type(v) in (int, float) for r in out for v in (r["image_id"], r["category_id"], r["score"]))

    # Per-axis ratios from the resized size (torchvision's postprocess): 100x200 resized to 150x250.
    out = detections_to_coco(
        [42], np.array([[[30, 30, 60, 90]]], np.float32), [[1.0]], [[0]], [[True]], [9.0], [[100, 200]], [1],
        image_size=np.array([[150, 250]]),
    )
    assert out[0]["bbox"] == pytest.approx([24.0, 20.0, 24.0, 40.0])

    with pytest.raises(ValueError, match="class index 3"):
        detections_to_coco([1], np.zeros((1, 1, 4)), [[1.0]], [[3]], [[True]], [1.0], [[10, 10]], [1, 2, 3])
    with pytest.raises(ValueError, match="image 1 .*resize ratio"):
        detections_to_coco([1], np.zeros((1, 1, 4)), [[1.0]], [[0]], [[True]], [0.0], [[10, 10]], [1])
    with pytest.raises(ValueError, match="scores"):
        detections_to_coco([1], np.zeros((1, 2, 4)), [[1.0]], [[0, 0]], [[True, True]], [1.0], [[10, 10]], [1])


def test_segm_gt_masks_as_results_give_ap_100(gt_path, cats, caplog):
    coco = _load(gt_path)  # fresh: COCOeval's segm path rewrites gt segmentations to RLE in place
    category_ids, class_names = cats
    image_ids = sorted(coco.getImgIds())[:12]
    results = []
    for img_id in image_ids:
        for a in coco.imgToAnns[img_id]:
            if a["iscrowd"]:
                continue
            rle = coco.annToRLE(a)
            # a deliberately wrong bbox: segm must score the mask (and use the mask area), not the box
            results.append({"image_id": img_id, "category_id": a["category_id"], "segmentation": rle,
                            "bbox": [0, 0, 1, 1], "score": 0.9})
    # A duplicate of the largest mask, top score: an unmatched false positive whose *mask* is large. Scored
    # by mask area it lowers APl and leaves APs alone (the other way round if the bogus 1x1 box area were used).
    big = max((a for i in image_ids for a in coco.imgToAnns[i] if not a["iscrowd"]), key=lambda a: a["area"])
    assert big["area"] > 96**2
    results.append({"image_id": big["image_id"], "category_id": big["category_id"],
                    "segmentation": coco.annToRLE(big), "bbox": [0, 0, 1, 1], "score": 1.0})
    ev = COCOEvaluator(coco, category_ids, class_names, iou_type="segm")
    ev.add(results, image_ids=image_ids)
    with caplog.at_level(logging.INFO, logger="jaxdet.evaluation.coco"):
        m = ev.evaluate()
    for k in ("APs", "APm", "AR100", "ARs", "ARm", "ARl"):
        assert m[k] == pytest.approx(100.0), k
    for k in ("AP", "AP50", "AP75", "APl"):
        assert m[k] < 100.0, k
    assert m["per_category_AP"][coco.cats[big["category_id"]]["name"]] < 100.0
    assert "Average Precision" in caplog.text and "category" in caplog.text
    assert set(results[0]) >= {"bbox"}  # the caller's dicts are left untouched


def test_keypoints_with_coco_sigmas():
    rng = np.random.default_rng(0)
    anns = []
    for i in range(4):
        x0, y0 = 20 + 100 * i, 30
        kps = np.stack([rng.uniform(x0, x0 + 80, 17), rng.uniform(y0, y0 + 150, 17), np.full(17, 2)], 1)
        anns.append({"id": i + 1, "image_id": 1 + i % 2, "category_id": 1, "bbox": [x0, y0, 80, 150],
                     "area": 80 * 150, "iscrowd": 0, "num_keypoints": 17, "keypoints": kps.reshape(-1).tolist()})
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 300, "width": 500}, {"id": 2, "height": 300, "width": 500}],
                  "categories": [{"id": 1, "name": "person"}], "annotations": anns}
    gt.createIndex()
    ev = COCOEvaluator(gt, [1], ["person"], iou_type="keypoints")
    ev.add([{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0} for a in anns])
    m = ev.evaluate()
    assert set(m) == set(KEYPOINT_METRIC_NAMES) | {"per_category_AP"}
    assert m["AP"] == pytest.approx(100.0) and m["AR"] == pytest.approx(100.0)

    # Shift every keypoint of the first person by 6 px: OKS with the COCO sigmas, computed by hand.
    sig = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
    oks = np.mean(np.exp(-36 / ((2 * sig) ** 2 * (80 * 150) * 2)))
    assert 0.5 < oks < 0.95
    shifted = (np.asarray(anns[0]["keypoints"]).reshape(17, 3) + [6, 0, 0]).reshape(-1).tolist()
    ev.reset()
    ev.add([{"image_id": 1, "category_id": 1, "keypoints": shifted, "score": 1.0}], image_ids=[1, 2])
    m = ev.evaluate()
    n_thr = int(np.sum(np.linspace(0.5, 0.95, 10) <= oks))
    # 4 gts, one TP at the matched thresholds: precision 1 up to recall 0.25 -> 26 of 101 points.
    assert m["AP"] == pytest.approx(100 * 26 / 101 * n_thr / 10)

    with pytest.raises(ValueError, match="kpt_oks_sigmas has 3"):
        COCOEvaluator(gt, [1], ["person"], iou_type="keypoints", kpt_oks_sigmas=[0.1, 0.1, 0.1]).add(
            [{"image_id": 1, "category_id": 1, "keypoints": shifted, "score": 1.0}]
        )
    with pytest.raises(ValueError, match="iou_type"):
        COCOEvaluator(gt, [1], ["person"], iou_type="boxes")
