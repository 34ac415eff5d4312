"""FCOS pieces against torchvision on the same inputs: anchors, target assignment and losses
(``FCOS.compute_loss`` / ``FCOSHead.compute_loss``), post-processing (``FCOS.postprocess_detections``), the GIoU
loss; and the detector's train and inference steps compiling once per canvas on real coco128 batches."""
from __future__ import annotations

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from torchvision.models.detection import fcos as tv_fcos  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from jaxdet.config import load_config  # noqa: E402
from jaxdet.modeling.build import build_detector  # noqa: E402
from jaxdet.modeling.detectors.fcos import FCOS, HEAD_LEVELS  # noqa: E402
from jaxdet.modeling.heads import fcos as fcos_lib  # noqa: E402
from jaxdet.modeling.losses import generalized_box_iou_loss  # noqa: E402
from tests.engine.tiny import REPO  # noqa: E402

CANVAS = (320, 448)   # P7 is 3x4: torchvision's strides there are 106 x 112, not 128
LEVEL_SHAPES = ((40, 56), (20, 28), (10, 14), (5, 7), (3, 4))
NUM_CLASSES = 7


def _tv_anchors():
    gen = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    feats = [torch.zeros(1, 1, h, w) for h, w in LEVEL_SHAPES]
    return gen(ImageList(torch.zeros(1, 3, *CANVAS), [CANVAS]), feats)[0]


def _jax_anchors():
    model = FCOS(backbone=None, neck=None, num_classes=NUM_CLASSES)
    feats = {k: jnp.zeros((1, h, w, 1)) for k, (h, w) in zip(HEAD_LEVELS, LEVEL_SHAPES)}
    return model.anchors(CANVAS, feats)


def _ground_truth():
    """Two images padded to 16 boxes. Image 0: boxes for every level (small ones for P3, a canvas-sized one for
    P7), overlapping boxes of equal area and of areas equal in float32 after ``1e8 - area`` (ties), a crowd box
    and padding. Image 1: only padding. Returns (jaxdet arrays, torchvision targets, jaxdet->torchvision index)."""
    boxes = np.zeros((2, 16, 4), np.float32)
    valid = np.zeros((2, 16), bool)
    crowd = np.zeros((2, 16), bool)
    rng = np.random.default_rng(0)
    b = [[10, 12, 40, 38], [30, 20, 90, 100], [100, 60, 260, 230], [5, 5, 440, 315], [200, 100, 330, 180],
         [205, 105, 335, 185],                                 # same area as the previous box, shifted
         [150, 40, 250, 139.3],                                # area 9930 and ...
         [152, 42, 252, 141.25],                               # ... 9925: equal as float32(1e8 - area)
         [300, 10, 420, 300], [60, 150, 140, 310]]
    for _ in range(4):
        x, y = rng.uniform(0, 380, 2)
        w, h = rng.uniform(6, 200, 2)
        b.append([x, y, min(x + w, 447), min(y + h, 319)])
    boxes[0, : len(b)] = b
    valid[0, : len(b)] = True
    crowd[0, 9] = True   # the crowd box is never a positive; torchvision does not see it
    classes = rng.integers(0, NUM_CLASSES, (2, 16)).astype(np.int32)
    keep = np.nonzero(valid[0] & ~crowd[0])[0]
    to_tv = -np.ones(16, np.int64)
    to_tv[keep] = np.arange(len(keep))
    targets = [{"boxes": torch.from_numpy(boxes[0, keep]), "labels": torch.from_numpy(classes[0, keep]).long()},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return (boxes, classes, valid, crowd), targets, to_tv


def _head_outputs(n, seed):
    rng = np.random.default_rng(seed)
    cls = rng.normal(-2.0, 2.0, (2, n, NUM_CLASSES)).astype(np.float32)
    reg = np.maximum(rng.normal(1.5, 1.5, (2, n, 4)), 0).astype(np.float32)
    ctr = rng.normal(0.0, 2.0, (2, n)).astype(np.float32)
    return cls, reg, ctr


# --------------------------------------------------------------------------------------------------- losses
def test_giou_loss_matches_torchvision():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (64, 2))
    b = rng.uniform(0, 50, (64, 2))
    boxes1 = np.concatenate([a, a + rng.uniform(0.5, 40, (64, 2))], 1).astype(np.float32)
    boxes2 = np.concatenate([b, b + rng.uniform(0.5, 40, (64, 2))], 1).astype(np.float32)
    boxes2[:4] = boxes1[:4]                         # identical: loss 0
    boxes2[4] = [200, 200, 210, 220]                # disjoint: loss > 1
    boxes1[5], boxes2[5] = [0, 0, 10, 10], [2, 2, 4, 4]  # nested
    expected = torchvision.ops.generalized_box_iou_loss(torch.from_numpy(boxes1), torch.from_numpy(boxes2)).numpy()
    got = np.asarray(generalized_box_iou_loss(jnp.asarray(boxes1), jnp.asarray(boxes2)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(got[:4]) < 1e-6) and got[4] > 1.0
    # hand case: [0,0,2,2] vs [1,0,3,2]: IoU 2/6, enclosing 6 = union -> loss 1 - 1/3
    hand = generalized_box_iou_loss(jnp.asarray([0.0, 0, 2, 2]), jnp.asarray([1.0, 0, 3, 2]))
    np.testing.assert_allclose(float(hand), 2.0 / 3.0, rtol=1e-6)


def test_anchors_match_torchvision():
    ours = _jax_anchors()
    ref = _tv_anchors()
    assert [a.shape[0] for a in ours] == [h * w for h, w in LEVEL_SHAPES]
    np.testing.assert_array_equal(np.concatenate([np.asarray(a) for a in ours]), ref.numpy())


@pytest.fixture(scope="module")
def loss_case():
    """torchvision's matched indices and losses on one set of anchors, ground truth and head outputs."""
    anchors = _tv_anchors()
    (boxes, classes, valid, crowd), targets, to_tv = _ground_truth()
    cls, reg, ctr = _head_outputs(anchors.shape[0], seed=1)
    head = tv_fcos.FCOSHead(32, 1, NUM_CLASSES)
    recorded = {}

    def compute_loss(targets_, head_outputs, anchors_, matched_idxs):
        recorded["matched"] = [m.numpy() for m in matched_idxs]
        return tv_fcos.FCOSHead.compute_loss(head, targets_, head_outputs, anchors_, matched_idxs)

    fake = types.SimpleNamespace(center_sampling_radius=1.5, head=types.SimpleNamespace(compute_loss=compute_loss))
    outputs = {"cls_logits": torch.from_numpy(cls), "bbox_regression": torch.from_numpy(reg),
               "bbox_ctrness": torch.from_numpy(ctr)[..., None]}
    with torch.no_grad():
        tv_losses = tv_fcos.FCOS.compute_loss(fake, targets, outputs, [anchors, anchors],
                                              [h * w for h, w in LEVEL_SHAPES])
    return {"anchors": anchors.numpy(), "gt": (boxes, classes, valid, crowd), "to_tv": to_tv,
            "outputs": (cls, reg, ctr), "tv_matched": recorded["matched"],
            "tv_losses": {k: float(v) for k, v in tv_losses.items()}}


def test_matching_matches_torchvision(loss_case):
    boxes, _, valid, crowd = loss_case["gt"]
    sizes = [h * w for h, w in LEVEL_SHAPES]
    match = jax.jit(jax.vmap(lambda b, v: fcos_lib.fcos_match(jnp.asarray(loss_case["anchors"]), sizes, b, v)))
    ours = np.asarray(match(jnp.asarray(boxes), jnp.asarray(valid & ~crowd)))
    to_tv = loss_case["to_tv"]
    mapped = np.where(ours >= 0, to_tv[np.maximum(ours, 0)], -1)
    for i in range(2):
        np.testing.assert_array_equal(mapped[i], loss_case["tv_matched"][i], err_msg=f"image {i}")
    assert np.all(ours[1] == -1)
    fg = ours[0][ours[0] >= 0]
    assert len(fg) > 50 and 9 not in fg           # many positives, none on the crowd box
    assert len(set(fg.tolist())) >= 9             # most boxes own points
    # the ties were exercised: points matching both boxes of a pair go to the lower index (4 of 4/5, equal
    # areas; 6 of 6/7 although 7 is smaller, since float32(1e8 - area) is equal)
    for first, second in ((4, 5), (6, 7)):
        alone = np.zeros_like(valid[0])
        alone[second] = True
        second_alone = np.asarray(match(jnp.asarray(boxes[:1]), jnp.asarray(alone[None])))[0]
        assert np.any((ours[0] == first) & (second_alone == second)), (first, second)
    level_of = np.repeat(np.arange(5), sizes)
    # P3..P6 all get positives (P7 needs a reach > 4 * 128 px, more than this canvas allows); every positive
    # of box 3 (nearly the whole canvas) is on P5 or P6 (scale ranges)
    assert set(level_of[ours[0] >= 0].tolist()) == {0, 1, 2, 3}
    assert set(level_of[ours[0] == 3].tolist()) == {2, 3}


def test_losses_match_torchvision(loss_case):
    boxes, classes, valid, crowd = loss_case["gt"]
    cls, reg, ctr = loss_case["outputs"]
    anchors = jnp.asarray(loss_case["anchors"])
    sizes = [h * w for h, w in LEVEL_SHAPES]
    cfg = fcos_lib.FCOSConfig()

    @jax.jit
    def run(cls, reg, ctr, boxes, classes, valid):
        matched = jax.vmap(lambda b, v: fcos_lib.fcos_match(anchors, sizes, b, v))(boxes, valid)
        return fcos_lib.fcos_losses(cls, reg, ctr, anchors, matched, boxes, classes, cfg)

    ours = run(cls, reg, ctr, boxes, classes, valid & ~crowd)
    ref = loss_case["tv_losses"]
    names = {"loss_cls": "classification", "loss_box_reg": "bbox_regression", "loss_centerness": "bbox_ctrness"}
    for k, tv_k in names.items():
        np.testing.assert_allclose(float(ours[k]), ref[tv_k], rtol=2e-6, err_msg=k)
    # gradients are finite although the background points see padding boxes
    grads = jax.grad(lambda c, r, t: sum(run(c, r, t, boxes, classes, valid & ~crowd).values()),
                     argnums=(0, 1, 2))(jnp.asarray(cls), jnp.asarray(reg), jnp.asarray(ctr))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # no foreground at all: torchvision divides by max(1, 0); box and centerness losses are 0
    empty = run(cls, reg, ctr, boxes, classes, np.zeros_like(valid))
    assert float(empty["loss_box_reg"]) == 0.0 and float(empty["loss_centerness"]) == 0.0
    assert float(empty["loss_cls"]) > 0


# --------------------------------------------------------------------------------------------------- inference
def test_postprocess_matches_torchvision():
    """Same head outputs and anchors: torchvision's thresholded per-level top-k, decoding, clipping, batched NMS
    and cap give our detections (classes exact, boxes and scores to float rounding). A small top-k (300) and cap
    (60) make both cuts bind; the image is smaller than the canvas so clipping matters."""
    anchors = _tv_anchors()
    sizes = [h * w for h, w in LEVEL_SHAPES]
    cls, reg, ctr = _head_outputs(anchors.shape[0], seed=2)
    reg *= 3.0   # boxes of a few anchor sizes: plenty of overlaps for the NMS
    image_sizes = [(300, 417), (320, 448)]
    cfg = fcos_lib.FCOSConfig(topk_candidates_test=300, detections_per_image=60)
    fake = types.SimpleNamespace(score_thresh=cfg.score_thresh_test, topk_candidates=cfg.topk_candidates_test,
                                 nms_thresh=cfg.nms_thresh_test, detections_per_img=cfg.detections_per_image,
                                 box_coder=torchvision.models.detection._utils.BoxLinearCoder(True))
    split = lambda x: list(torch.from_numpy(x).split(sizes, dim=1))
    with torch.no_grad():
        ref = tv_fcos.FCOS.postprocess_detections(
            fake, {"cls_logits": split(cls), "bbox_regression": split(reg), "bbox_ctrness": split(ctr[..., None])},
            [list(anchors.split(sizes))] * 2, image_sizes)

    a = [jnp.asarray(x) for x in np.split(anchors.numpy(), np.cumsum(sizes)[:-1])]
    lv = lambda x: [jnp.asarray(y) for y in np.split(x, np.cumsum(sizes)[:-1], axis=1)]
    ours = jax.jit(jax.vmap(lambda c, r, t, s: fcos_lib.postprocess_detections(c, r, t, a, s, cfg)))(
        lv(cls), lv(reg), lv(ctr), jnp.asarray(image_sizes, jnp.int32))
    ours = jax.device_get(ours)
    for i, r in enumerate(ref):
        n = len(r["scores"])
        assert n == 60 if i == 0 else n > 0
        v = ours["valid"][i]
        assert v.sum() == n and v[:n].all()
        np.testing.assert_array_equal(ours["classes"][i][:n], r["labels"].numpy())
        np.testing.assert_allclose(ours["scores"][i][:n], r["scores"].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours["boxes"][i][:n], r["boxes"].numpy(), rtol=0, atol=1e-4)
        assert np.all(ours["scores"][i][n:] == 0) and np.all(ours["boxes"][i][n:] == 0)
    assert ours["boxes"][0][:, 2].max() <= 417 and ours["boxes"][0][:, 3].max() <= 300


def test_postprocess_without_candidates():
    """Nothing above the threshold (the 0.01 prior of an untrained head): no valid detection, no NaN."""
    a = [jnp.asarray(x) for x in _jax_anchors()]
    cls = [jnp.full((x.shape[0], NUM_CLASSES), -4.6) for x in a]
    post = jax.jit(fcos_lib.postprocess_detections, static_argnums=5)
    out = post(cls, [jnp.ones((x.shape[0], 4)) for x in a], [jnp.zeros(x.shape[0]) for x in a], a,
               jnp.asarray(CANVAS), fcos_lib.FCOSConfig())
    assert not bool(out["valid"].any()) and bool(jnp.all(out["scores"] == 0))


# --------------------------------------------------------------------------------------------------- detector
TINY = ["data.synthetic=False", "data.num_workers=0",
        "data.train_json=annotations/instances_train2017.json", "data.train_images=train2017",
        "data.val_json=annotations/instances_val2017.json", "data.val_images=val2017",
        "input.canvases=((128,128),)", "input.min_size_train=(96,)", "input.max_size_train=128",
        "input.min_size_test=96", "input.max_size_test=128", "solver.ims_per_batch=2", "test.ims_per_batch=2",
        "data.max_instances=32", "model.fpn.out_channels=32", "model.backbone.depth=18",
        "model.backbone.width_multiplier=0.125",
        "model.fcos.topk_candidates_test=100", "model.fcos.detections_per_image=20",
        "solver.base_lr=0.01", "solver.warmup_iters=0"]


def test_config_and_builder(coco128_root):
    config = load_config(REPO + "/configs/fcos.py")
    assert config.model.meta_architecture == "FCOS" and "rpn" not in config.model
    model = build_detector(config.model, 80)
    assert isinstance(model, FCOS) and model.fcos == fcos_lib.FCOSConfig()
    assert model.neck.top_block == "p6p7" and model.neck.p6p7_in == "P5"
    bad = load_config(REPO + "/configs/fcos.py", ["model.anchor.aspect_ratios=(0.5,1.0,2.0)"])
    with pytest.raises(ValueError, match="aspect_ratios"):
        build_detector(bad.model, 80)


def test_train_and_predict_compile_once_per_canvas(coco128_root, tmp_path):
    from jaxdet.data.pipeline import make_eval_iterator, make_train_iterator
    from jaxdet.engine import parallel
    from jaxdet.engine.bootstrap import init_variables, load_datasets
    from jaxdet.engine.optim import build_optimizer
    from jaxdet.engine.state import create_train_state
    from jaxdet.engine.steps import make_predict_step, make_train_step
    from jaxdet.modeling.build import trainable_mask

    config = load_config(REPO + "/configs/fcos.py",
                         [f"data.root={coco128_root}", f"output_dir={tmp_path}", *TINY])
    train_ds, val_ds = load_datasets(config)
    model = build_detector(config.model, train_ds.num_classes)
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = init_variables(model, config, 0)
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    state = create_train_state(variables, tx, jax.random.key_data(jax.random.key(0)))
    kw = dict(batch_size=2, canvases=config.input.canvases, max_instances=config.data.max_instances)
    train_batches = [b for _, b in itertools.islice(make_train_iterator(
        train_ds, min_size_train=config.input.min_size_train, max_size_train=config.input.max_size_train, seed=0,
        **kw), 2)]
    eval_batches = [b for _, b in itertools.islice(make_eval_iterator(
        val_ds, min_size_test=config.input.min_size_test, max_size_test=config.input.max_size_test, **kw), 2)]
    assert not np.array_equal(train_batches[0]["image_id"], train_batches[1]["image_id"])
    assert all(b["gt_valid"].any() for b in train_batches)

    step = make_train_step(model, tx, schedule, mesh)
    st = parallel.replicate(state, mesh)
    for b in train_batches:
        st, metrics = step(st, parallel.shard_batch(b, mesh))
        assert bool(metrics["finite"])
        assert set(metrics) >= {"loss_cls", "loss_box_reg", "loss_centerness"}
        assert float(metrics["loss_box_reg"]) > 0   # the tiny canvas still has foreground points
    assert step._cache_size() == 1

    predict = make_predict_step(model, mesh)
    variables = st.variables()
    outs = [predict(variables, parallel.shard_batch({k: b[k] for k in ("image", "image_size")}, mesh))
            for b in eval_batches]
    assert predict._cache_size() == 1
    d = config.model.fcos.detections_per_image
    assert outs[0]["boxes"].shape == (2, d, 4) and outs[0]["valid"].dtype == bool
    assert outs[0]["classes"].dtype == jnp.int32 and outs[0]["scores"].shape == (2, d)
