"""Helpers shared by the torchvision parity tests (``tests/convert/test_{faster_rcnn,mask_rcnn,keypoint_rcnn,
retinanet,fcos}_parity.py``).

* the reference recipe: :func:`_reference_model` (seeded torchvision detector, BatchNorm calibrated on coco128 images
  then randomised; ``tests/convert/test_faster_rcnn_parity.py``'s docstring explains why);
* the inputs: coco128 images through torchvision's own transform (:func:`_torchvision_input`), its output
  un-normalised to 0..255 pixels for jaxdet (:func:`_jaxdet_input`), the float64 copy of a run (:func:`_float64`);
* the R-CNN stages of torchvision (:func:`_run_torchvision`) and the Faster R-CNN measured tolerances that the
  Mask/Keypoint R-CNN tests reuse;
* comparisons: tie-aware one-to-one matching (:func:`_match`, :func:`_assert_same_up_to_ties`), FPN features,
  COCO results in original-image pixels and pycocotools AP on a pseudo ground truth (:func:`_coco_ap`);
* ``_record`` for the ``max_err`` fixture of ``tests/convert/conftest.py`` (largest differences per comparison).

Conventions: boxes xyxy in pixels (canvas pixels unless said otherwise), classes as torchvision labels (jaxdet's
class c is label c + 1), a parity record ``r`` is one image's dict built by a test's ``parity`` fixture.
"""
from __future__ import annotations

import copy
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from checkpoints_convert.common import check_shapes  # noqa: E402
from checkpoints_convert.torchvision_detector import COCO_CATEGORY_IDS, COCO_CLASS_NAMES  # noqa: E402
from jaxdet.evaluation.coco import COCOEvaluator, detections_to_coco  # noqa: E402

torch.set_num_threads(2)  # the parity tests share 2 CPU cores

REPO = pathlib.Path(__file__).resolve().parents[2]
TV_MEAN01 = np.array([0.485, 0.456, 0.406], np.float32)
TV_STD01 = np.array([0.229, 0.224, 0.225], np.float32)
#: The Faster R-CNN test's images: 640x480 landscape x4, 480x640 portrait x2 (two canvases: 800x1088 and
#: 1088x800); the FCOS test uses the first five.
FASTER_RCNN_IMAGES = ("000000000089.jpg", "000000000110.jpg", "000000000133.jpg", "000000000164.jpg",
                      "000000000064.jpg", "000000000142.jpg")
CALIBRATION_IMAGES = ("000000000030.jpg", "000000000034.jpg", "000000000036.jpg", "000000000042.jpg")
#: torchvision FPN output names -> jaxdet levels: R-CNN backbones (LastLevelMaxPool) ...
TV_LEVELS = {"0": "P2", "1": "P3", "2": "P4", "3": "P5", "pool": "P6"}
#: ... and RetinaNet / FCOS backbones (C3..C5 with LastLevelP6P7).
TV_LEVELS_P3_P7 = {"0": "P3", "1": "P4", "2": "P5", "p6": "P6", "p7": "P7"}

# R-CNN tolerances, measured for Faster R-CNN (docs/parity_faster_rcnn.md, the module docstring of
# test_faster_rcnn_parity.py); the Mask and Keypoint R-CNN tests use them for their box parts.
FEATURE_REL_TOL = 1e-4
STAGE_BOX_TOL, STAGE_DET_SCORE_TOL = 0.01, 1e-4
E2E_BOX_TOL, E2E_DET_SCORE_TOL = 0.1, 1e-3


# ----------------------------------------------------------------------------------------------- reference and inputs
def _load_image(path) -> torch.Tensor:
    """RGB image file -> [3, H, W] float32 in 0..1 (torchvision detection input)."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0


def _reference_model(root, builder=None) -> torch.nn.Module:
    """Seeded torchvision detector with calibrated-then-randomised BatchNorm (see test_faster_rcnn_parity.py's
    module docstring).

    ``builder``: the torchvision constructor (default ``fasterrcnn_resnet50_fpn``); the other families' parity tests
    pass theirs (``maskrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``, ...) to get the same recipe."""
    builder = builder or torchvision.models.detection.fasterrcnn_resnet50_fpn
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 for m in bns)
    calib = torch.cat([torch.nn.functional.interpolate(_load_image(root / "train2017" / f)[None], size=(320, 416),
                                                       mode="bilinear") for f in CALIBRATION_IMAGES])
    calib = (calib - torch.from_numpy(TV_MEAN01)[:, None, None]) / torch.from_numpy(TV_STD01)[:, None, None]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in bns:  # cumulative batch statistics of the calibration batch
            m.reset_running_stats()
            m.momentum = None
            m.train()
        model.backbone.body(calib)
        model.eval()
        for m in bns:
            c = m.weight.shape[0]
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(c, generator=g) * 0.5 + 0.75)
            # ~3% of the channels get a running_var of the order of eps (weight rescaled so that the output
            # keeps its size): there eps 1e-5 vs 0 changes the scale by up to 3.3x, so the norm_eps the
            # converter records must be the one the model uses (as with the published eps-0 weights).
            small = torch.rand(c, generator=g) < 0.03
            var = torch.rand(c, generator=g) * 2e-5 + 1e-6
            m.weight.copy_(torch.where(small, m.weight * ((var + m.eps) / (m.running_var + m.eps)).sqrt(), m.weight))
            m.running_var.copy_(torch.where(small, var, m.running_var))
    return model


def _torchvision_input(model, root, name):
    """(image [3, H, W] float32 0..1, torchvision's transform output ``ImageList`` of a batch of 1) for the coco128
    image ``train2017/<name>``: resized (800/1333) and normalised, on torchvision's padded canvas."""
    image = _load_image(root / "train2017" / name)
    with torch.no_grad():
        image_list, _ = model.transform([image])
    return image, image_list


def _postprocess(model, dets, image_list, image):
    """torchvision's ``transform.postprocess`` of one image's detections: boxes (and masks / keypoints) mapped to
    the original image's pixels."""
    with torch.no_grad():
        return model.transform.postprocess([dict(dets)], image_list.image_sizes, [tuple(image.shape[1:])])[0]


def _jaxdet_input(image_list):
    """torchvision's transform output as a jaxdet batch: ``(canvas (H, W), image_size [1, 2] int32, batch)``, where
    ``batch = {"image": [1, H, W, 3] float32 0..255 pixels (un-normalised), "image_size": [1, 2] int32}``."""
    canvas = tuple(image_list.tensors.shape[2:])
    image_size = np.asarray([image_list.image_sizes[0]], np.int32)
    pixels = (image_list.tensors[0].numpy().transpose(1, 2, 0) * TV_STD01 + TV_MEAN01) * 255.0
    batch = {"image": jnp.asarray(pixels[None]), "image_size": jnp.asarray(image_size)}
    return canvas, image_size, batch


def _end_to_end(model):
    """``jax.jit`` of ``model``'s inference on a batch: ``(variables, batch) -> (detections, {"intermediates"})``."""

    @jax.jit
    def end_to_end(v, batch):
        return model.apply(v, batch, train=False, mutable=["intermediates"])

    return end_to_end


def _float64(model, image_list):
    """A float64 copy of a torchvision model and of its input ``ImageList`` (the exact reference)."""
    return copy.deepcopy(model).double(), ImageList(image_list.tensors.double(), image_list.image_sizes)


def _run_torchvision(model, image_list, proposals=None):
    """features (dict), proposals [P, 4], RPN scores [P], detections of torchvision's R-CNN stages (batch of 1)."""
    recorded = {}
    original = model.rpn.filter_proposals

    def filter_proposals(*args, **kwargs):  # record the RPN's objectness probabilities next to the boxes
        boxes, scores = original(*args, **kwargs)
        recorded["scores"] = scores
        return boxes, scores

    model.rpn.filter_proposals = filter_proposals
    try:
        with torch.no_grad():
            features = model.backbone(image_list.tensors)
            props, _ = model.rpn(image_list, features)
            dets, _ = model.roi_heads(features, props, image_list.image_sizes)
    finally:
        del model.rpn.filter_proposals
    return features, props[0], recorded["scores"][0], dets[0]


def _np(d):
    return {k: v.detach().cpu().numpy() for k, v in d.items()}


def _pad_proposals(boxes, n=1000):
    out = np.zeros((1, n, 4), np.float32)
    out[0, : len(boxes)] = boxes
    return out, (np.arange(n) < len(boxes))[None]


def _dets(d):
    """(boxes, scores, classes as torchvision labels) of a torchvision dict or a jaxdet output dict."""
    if "labels" in d:
        return d["boxes"], d["scores"], d["labels"]
    v = d["valid"]
    return d["boxes"][v], d["scores"][v], d["classes"][v] + 1


def _check_converted_tree(variables, model, what, method=None):
    """Converted ``variables`` have exactly the leaves and shapes of ``model.init(..., method=method)`` on a 64x64
    dummy batch (``check_shapes`` raises ValueError naming ``what`` otherwise)."""
    batch = {"image": jnp.zeros((1, 64, 64, 3), jnp.uint8), "image_size": jnp.array([[64, 64]], jnp.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, method=method))
    check_shapes(variables, shapes, what)


# ----------------------------------------------------------------------------------------------- comparisons
def _record(max_err, key, value, reduce=max):
    max_err[key] = reduce(max_err[key], value) if key in max_err else value


def _match(ref_boxes, ref_scores, ref_classes, boxes, scores, classes, box_tol, score_tol):
    """One-to-one matching of reference items to ours, tie-aware.

    Reference item i (in descending score order) takes the closest (max-abs coordinate difference) unmatched item
    of ours with the same class, ``|score difference| <= score_tol`` and box difference ``<= box_tol``. Returns
    (pairs [(i, j)], unmatched reference indices, unmatched indices of ours, max box diff, max score diff)."""
    used = np.zeros(len(boxes), bool)
    pairs, missing = [], []
    box_err = score_err = 0.0
    for i in np.argsort(-ref_scores, kind="stable"):
        cand = np.nonzero(~used & (classes == ref_classes[i]) & (np.abs(scores - ref_scores[i]) <= score_tol))[0]
        if cand.size:
            d = np.abs(boxes[cand] - ref_boxes[i]).max(axis=1)
            k = int(np.argmin(d))
            if d[k] <= box_tol:
                j = int(cand[k])
                used[j] = True
                pairs.append((int(i), j))
                box_err = max(box_err, float(d[k]))
                score_err = max(score_err, abs(float(scores[j]) - float(ref_scores[i])))
                continue
        missing.append(int(i))
    return pairs, missing, np.nonzero(~used)[0].tolist(), box_err, score_err


def _assert_same_up_to_ties(what, ref, ours, box_tol, score_tol, max_err, cap=None, cap_score=None):
    """ref/ours: (boxes [N, 4], scores [N], classes [N]). Same items (one-to-one, boxes within ``box_tol``,
    scores within ``score_tol``) and the same order up to near-ties (sorted scores agree element-wise).

    ``cap``: the static output count (1000 proposals, 100 detections). When the reference list was full
    (``cap_score``: its lowest score, given when ``ref`` is a filtered view of such a list), the last places are
    decided by a top-``cap`` cut, and items of the two lists whose scores are within ``score_tol`` of that cut
    score can differ in equal numbers: a near-tie at the cut."""
    assert len(ours[0]) == len(ref[0]), f"{what}: {len(ours[0])} items, reference has {len(ref[0])}"
    pairs, missing, extra, box_err, score_err = _match(*ref, *ours, box_tol, score_tol)
    at_cut = 0
    if cap is not None and len(ref[0]) == cap:
        cap_score = ref[1].min()
    if cap_score is not None and len(missing) == len(extra):
        cut = cap_score
        if all(ref[1][i] - cut <= score_tol for i in missing) and all(ours[1][j] - cut <= score_tol for j in extra):
            at_cut, missing, extra = len(missing), [], []
    assert not missing and not extra, (
        f"{what}: reference items {missing[:10]} unmatched, our items {extra[:10]} unmatched "
        f"(box tol {box_tol} px, score tol {score_tol}); reference scores {ref[1][missing[:5]]}, "
        f"ours {ours[1][extra[:5]]}, lowest reference score {ref[1].min()}")
    np.testing.assert_allclose(np.sort(ours[1])[::-1], np.sort(ref[1])[::-1], rtol=0, atol=score_tol,
                               err_msg=f"{what}: sorted scores differ")
    assert np.all(np.diff(ours[1]) <= 0), f"{what}: our items are not sorted by score"
    old = max_err.get(what, (0.0, 0.0, 0))
    max_err[what] = (max(old[0], box_err), max(old[1], score_err), old[2] + at_cut)


def _float64_detection_errors(dets64, r, box_tol, score_tol, max_err):
    """Largest (box px, score) differences from torchvision's float64 detections ``dets64`` (the exact answer) of
    torchvision's float32 ones and of jaxdet's end-to-end ones (``r["tv"]["dets"]``, ``r["e2e"]["dets"]``), which
    must match them one to one within ``box_tol`` / ``score_tol``: ``{"torchvision float32": (box, score),
    "jaxdet": (box, score)}``, also recorded in ``max_err``."""
    ref = tuple(np.asarray(x, np.float64) for x in _dets(_np(dets64)))
    errs = {}
    for who, d in (("torchvision float32", _dets(r["tv"]["dets"])), ("jaxdet", _dets(r["e2e"]["dets"]))):
        _, missing, extra, box_err, score_err = _match(*ref, *d, box_tol, score_tol)
        assert not missing and not extra, (who, missing, extra)
        errs[who] = (box_err, score_err)
    max_err["float64 reference: detections (box px, score) of torchvision float32 / jaxdet"] = errs
    return errs


def _nhwc(features, tv_levels):
    """torchvision FPN outputs ``{name: [1, C, H, W]}`` -> ``{jaxdet level: [H, W, C] numpy}``."""
    return {tv_levels[k]: v[0].numpy().transpose(1, 2, 0) for k, v in features.items()}


def _feature_errors(feats_j, feats_t, levels):
    """``{level: (max |jaxdet - torchvision|, max |torchvision|)}`` of jaxdet [1, H, W, C] and torchvision [H, W, C]
    features."""
    return {k: (float(np.abs(feats_j[k][0] - feats_t[k]).max()), float(np.abs(feats_t[k]).max())) for k in levels}


def _assert_features_match(parity, rel_tol, max_err):
    """Every image's FPN features (``r["feat_err"]`` of :func:`_feature_errors`) agree within ``rel_tol`` of their
    magnitude (which is > 1: not degenerate)."""
    for r in parity:
        for level, (diff, scale) in r["feat_err"].items():
            assert scale > 1.0
            assert diff <= rel_tol * scale, f"{r['name']} {level}: max|diff| {diff} > {rel_tol} * {scale}"
            _record(max_err, f"feature {level} (relative)", diff / scale)


def _assert_float64_features(feats64, r, tv_levels, max_err):
    """Against torchvision's float64 features (``feats64``, the exact answer), jaxdet's (``r["feats_j"]``) are no
    further off than torchvision's float32 ones (``r["feats_t"]``) within a factor 2, on every level."""
    for k, v in feats64.items():
        ref = v[0].numpy().transpose(1, 2, 0)
        err_tv = np.abs(r["feats_t"][tv_levels[k]] - ref).max()
        err_jx = np.abs(r["feats_j"][tv_levels[k]] - ref).max()
        max_err[f"float64 reference: {tv_levels[k]} relative error of torchvision float32 / jaxdet"] = (
            err_tv / np.abs(ref).max(), err_jx / np.abs(ref).max())
        assert err_jx <= 2 * err_tv, f"{tv_levels[k]}: jaxdet {err_jx} vs torchvision float32 {err_tv} from float64"


# ----------------------------------------------------------------------------------------------- COCO AP
def _coco_results(r, which):
    """COCO result dicts (original-image pixels) of torchvision's postprocess or of jaxdet's detections
    through ``detections_to_coco``; only the 80 COCO-2017 categories (torchvision's 'N/A' outputs dropped)."""
    if which == "torchvision":
        p = r["tv"]["post"]
        res = [{"image_id": r["image_id"], "category_id": int(l), "score": float(s),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for b, s, l in zip(p["boxes"], p["scores"], p["labels"])]
    else:
        d = r["e2e"]["dets"]
        res = detections_to_coco([r["image_id"]], d["boxes"][None], d["scores"][None], d["classes"][None],
                                 d["valid"][None], [1.0], [r["orig_size"]], list(range(1, 91)),
                                 image_size=[r["image_size"]])
    return [x for x in res if x["category_id"] in set(COCO_CATEGORY_IDS)]


def _assert_original_pixel_detections_match(r, box_tol, score_tol, max_err, cap_score=None):
    """One image's detections in original-image pixels, torchvision's ``transform.postprocess`` vs jaxdet's
    ``detections_to_coco`` (:func:`_coco_results`): the same up to ties (:func:`_assert_same_up_to_ties`)."""
    t, j = _coco_results(r, "torchvision"), _coco_results(r, "jaxdet")
    xyxy = lambda rs: np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (x["bbox"] for x in rs)])
    _assert_same_up_to_ties(
        f"original-pixel detections {r['name']}",
        (xyxy(t), np.array([x["score"] for x in t]), np.array([x["category_id"] for x in t])),
        (xyxy(j), np.array([x["score"] for x in j]), np.array([x["category_id"] for x in j])),
        box_tol, score_tol, max_err, cap_score=cap_score)


def _pseudo_ground_truth(parity, categories):
    """A COCO ground truth made of torchvision's detections with score >= 0.15, each box side moved by up to 15%
    of its size (seeded): gives a mid-range AP that reacts to any change of boxes, scores or classes (with random
    weights the real coco128 AP of both models is 0)."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for r in parity:
        h, w = r["orig_size"]
        images.append({"id": r["image_id"], "height": h, "width": w, "file_name": r["name"]})
        for res in _coco_results(r, "torchvision"):
            if res["score"] < 0.15:
                continue
            x, y, bw, bh = res["bbox"]
            x1, y1, x2, y2 = np.array([x, y, x + bw, y + bh]) + rng.uniform(-0.15, 0.15, 4) * [bw, bh, bw, bh]
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if x2 - x1 > 1 and y2 - y1 > 1:
                anns.append({"id": len(anns) + 1, "image_id": r["image_id"], "category_id": res["category_id"],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": categories}
    gt.createIndex()
    return gt, len(anns)


def _coco_ap(gt, parity, results, iou_type="bbox", category_ids=COCO_CATEGORY_IDS, class_names=COCO_CLASS_NAMES):
    """pycocotools summary (``COCOEvaluator.evaluate``) of torchvision's and of jaxdet's results on ground truth
    ``gt`` (a ``COCO`` or a json path): ``{"torchvision": stats, "jaxdet": stats}``; ``results(r, which)`` gives
    one image's COCO results, ``which`` in ("torchvision", "jaxdet")."""
    ap = {}
    for which in ("torchvision", "jaxdet"):
        ev = COCOEvaluator(gt, category_ids, class_names, iou_type=iou_type)
        for r in parity:
            ev.add(results(r, which), image_ids=[r["image_id"]])
        ap[which] = ev.evaluate()
    return ap


def _assert_ap_match(ap, what, max_err, key):
    """Records ``(torchvision AP, jaxdet AP)`` of :func:`_coco_ap` under ``max_err[key]``; AP, AP50 and AP75 agree
    within 0.1 (the assertion message starts with ``what``)."""
    max_err[key] = (ap["torchvision"]["AP"], ap["jaxdet"]["AP"])
    for name in ("AP", "AP50", "AP75"):
        assert abs(ap["torchvision"][name] - ap["jaxdet"][name]) <= 0.1, (what, name, ap)


def _assert_box_aps_match(parity, ground_truths, max_err):
    """Box AP of torchvision's and jaxdet's results (:func:`_coco_results`) agree (:func:`_assert_ap_match`) on each
    ``(label, ground truth)`` of ``ground_truths``, in that order; on the one labelled ``"pseudo"`` torchvision's AP
    is also mid-range (20..90), so that the comparison means something."""
    for label, gt in ground_truths:
        ap = _coco_ap(gt, parity, _coco_results)
        _assert_ap_match(ap, label, max_err, f"AP {label} (torchvision, jaxdet)")
        if label == "pseudo":
            assert 20 < ap["torchvision"]["AP"] < 90, ap["torchvision"]["AP"]
