"""torchvision ``retinanet_resnet50_fpn`` (v1) converted to jaxdet gives torchvision's features, head outputs,
detections and COCO AP on real coco128 images (issue 4), plus the converter's key/class handling.

The reference: ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)``, ``torch.manual_seed(0)``, eval mode,
with the BatchNorm calibration/randomisation of ``tests/convert/test_faster_rcnn_parity.py`` (``_reference_model``
of ``parity_utils.py``, run with the RetinaNet builder in place of the Faster R-CNN one), so the conversion uses
``norm_eps=1e-5``. torchvision initialises the head with std-0.01 weights and the 0.01 class prior, which gives no
detection at all (DESIGN.md section 5), so the head is then made confident (:func:`_make_head_confident`): conv
weights rescaled to He scale, random biases, class logits spread around a lower prior, box deltas of ~0.35 std.
Each image then has > 1000 candidates on P3 (and most on P4: the per-level top-1000 cut and torchvision's vanilla
batched NMS are exercised) and reaches the 300-detection cap; top scores range from 0.15 to 0.99997 (image 9 is
near saturation: its 300 detections lie in 0.991..0.99997, a stress test of near-ties). torchvision's output 0
(the unused background slot of its 91) gets bias -30, so it never detects and the converter's default classes
1..90 (class c = label c + 1) are exact. jaxdet gets torchvision's own transform output (800/1333) as in the
Faster R-CNN test.

Comparisons (tolerances measured, see docs/parity_retinanet.md):
  * features P3..P7 end to end: relative 1e-4 (float32 summation order, ~1.5e-5 measured);
  * post-processing alone on torchvision's head outputs: identical detections up to float rounding
    (boxes 1e-3 px, scores 1e-6);
  * head + post-processing on torchvision's features (stage): head logits/deltas within 1e-4 of their scale,
    detections with identical classes, boxes within 0.01 px, scores within 1e-4;
  * end to end (pixels in): boxes 0.05 px, scores 1e-4, classes identical, up to near-ties at the 300 cut;
    a float64 run of torchvision shows that jaxdet is as close to the exact result as torchvision's float32;
  * COCO box AP on a pseudo ground truth: equal within 0.1.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402

from checkpoints_convert.torchvision_detector import COCO_CATEGORY_IDS, COCO_CLASS_NAMES  # noqa: E402
from checkpoints_convert.torchvision_retinanet import convert_retinanet_resnet50_fpn  # noqa: E402
from jaxdet.config import load_config  # noqa: E402
from jaxdet.engine.checkpoint import apply_meta_to_config  # noqa: E402
from jaxdet.modeling.build import build_detector  # noqa: E402
from jaxdet.modeling.detectors.retinanet import LEVELS  # noqa: E402
from tests.convert.parity_utils import (  # noqa: E402
    REPO, TV_LEVELS_P3_P7, _assert_box_aps_match, _assert_features_match, _assert_float64_features,
    _assert_original_pixel_detections_match, _assert_same_up_to_ties, _check_converted_tree, _dets, _end_to_end,
    _feature_errors, _float64, _jaxdet_input, _match, _nhwc, _np, _postprocess, _pseudo_ground_truth, _record,
    _reference_model, _torchvision_input,
)

CONFIG = REPO / "configs" / "retinanet.py"
#: five landscape 640x480 coco128 images (one canvas, 800x1088: the anchors test covers other canvases).
IMAGES = ("000000000089.jpg", "000000000110.jpg", "000000000133.jpg", "000000000164.jpg", "000000000009.jpg")
FLOAT64_IMAGE = 1
DETECTIONS = 300

FEATURE_REL_TOL = HEAD_REL_TOL = 1e-4
POST_BOX_TOL, POST_SCORE_TOL = 1e-3, 1e-6
STAGE_BOX_TOL, STAGE_SCORE_TOL = 0.01, 1e-4
E2E_BOX_TOL, E2E_SCORE_TOL = 0.05, 1e-4


# ----------------------------------------------------------------------------------------------- helpers
def _make_head_confident(model) -> None:
    """Random-weight RetinaNet heads detect nothing (0.01 prior, std-0.01 weights shrink the signal). Rescale the
    subnet convs to He scale (x2.95 = sqrt(2 / 2304) / 0.01), randomise their biases, scale the class logits to a
    spread of ~2.7 around -6.3 and the deltas to ~0.35 std. Output 0 (torchvision's background slot) is silenced."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for sub in (model.head.classification_head, model.head.regression_head):
            for m in sub.conv.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.mul_(2.95)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
        cls = model.head.classification_head.cls_logits
        cls.weight.mul_(0.1)
        cls.bias.copy_(-6.0 + torch.randn(cls.bias.shape, generator=g) * 0.5)
        cls.bias.view(model.head.classification_head.num_anchors, -1)[:, 0] = -30.0
        reg = model.head.regression_head.bbox_reg
        reg.weight.mul_(0.04)
        reg.bias.copy_(torch.randn(reg.bias.shape, generator=g) * 0.1)


def _retinanet_reference(root):
    """Seeded retinanet_resnet50_fpn, BatchNorm calibrated and randomised exactly as the Faster R-CNN reference
    (``_reference_model`` with the RetinaNet builder), head made confident."""
    model = _reference_model(root, torchvision.models.detection.retinanet_resnet50_fpn)
    assert isinstance(model, torchvision.models.detection.RetinaNet)
    _make_head_confident(model)
    return model.eval()


def _run_torchvision(model, image_list):
    """features (OrderedDict), head outputs (cls_logits [1, N, 91], bbox_regression [1, N, 4]), per-level sizes,
    per-level candidate counts (> score_thresh) and detections of torchvision's stages (batch of 1)."""
    with torch.no_grad():
        features = model.backbone(image_list.tensors)
        feats = list(features.values())
        head = model.head(feats)
        anchors = model.anchor_generator(image_list, feats)
        sizes = [f.shape[2] * f.shape[3] * model.anchor_generator.num_anchors_per_location()[0] for f in feats]
        split = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
        dets = model.postprocess_detections(split, [list(a.split(sizes)) for a in anchors], image_list.image_sizes)
        counts = [int((torch.sigmoid(x) > model.score_thresh).sum()) for x in split["cls_logits"]]
    return features, head, sizes, counts, dets[0]


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reference_model(coco128_root):
    return _retinanet_reference(coco128_root)


@pytest.fixture(scope="module")
def converted(reference_model):
    """(variables, meta, config, model): classes 1..90 (class c = torchvision label c + 1), config from the meta."""
    variables, meta = convert_retinanet_resnet50_fpn(reference_model.state_dict(), norm_eps=1e-5,
                                                     source="retinanet_resnet50_fpn (seed 0)")
    config = load_config(CONFIG)
    apply_meta_to_config(config, meta, meta["source"])
    assert config.model.num_classes == 90 and config.model.backbone.norm_eps == 1e-5
    assert config.model.fpn.p6p7_in == "P5"
    return variables, meta, config, build_detector(config.model, meta["num_classes"])


@pytest.fixture(scope="module")
def parity(coco128_root, reference_model, converted):
    """Runs torchvision and the three jaxdet paths on every image; keeps small outputs and error numbers."""
    variables, _, _, model = converted

    end_to_end = _end_to_end(model)

    def stages(module, features, image_size, canvas_hw):
        """The RetinaNet.__call__ composition after the FPN: head, anchors, post-processing."""
        logits, deltas = module.head([features[k] for k in LEVELS])
        dets = module.detect(logits, deltas, module.anchors(canvas_hw, features), image_size)
        return jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1), dets

    def post_only(module, logits, deltas, image_size, canvas_hw, shapes):
        """Post-processing alone on given head outputs [1, N, C], [1, N, 4] (anchors from the level shapes)."""
        features = {k: jnp.zeros((1, h, w, 1)) for k, (h, w) in zip(LEVELS, shapes)}
        sizes = np.cumsum([0] + [9 * h * w for h, w in shapes])
        cut = lambda x: [x[:, sizes[i]:sizes[i + 1]] for i in range(len(shapes))]
        return module.detect(cut(logits), cut(deltas), module.anchors(canvas_hw, features), image_size)

    run_stages = jax.jit(lambda v, f, s, c: model.apply(v, f, s, c, method=stages), static_argnums=(3,))
    run_post = jax.jit(lambda v, l, d, s, c, sh: model.apply(v, l, d, s, c, sh, method=post_only),
                       static_argnums=(4, 5))

    out = []
    for idx, name in enumerate(IMAGES):
        image, image_list = _torchvision_input(reference_model, coco128_root, name)
        feats_torch, head_t, sizes, counts, dets_t = _run_torchvision(reference_model, image_list)
        post_t = _postprocess(reference_model, dets_t, image_list, image)
        canvas, image_size, batch = _jaxdet_input(image_list)

        dets_j, inter = jax.device_get(end_to_end(variables, batch))
        feats_j = inter["intermediates"]["features"][0]
        feats_t = _nhwc(feats_torch, TV_LEVELS_P3_P7)
        feat_err = _feature_errors(feats_j, feats_t, LEVELS)

        logits_t = head_t["cls_logits"].numpy()[..., 1:]  # our classes 1..90
        deltas_t = head_t["bbox_regression"].numpy()
        shapes = tuple(feats_t[k].shape[:2] for k in LEVELS)
        post_dets = jax.device_get(run_post(variables, logits_t, deltas_t, image_size, canvas, shapes))
        st_logits, st_deltas, st_dets = jax.device_get(run_stages(
            variables, {k: jnp.asarray(v[None]) for k, v in feats_t.items()}, image_size, canvas))
        head_err = {"logits": (float(np.abs(st_logits - logits_t).max()), float(np.abs(logits_t).max())),
                    "deltas": (float(np.abs(st_deltas - deltas_t).max()), float(np.abs(deltas_t).max()))}
        first = lambda d: {k: np.asarray(v)[0] for k, v in d.items()}
        rec = {
            "name": name, "image_id": int(name[:-4]), "orig_size": tuple(image.shape[1:]),
            "image_size": image_size[0], "canvas": canvas, "feat_err": feat_err, "head_err": head_err,
            "counts": counts, "sizes": sizes,
            "tv": {"dets": _np(dets_t), "post": _np(post_t)},
            "e2e": {"dets": first(dets_j)},
            "stage": {"dets": first(st_dets)},
            "post": {"dets": first(post_dets)},
        }
        if idx == FLOAT64_IMAGE:
            rec["image_list"] = image_list
            rec["feats_t"], rec["feats_j"] = feats_t, {k: v[0] for k, v in feats_j.items()}
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------- parity tests
def test_reference_is_not_degenerate(parity, max_err):
    """Confident, spread outputs: the 300 cap reached on every image, > 1000 candidates on P3 (and on P4 for most
    images: the per-level top-1000 cut and torchvision's vanilla batched NMS), candidates on P5, many classes;
    top scores from ~0.15 to near saturation (image 9: 300 detections above 0.99, near-ties everywhere)."""
    for r in parity:
        scores = r["tv"]["dets"]["scores"]
        assert len(scores) == DETECTIONS and scores.min() > 0.05, (r["name"], scores[[0, -1]])
        assert r["counts"][0] > 1000, (r["name"], r["counts"])
        assert not (r["tv"]["dets"]["labels"] == 0).any()
    counts = np.array([r["counts"] for r in parity])
    max_err["candidates > 0.05 per level P3..P7, per image"] = counts.tolist()
    assert (counts[:, 1] > 1000).sum() >= 3 and (counts[:, 2] > 0).sum() >= 4 and (counts[:, 3] > 1000).any(), counts
    top = [r["tv"]["dets"]["scores"].max() for r in parity]
    assert min(top) < 0.3 and max(top) > 0.99, top
    assert len(np.unique(np.concatenate([r["tv"]["dets"]["labels"] for r in parity]))) >= 10
    assert {r["canvas"] for r in parity} == {(800, 1088)}


def test_fpn_features_match(parity, max_err):
    _assert_features_match(parity, FEATURE_REL_TOL, max_err)


def test_postprocess_matches_on_reference_head_outputs(parity, max_err):
    """jaxdet's post-processing (sigmoid, per-level threshold + top-1000, decode, clip, class-wise NMS, 300) on
    torchvision's own head outputs: the same detections, to float rounding."""
    for r in parity:
        _assert_same_up_to_ties(f"post-processing {r['name']}", _dets(r["tv"]["dets"]), _dets(r["post"]["dets"]),
                                POST_BOX_TOL, POST_SCORE_TOL, max_err, cap=DETECTIONS)


def test_head_and_detections_match_on_reference_features(parity, max_err):
    """jaxdet's head + anchors + post-processing on torchvision's FPN features: head outputs within 1e-4 of their
    scale, detections with the same classes, boxes within 0.01 px, scores within 1e-4."""
    for r in parity:
        for what, (diff, scale) in r["head_err"].items():
            assert diff <= HEAD_REL_TOL * scale, (r["name"], what, diff, scale)
            _record(max_err, f"stage head {what} (relative)", diff / scale)
        _assert_same_up_to_ties(f"stage detections {r['name']}", _dets(r["tv"]["dets"]), _dets(r["stage"]["dets"]),
                                STAGE_BOX_TOL, STAGE_SCORE_TOL, max_err, cap=DETECTIONS)


def test_end_to_end_detections_match(parity, max_err):
    """The converted model alone (pixels in): torchvision's detections up to the float32 rounding of the features."""
    for r in parity:
        _assert_same_up_to_ties(f"end-to-end detections {r['name']}", _dets(r["tv"]["dets"]),
                                _dets(r["e2e"]["dets"]), E2E_BOX_TOL, E2E_SCORE_TOL, max_err, cap=DETECTIONS)


def test_end_to_end_differences_are_float32_rounding(parity, reference_model, max_err):
    """torchvision run in float64 is the exact answer; jaxdet (float32) is no further from it than torchvision's
    own float32 run (within a factor 2), for features and detections."""
    r = parity[FLOAT64_IMAGE]
    feats64, _, _, _, dets64 = _run_torchvision(*_float64(reference_model, r["image_list"]))
    _assert_float64_features(feats64, r, TV_LEVELS_P3_P7, max_err)
    ref = tuple(np.asarray(x, np.float64) for x in _dets(_np(dets64)))
    errs = {}
    for who, d in (("torchvision float32", _dets(r["tv"]["dets"])), ("jaxdet", _dets(r["e2e"]["dets"]))):
        _, missing, extra, box_err, score_err = _match(*ref, *d, E2E_BOX_TOL, E2E_SCORE_TOL)
        cut = ref[1].min()  # near-ties at the 300 cut may differ in equal numbers
        assert len(missing) == len(extra) and all(ref[1][i] - cut <= E2E_SCORE_TOL for i in missing), (who, missing)
        errs[who] = (box_err, score_err)
    max_err["float64 reference: detections (box px, score) of torchvision float32 / jaxdet"] = errs
    assert errs["torchvision float32"][0] < E2E_BOX_TOL and errs["torchvision float32"][1] < E2E_SCORE_TOL
    assert errs["jaxdet"][0] <= 2 * max(errs["torchvision float32"][0], 1e-3)
    assert errs["jaxdet"][1] <= 2 * max(errs["torchvision float32"][1], 1e-5)


def test_coco_ap_matches(parity, coco128_root, max_err):
    """Detections in original-image pixels (torchvision's ``transform.postprocess`` vs jaxdet's
    ``detections_to_coco``) agree box by box, and pycocotools' AP is equal within 0.1 on a pseudo ground truth
    (torchvision's detections, boxes jittered; random weights detect nothing real) and on coco128's."""
    gt_json = coco128_root / "annotations" / "instances_train2017.json"
    categories = json.loads(gt_json.read_text())["categories"]
    for r in parity:
        _assert_original_pixel_detections_match(r, E2E_BOX_TOL, E2E_SCORE_TOL, max_err,
                                                cap_score=r["tv"]["dets"]["scores"].min())
    pseudo_gt, n_gt = _pseudo_ground_truth(parity, categories)
    assert n_gt > 200
    _assert_box_aps_match(parity, (("pseudo", pseudo_gt), ("coco128", str(gt_json))), max_err)


# ----------------------------------------------------------------------------------------------- converter
def test_converted_tree_is_the_models(converted):
    variables, meta, _, model = converted
    _check_converted_tree(variables, model, "converted retinanet")
    assert meta["arch"] == "retinanet_resnet50_fpn" and meta["format"] == "torchvision"
    assert meta["category_ids"] == list(range(1, 91)) and meta["num_classes"] == 90
    assert meta["class_names"][0] == "person" and meta["class_names"][11] == "N/A (id 12)"
    assert meta["config_overrides"] == {
        "model.num_classes": 90, "model.pixel_mean": [123.675, 116.28, 103.53],
        "model.pixel_std": [58.395, 57.12, 57.375], "input.format": "RGB", "model.backbone.norm_eps": 1e-5,
        "model.backbone.stride_in_1x1": False, "model.fpn.p6p7_in": "P5"}
    json.dumps(meta)
    # an R-CNN config has no P6/P7 switch: loading RetinaNet weights into it fails loudly
    with pytest.raises(ValueError, match="model.fpn.p6p7_in"):
        apply_meta_to_config(load_config(REPO / "configs" / "faster_rcnn.py"), meta, "retinanet weights")


def test_80_class_selection_is_per_anchor(reference_model):
    sd = reference_model.state_dict()
    v, meta = convert_retinanet_resnet50_fpn(sd, category_ids=COCO_CATEGORY_IDS, class_names=COCO_CLASS_NAMES)
    cls = v["params"]["head"]["classification_head"]["cls_logits"]
    w = sd["head.classification_head.cls_logits.weight"].numpy()   # [9 * 91, 256, 3, 3]
    b = sd["head.classification_head.cls_logits.bias"].numpy()
    assert cls["kernel"].shape == (3, 3, 256, 9 * 80) and cls["bias"].shape == (9 * 80,)
    # hand-picked: anchor 0 'person' (id 1) -> channel 0; anchor 4 'stop sign' (id 13, class 11) -> 4 * 80 + 11
    # from torchvision channel 4 * 91 + 13; anchor 8 'toothbrush' (id 90, class 79) -> 719 from 8 * 91 + 90 = 818
    for ours, theirs in ((0, 1), (4 * 80 + 11, 4 * 91 + 13), (719, 818)):
        np.testing.assert_array_equal(cls["kernel"][..., ours], w[theirs].transpose(1, 2, 0))
        assert cls["bias"][ours] == b[theirs]
    assert meta["num_classes"] == 80 and meta["class_names"][11] == "stop sign"
    reg = v["params"]["head"]["regression_head"]["bbox_reg"]
    np.testing.assert_array_equal(reg["kernel"], sd["head.regression_head.bbox_reg.weight"].numpy().transpose(2, 3, 1, 0))


def test_converter_key_styles_and_errors(reference_model):
    sd = {k: v.numpy() for k, v in reference_model.state_dict().items()}
    expected, _ = convert_retinanet_resnet50_fpn(sd, norm_eps=1e-5)
    # torchvision < 0.13 layout (the published retinanet_resnet50_fpn_coco-eeacb38b.pth): conv.{2i}.weight
    legacy = {}
    for k, v in sd.items():
        for sub in ("classification_head", "regression_head"):
            for i in range(4):
                k = k.replace(f"head.{sub}.conv.{i}.0.", f"head.{sub}.conv.{2 * i}.")
        legacy[k] = v
    assert "head.classification_head.conv.6.weight" in legacy
    got, _ = convert_retinanet_resnet50_fpn(legacy, norm_eps=1e-5)
    flat = dict(jax.tree_util.tree_leaves_with_path(got))
    for path, value in jax.tree_util.tree_leaves_with_path(expected):
        np.testing.assert_array_equal(flat[path], value, err_msg=jax.tree_util.keystr(path))
    src = "my_weights.pth"
    with pytest.raises(ValueError, match="mixed key styles"):
        convert_retinanet_resnet50_fpn(dict(sd, **{"head.regression_head.conv.2.weight": sd[
            "head.regression_head.conv.1.0.weight"]}), source=src)
    with pytest.raises(ValueError, match=r"my_weights\.pth.*missing keys.*bbox_reg\.bias"):
        convert_retinanet_resnet50_fpn({k: v for k, v in sd.items() if k != "head.regression_head.bbox_reg.bias"},
                                       source=src)
    with pytest.raises(ValueError, match=r"my_weights\.pth.*unexpected keys.*rpn\.head\.conv"):
        convert_retinanet_resnet50_fpn(dict(sd, **{"rpn.head.conv.weight": np.zeros(3)}), source=src)
    with pytest.raises(ValueError, match=r"cls_logits\.bias has shape \(10,\)"):
        convert_retinanet_resnet50_fpn(dict(sd, **{"head.classification_head.cls_logits.bias": np.zeros(10)}),
                                       source=src)
    with pytest.raises(ValueError, match=r"category_ids \[91\] are outside 0\.\.90"):
        convert_retinanet_resnet50_fpn(sd, category_ids=[1, 91], source=src)
    with pytest.raises(ValueError, match="duplicate"):
        convert_retinanet_resnet50_fpn(sd, category_ids=[3, 3], source=src)
    with pytest.raises(ValueError, match="2 class_names for 1 category_ids"):
        convert_retinanet_resnet50_fpn(sd, category_ids=[1], class_names=["a", "b"], source=src)
    torch.manual_seed(0)
    frcnn = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(ValueError, match="fasterrcnn.pth"):
        convert_retinanet_resnet50_fpn(frcnn, source="fasterrcnn.pth")
    bad_fpn = {k: v for k, v in sd.items() if "extra_blocks" not in k}
    with pytest.raises(ValueError, match="LastLevelP6P7"):
        convert_retinanet_resnet50_fpn(bad_fpn, source=src)
