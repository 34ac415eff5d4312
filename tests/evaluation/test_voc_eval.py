"""VOC AP (jaxdet.evaluation.voc) on hand-computed cases and against py-faster-rcnn's voc_eval definition."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxdet.evaluation.voc import VOCEvaluator, iou_matrix, voc_ap, voc_eval_class


def test_voc_ap_area_and_11_point_by_hand():
    rec = [0.5, 0.5, 1.0]
    prec = [1.0, 0.5, 2.0 / 3.0]
    # envelope 1, 1, 2/3: area = 0.5 * 1 + 0.5 * 2/3
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.5 + 1.0 / 3.0)
    # t = 0.0..0.5 (6 points) -> 1; t = 0.6..1.0 (5 points) -> 2/3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 5 * 2.0 / 3.0) / 11)


def test_voc_ap_edge_cases():
    assert voc_ap([], [], False) == 0.0
    assert voc_ap([], [], True) == 0.0
    # a perfect detector
    assert voc_ap([0.5, 1.0], [1.0, 1.0], False) == pytest.approx(1.0)
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == pytest.approx(1.0)
    # recall never reaches 0.6: 11-point gets 6/11 of precision 1
    assert voc_ap([0.5], [1.0], True) == pytest.approx(6 / 11)
    assert voc_ap([0.5], [1.0], False) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one length"):
        voc_ap([0.1, 0.2], [1.0], False)


def _scenario():
    gt = {
        "A": (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([False, True])),
        "B": (np.array([[0, 0, 10, 10]], np.float32), np.array([False])),
    }
    dets = [  # image, score, box
        ("A", 0.9, [0, 0, 10, 10]),    # TP on A's first box
        ("A", 0.8, [0, 0, 10, 10]),    # duplicate of a matched box: FP
        ("A", 0.7, [20, 20, 30, 30]),  # on a difficult box: neither TP nor FP
        ("B", 0.6, [0, 0, 5, 10]),     # IoU exactly 0.5: not > 0.5, FP
        ("B", 0.5, [0, 0, 6, 10]),     # IoU 0.6: TP
    ]
    ids = [d[0] for d in dets]
    scores = [d[1] for d in dets]
    boxes = np.array([d[2] for d in dets], np.float32)
    return ids, scores, boxes, gt


def test_voc_eval_class_hand_case_difficult_duplicates_and_strict_threshold():
    ids, scores, boxes, gt = _scenario()
    rec, prec, ap = voc_eval_class(ids, scores, boxes, gt, 0.5, use_07_metric=False)
    # TP 1,0,0,0,1 / FP 0,1,0,1,0 (the difficult match is neither) -> cumulated TP 1,1,1,1,2 FP 0,1,1,2,2; npos 2
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 0.5, 1.0 / 3.0, 0.5])
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    _, _, ap07 = voc_eval_class(ids, scores, boxes, gt, 0.5, use_07_metric=True)
    assert ap07 == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    # the order of the input does not matter, only the scores
    perm = [4, 2, 0, 3, 1]
    rec2, prec2, ap2 = voc_eval_class([ids[i] for i in perm], [scores[i] for i in perm], boxes[perm], gt, 0.5)
    np.testing.assert_allclose(rec2, rec)
    np.testing.assert_allclose(prec2, prec)
    assert ap2 == ap
    # a lower threshold turns the IoU-0.5 detection into a TP (B's box), the IoU-0.6 one into a duplicate FP
    rec3, prec3, _ = voc_eval_class(ids, scores, boxes, gt, 0.4)
    np.testing.assert_allclose(rec3, [0.5, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(prec3, [1.0, 0.5, 0.5, 2.0 / 3.0, 0.5])


def test_voc_eval_class_no_ground_truth_and_unknown_image():
    rec, prec, ap = voc_eval_class(["A"], [0.9], [[0, 0, 1, 1]], {}, 0.5)
    assert np.isnan(ap) and np.isnan(rec).all()
    np.testing.assert_allclose(prec, [0.0])
    # only difficult ground truth counts as none
    gt = {"A": (np.array([[0, 0, 1, 1]]), np.array([True]))}
    assert np.isnan(voc_eval_class(["A"], [0.9], [[0, 0, 1, 1]], gt, 0.5)[2])
    # detections on an image without ground truth of the class are false positives
    gt = {"A": (np.array([[0, 0, 10, 10]]), np.array([False]))}
    rec, prec, ap = voc_eval_class(["Z", "A"], [0.9, 0.8], [[0, 0, 10, 10], [0, 0, 10, 10]], gt, 0.5)
    np.testing.assert_allclose(prec, [0.0, 0.5])
    assert ap == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 image ids, 1 scores"):
        voc_eval_class(["A", "B"], [0.9], [[0, 0, 1, 1], [0, 0, 1, 1]], gt, 0.5)


def _py_faster_rcnn_voc_eval(dets, gt_int, ovthresh, use_07):
    """A transcription of py-faster-rcnn lib/datasets/voc_eval.py (matching loop) on VOC's 1-based inclusive
    integer boxes, with +1 in widths/heights."""
    class_recs, npos = {}, 0
    for k, (b, d) in gt_int.items():
        class_recs[k] = {"bbox": b.astype(float), "difficult": d, "det": [False] * len(b)}
        npos += int(np.sum(~d))
    image_ids = [x[0] for x in dets]
    confidence = np.array([x[1] for x in dets])
    BB = np.array([x[2] for x in dets], float)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1., 0.)
            ih = np.maximum(iymax - iymin + 1., 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                   (BBGT[:, 2] - BBGT[:, 0] + 1.) * (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07)


@pytest.mark.parametrize("use_07", [False, True])
def test_matches_py_faster_rcnn_on_voc_integer_boxes(use_07):
    rng = np.random.default_rng(0)
    gt_int, gt_cont, dets_int, dets_cont = {}, {}, [], []
    for img in range(12):
        m = int(rng.integers(0, 5))
        xy = rng.integers(1, 60, size=(m, 2))
        wh = rng.integers(5, 40, size=(m, 2))
        b = np.concatenate([xy, xy + wh], 1).astype(np.float64)  # VOC xmin, ymin, xmax, ymax (1-based inclusive)
        d = rng.random(m) < 0.2
        gt_int[img] = (b, d)
        gt_cont[img] = (b - np.array([1, 1, 0, 0]), d)
        for _ in range(int(rng.integers(0, 8))):
            if m and rng.random() < 0.7:  # jittered copy of a ground-truth box
                box = b[rng.integers(m)] + rng.integers(-3, 4, size=4)
                box[2:] = np.maximum(box[2:], box[:2] + 1)
            else:
                xy = rng.integers(1, 60, size=2)
                box = np.concatenate([xy, xy + rng.integers(5, 40, size=2)]).astype(np.float64)
            s = float(rng.random())
            dets_int.append((img, s, box))
            dets_cont.append((img, s, box - np.array([1, 1, 0, 0])))
    for thresh in (0.5, 0.7):
        ref = _py_faster_rcnn_voc_eval(dets_int, gt_int, thresh, use_07)
        ours = voc_eval_class([d[0] for d in dets_cont], [d[1] for d in dets_cont],
                              np.array([d[2] for d in dets_cont]), gt_cont, thresh, use_07)
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-12)
        np.testing.assert_allclose(ours[1], ref[1], rtol=1e-12)
        assert ours[2] == pytest.approx(ref[2], rel=1e-12)
        assert 0.05 < ours[2] < 0.95  # a non-trivial case


def test_iou_matrix_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])


@dataclasses.dataclass
class _FakeDataset:
    records: list
    category_ids: list
    class_names: list
    name: str = "fake"


def _fake_dataset():
    ids, scores, boxes, gt = _scenario()
    recs = [
        dict(image_id=1, boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32),
             classes=np.array([0, 0, 1], np.int32), is_crowd=np.zeros(3, bool), difficult=np.array([0, 1, 0], bool)),
        dict(image_id=2, boxes=np.array([[0, 0, 10, 10]], np.float32), classes=np.array([0], np.int32),
             is_crowd=np.zeros(1, bool)),  # no "difficult" key: none difficult
        dict(image_id=3, boxes=np.zeros((1, 4), np.float32) + [0, 0, 4, 4], classes=np.array([1], np.int32),
             is_crowd=np.array([True])),  # crowd: treated as difficult
    ]
    return _FakeDataset(recs, [7, 9], ["cat", "dog"])


def _coco(image_id, cat, score, box):
    x1, y1, x2, y2 = box
    return {"image_id": image_id, "category_id": cat, "score": score, "bbox": [x1, y1, x2 - x1, y2 - y1]}


def test_voc_evaluator_end_to_end(tmp_path):
    ds = _fake_dataset()
    ev = VOCEvaluator(ds, use_07_metric=False, output_dir=str(tmp_path))
    # class "cat" (id 7): the hand scenario, image A = 1, B = 2
    ids, scores, boxes, _ = _scenario()
    ev.add([_coco({"A": 1, "B": 2}[i], 7, s, b.tolist()) for i, s, b in zip(ids, scores, boxes)], image_ids=[1, 2])
    # class "dog" (id 9): one exact hit on image 1, one on the crowd region of image 3 (ignored)
    ev.add([_coco(1, 9, 0.9, [40, 40, 50, 50]), _coco(3, 9, 0.8, [0, 0, 4, 4])], image_ids=[3])
    m = ev.evaluate()
    assert m["per_category_AP"]["cat"] == pytest.approx(75.0)
    assert m["per_category_AP"]["dog"] == pytest.approx(100.0)
    assert m["AP50"] == pytest.approx(87.5)
    assert m["AP50_area"] == pytest.approx(87.5)
    assert m["AP50_11point"] == pytest.approx(100 * ((6 + 2.5) / 11 + 1.0) / 2)
    # at IoU 0.75 the cat detections with IoU 0.5 / 0.6 on image 2 are both misses: cat recall stops at 0.5
    assert m["AP75"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert m["AP"] < m["AP50"]
    assert (tmp_path / "voc_metrics.json").exists() and (tmp_path / "voc_results.json").exists()

    ev07 = VOCEvaluator(ds, use_07_metric=True)
    ev07.add(ev._results, image_ids=[1, 2, 3])
    m07 = ev07.evaluate()
    assert m07["AP50"] == pytest.approx(m["AP50_11point"])
    assert m07["AP50_area"] == pytest.approx(m["AP50"])


def test_voc_evaluator_counts_images_without_detections_and_rejects_bad_input():
    ds = _fake_dataset()
    ev = VOCEvaluator(ds)
    ev.add([_coco(1, 7, 0.9, [0, 0, 10, 10])], image_ids=[1, 2])  # image 2's cat is missed
    m = ev.evaluate()
    assert m["per_category_AP"]["cat"] == pytest.approx(50.0)
    assert m["per_category_AP"]["dog"] == 0.0
    ev.reset()
    ev.add([], image_ids=[3])  # only a crowd dog: no countable ground truth at all
    m = ev.evaluate()
    assert np.isnan(m["per_category_AP"]["cat"]) and np.isnan(m["per_category_AP"]["dog"])
    with pytest.raises(ValueError, match="category_id 8"):
        ev.add([_coco(1, 8, 0.9, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match=r"image ids \[99\]"):
        ev.add([_coco(99, 7, 0.9, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match="lacks"):
        ev.add([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}])
