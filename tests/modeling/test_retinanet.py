"""RetinaNet pieces against torchvision (``torchvision/models/detection/retinanet.py``) on the same inputs:
anchors (``AnchorGenerator`` with the 9-anchor setup), the head's layout (``RetinaNetHead`` with converted
weights), losses (``RetinaNet.compute_loss``), post-processing (``RetinaNet.postprocess_detections``), and the
compile-once contract of the train and predict steps with a tiny backbone on real coco128 batches."""
from __future__ import annotations

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead  # noqa: E402
from torchvision.models.detection.retinanet import _default_anchorgen  # noqa: E402

from checkpoints_convert.torchvision_retinanet import convert_retinanet_resnet50_fpn  # noqa: E402
from jaxdet.config import load_config  # noqa: E402
from jaxdet.data.pipeline import make_eval_iterator, make_train_iterator  # noqa: E402
from jaxdet.engine import parallel  # noqa: E402
from jaxdet.engine.bootstrap import init_variables, load_datasets  # noqa: E402
from jaxdet.engine.optim import build_optimizer  # noqa: E402
from jaxdet.engine.state import create_train_state  # noqa: E402
from jaxdet.engine.steps import make_predict_step, make_train_step  # noqa: E402
from jaxdet.modeling.build import build_detector, trainable_mask  # noqa: E402
from jaxdet.modeling.detectors.retinanet import DEFAULT_ANCHOR_SIZES, LEVELS, RetinaNet  # noqa: E402
from jaxdet.modeling.heads import retinanet as head_lib  # noqa: E402
from jaxdet.ops.anchors import multilevel_anchors  # noqa: E402
from tests.engine.tiny import REPO, TINY_OVERRIDES  # noqa: E402

torch.set_num_threads(1)

#: a small canvas and its P3..P7 sizes (ceil halving from stride 8), with torchvision's strides canvas // size
CANVAS = (160, 224)
SHAPES = [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
NUM_CLASSES = 5


def _anchors_np(canvas=CANVAS, shapes=SHAPES):
    strides = [(canvas[0] // h, canvas[1] // w) for h, w in shapes]
    return multilevel_anchors(shapes, strides, DEFAULT_ANCHOR_SIZES, (0.5, 1.0, 2.0))


class _NoBackbone(torch.nn.Module):
    out_channels = 8


def _tv_retinanet(**kw):
    """torchvision's RetinaNet module, for its loss and post-processing methods (label k = our class k)."""
    torch.manual_seed(0)
    return TVRetinaNet(_NoBackbone(), num_classes=NUM_CLASSES, **kw).eval()


# ----------------------------------------------------------------------------------------------- anchors
def test_default_anchor_sizes_are_torchvisions():
    assert DEFAULT_ANCHOR_SIZES == tuple(_default_anchorgen().sizes)
    assert DEFAULT_ANCHOR_SIZES[0] == (32, 40, 50) and DEFAULT_ANCHOR_SIZES[4] == (512, 645, 812)
    config = load_config(os.path.join(REPO, "configs", "retinanet.py"))
    assert tuple(map(tuple, config.model.anchor.sizes)) == DEFAULT_ANCHOR_SIZES


@pytest.mark.parametrize("canvas", [(800, 1088), (1088, 800), CANVAS])
def test_anchors_match_torchvision_anchor_generator(canvas):
    """9 anchors per location on P3..P7, including torchvision's uneven strides of P6/P7 (800 // 13 = 61 ...)."""
    h, w = -(-canvas[0] // 8), -(-canvas[1] // 8)
    shapes = [(h, w)]
    for _ in range(4):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    model = RetinaNet(backbone=None, neck=None, num_classes=3)
    features = {k: jnp.zeros((1, hh, ww, 1)) for k, (hh, ww) in zip(LEVELS, shapes)}
    ours = np.concatenate([np.asarray(a) for a in model.anchors(canvas, features)])
    gen = _default_anchorgen()
    image_list = ImageList(torch.zeros(1, 3, *canvas), [canvas])
    ref = gen(image_list, [torch.zeros(1, 1, hh, ww) for hh, ww in shapes])[0].numpy()
    assert ours.shape == ref.shape == (9 * sum(hh * ww for hh, ww in shapes), 4)
    np.testing.assert_array_equal(ours, ref)


# ----------------------------------------------------------------------------------------------- head
def test_head_matches_torchvision_head_with_converted_weights():
    """RetinaNetHead layout: (y, x, anchor) rows, channel a * K + k, 4 convs + ReLU, prior bias; the converter's
    per-anchor class selection keeps output ``ids[c]`` of every anchor as class c."""
    torch.manual_seed(0)
    ch, k = 16, 7
    tv_head = TVRetinaNetHead(ch, 9, k).eval()
    with torch.no_grad():  # random biases so that they matter; the class bias keeps its prior around -4.6
        for name, p in tv_head.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(10.0)
    sd = {f"head.{k_}": v for k_, v in tv_head.state_dict().items()}
    ids = [5, 0, 2]
    head_vars = _convert_head_only(sd, ids)
    feats = [torch.randn(2, ch, h, w, generator=torch.Generator().manual_seed(h)) for h, w in [(6, 5), (3, 3)]]
    with torch.no_grad():
        ref = tv_head(feats)
    head = head_lib.RetinaNetHead(num_anchors=9, num_classes=len(ids))
    logits, deltas = head.apply({"params": head_vars},
                                [jnp.asarray(f.numpy().transpose(0, 2, 3, 1)) for f in feats])
    np.testing.assert_allclose(np.concatenate(logits, 1), ref["cls_logits"].numpy()[..., ids], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(deltas, 1), ref["bbox_regression"].numpy(), rtol=1e-5, atol=1e-5)
    # freshly initialised: every logit starts at the prior, -log(99)
    init = head.init(jax.random.key(0), [jnp.zeros((1, 2, 2, ch))])["params"]
    np.testing.assert_allclose(init["classification_head"]["cls_logits"]["bias"], -np.log(99.0), rtol=1e-6)
    assert init["regression_head"]["bbox_reg"]["kernel"].shape == (3, 3, ch, 36)


@functools.lru_cache(maxsize=1)
def _backbone_state_dict():
    torch.manual_seed(0)
    sd = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    return {k: v for k, v in sd.items() if k.startswith("backbone.")}


def _convert_head_only(head_sd, ids):
    """Runs the converter on a head inside a complete state_dict (R-50 body, FPN shrunk to the head's channels)."""
    ch = head_sd["head.classification_head.conv.0.0.weight"].shape[0]
    sd = dict(_backbone_state_dict())
    for k, v in list(sd.items()):  # shrink the FPN to the head's channels (only shapes matter here)
        if k.startswith("backbone.fpn."):
            shape = list(v.shape)
            shape[0] = ch
            if len(shape) == 4 and ("extra_blocks" in k or "layer_blocks" in k):
                shape[1] = ch
            sd[k] = torch.zeros(shape)
    sd.update(head_sd)
    variables, _ = convert_retinanet_resnet50_fpn(sd, category_ids=ids, norm_eps=1e-5)
    return variables["params"]["head"]


# ----------------------------------------------------------------------------------------------- losses
def _loss_inputs(seed=0):
    rng = np.random.default_rng(seed)
    anchors = np.concatenate(_anchors_np())
    n, b, m = anchors.shape[0], 3, 6
    counts = [4, 1, 0]  # image 2 has no objects: all its anchors are background
    gt_boxes = np.zeros((b, m, 4), np.float32)
    gt_classes = np.zeros((b, m), np.int32)
    gt_valid = np.zeros((b, m), bool)
    for i, c in enumerate(counts):
        xy = rng.uniform(0, [CANVAS[1] - 40, CANVAS[0] - 40], (c, 2))
        wh = rng.uniform(12, 120, (c, 2))
        gt_boxes[i, :c] = np.concatenate([xy, np.minimum(xy + wh, [CANVAS[1], CANVAS[0]])], 1)
        gt_classes[i, :c] = rng.integers(0, NUM_CLASSES, c)
        gt_valid[i, :c] = True
    gt_boxes[0, 5] = [3, 3, 50, 60]  # a padding row with a box: must be ignored
    logits = rng.normal(-1.0, 2.0, (b, n, NUM_CLASSES)).astype(np.float32)
    deltas = rng.normal(0.0, 0.5, (b, n, 4)).astype(np.float32)
    return anchors, logits, deltas, gt_boxes, gt_classes, gt_valid


def test_losses_match_torchvision_compute_loss():
    anchors, logits, deltas, gt_boxes, gt_classes, gt_valid = _loss_inputs()
    tv = _tv_retinanet()
    targets = [{"boxes": torch.from_numpy(gt_boxes[i][gt_valid[i]]),
                "labels": torch.from_numpy(gt_classes[i][gt_valid[i]]).long()} for i in range(len(gt_boxes))]
    head_outputs = {"cls_logits": torch.from_numpy(logits), "bbox_regression": torch.from_numpy(deltas)}
    tv_anchors = [torch.from_numpy(anchors)] * len(gt_boxes)
    ref = tv.compute_loss(targets, head_outputs, tv_anchors)
    # the case exercises foreground, ignored (-2) and low-quality matches
    from torchvision.ops import box_iou

    m0 = tv.proposal_matcher(box_iou(targets[0]["boxes"], tv_anchors[0]))
    iou_max = box_iou(targets[0]["boxes"], tv_anchors[0]).max(0).values
    assert (m0 == -2).sum() > 10 and (m0 >= 0).sum() > 10 and ((m0 >= 0) & (iou_max < 0.5)).any()

    cfg = head_lib.RetinaNetConfig()
    ours = jax.jit(lambda *a: head_lib.retinanet_losses(*a, cfg))(
        logits, deltas, anchors, gt_boxes, gt_classes, gt_valid)
    np.testing.assert_allclose(float(ours["loss_cls"]), float(ref["classification"]), rtol=2e-5)
    np.testing.assert_allclose(float(ours["loss_box_reg"]), float(ref["bbox_regression"]), rtol=2e-5)
    assert float(ours["loss_box_reg"]) > 0

    grads = jax.grad(lambda l, d: sum(head_lib.retinanet_losses(l, d, anchors, gt_boxes, gt_classes, gt_valid,
                                                                cfg).values()), argnums=(0, 1))(logits, deltas)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # torchvision's gradient too (the loss is the same function, so is its gradient)
    lt, dt = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(deltas).requires_grad_()
    ref = tv.compute_loss(targets, {"cls_logits": lt, "bbox_regression": dt}, tv_anchors)
    (ref["classification"] + ref["bbox_regression"]).backward()
    np.testing.assert_allclose(np.asarray(grads[0]), lt.grad.numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np.asarray(grads[1]), dt.grad.numpy(), rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------------------------- postprocess
@pytest.mark.parametrize("score_thresh,center", [(0.05, -2.0), (0.8, -3.0)])
def test_postprocess_matches_torchvision(score_thresh, center):
    """Per-level threshold + top-1000 (P3 has more candidates than that), decode, clip, class-wise NMS, 300
    detections. The second case has fewer than 1000 candidates, where torchvision's CPU batched_nms uses the
    coordinate trick (``nms_coordinate_trick="torchvision_cpu"`` follows it)."""
    rng = np.random.default_rng(1)
    anchors = _anchors_np()
    sizes = [a.shape[0] for a in anchors]
    n = sum(sizes)
    logits = rng.normal(center, 2.0, (2, n, NUM_CLASSES)).astype(np.float32)
    deltas = rng.normal(0.0, 0.3, (2, n, 4)).astype(np.float32)
    image_sizes = [(150, 200), CANVAS]
    tv = _tv_retinanet(score_thresh=score_thresh)
    split = lambda x: list(torch.from_numpy(x).split(sizes, dim=1))
    with torch.no_grad():
        ref = tv.postprocess_detections({"cls_logits": split(logits), "bbox_regression": split(deltas)},
                                        [[torch.from_numpy(a) for a in anchors]] * 2, image_sizes)
    cfg = head_lib.RetinaNetConfig(score_thresh_test=score_thresh, nms_coordinate_trick="torchvision_cpu")
    offsets = np.cumsum([0] + sizes)
    per_level = lambda x: [x[:, offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    ours = jax.device_get(jax.jit(lambda l, d, s: jax.vmap(
        lambda li, di, si: head_lib.postprocess_detections(li, di, [jnp.asarray(a) for a in anchors], si, cfg))(
        l, d, s))(per_level(logits), per_level(deltas), np.asarray(image_sizes, np.int32)))
    assert ours["boxes"].shape == (2, 300, 4) and ours["classes"].dtype == np.int32
    above = [(1 / (1 + np.exp(-x)) > score_thresh).sum(axis=(1, 2)) for x in per_level(logits)]
    candidates = sum(np.minimum(a, 1000) for a in above)  # what torchvision's batched_nms gets per image
    assert (above[0] > 1000).all() or score_thresh > 0.05  # the per-level top-1000 cut is exercised
    assert (candidates > 1000).all() if score_thresh == 0.05 else (candidates <= 1000).all()
    for i, r in enumerate(ref):
        d = len(r["scores"])
        assert 0 < d and ours["valid"][i].sum() == d and ours["valid"][i, :d].all()
        np.testing.assert_array_equal(ours["classes"][i, :d], r["labels"].numpy())
        np.testing.assert_allclose(ours["scores"][i, :d], r["scores"].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours["boxes"][i, :d], r["boxes"].numpy(), rtol=0, atol=1e-4)
        assert ours["boxes"][i, :d, 2].max() <= image_sizes[i][1] and ours["boxes"][i, :d, 3].max() <= image_sizes[i][0]
    assert len(ref[0]["scores"]) == 300 or score_thresh > 0.05  # the 300 cap is reached in the first case


# ----------------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def tiny(coco128_root, tmp_path_factory):
    overrides = [f"data.root={coco128_root}", f"output_dir={tmp_path_factory.mktemp('run')}", *TINY_OVERRIDES,
                 "model.backbone.depth=18", "model.backbone.norm=bn", "model.backbone.freeze_at=0",
                 "model.retinanet.topk_candidates_test=100", "model.retinanet.detections_per_image=20",
                 "solver.base_lr=0.01", "solver.warmup_iters=0"]
    config = load_config(os.path.join(REPO, "configs", "retinanet.py"), overrides)
    train_ds, val_ds = load_datasets(config)
    model = build_detector(config.model, train_ds.num_classes)
    variables = init_variables(model, config, 0)
    kw = dict(batch_size=2, canvases=config.input.canvases, max_instances=config.data.max_instances)
    train_batches = [b for _, b in itertools.islice(make_train_iterator(
        train_ds, min_size_train=config.input.min_size_train, max_size_train=config.input.max_size_train, seed=0,
        **kw), 2)]
    eval_batches = [b for _, b in itertools.islice(make_eval_iterator(
        val_ds, min_size_test=config.input.min_size_test, max_size_test=config.input.max_size_test, **kw), 2)]
    return config, model, variables, train_batches, eval_batches


def test_initialize_gives_the_full_variable_tree(tiny):
    _, model, variables, batches, _ = tiny
    batch = {k: batches[0][k] for k in ("image", "image_size")}
    full = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), dict(t))
    assert shapes(full) == shapes(variables)
    assert set(variables["params"]) == {"backbone", "neck", "head"}
    assert set(variables["params"]["neck"]) == {"inner_0", "inner_1", "inner_2", "layer_0", "layer_1", "layer_2",
                                                "p6", "p7"}


def test_train_and_predict_compile_once_and_learn(tiny):
    config, model, variables, train_batches, eval_batches = tiny
    assert not np.array_equal(train_batches[0]["image_id"], train_batches[1]["image_id"])
    assert train_batches[0]["gt_valid"].any()
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    state = create_train_state(variables, tx, jax.random.key_data(jax.random.key(0)))
    step = make_train_step(model, tx, schedule, mesh)
    st = parallel.replicate(state, mesh)
    losses = []
    for b in [train_batches[0], train_batches[1]] + [train_batches[0]] * 3:
        st, metrics = step(st, parallel.shard_batch(b, mesh))
        assert bool(metrics["finite"])
        if b is train_batches[0]:
            losses.append(float(metrics["loss_total"]))
    assert step._cache_size() == 1
    # the head starts at the 0.01 prior with std-0.01 weights, so the loss falls slowly, but steadily
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    out, _ = model.apply(jax.device_get(st.variables()), train_batches[0], train=True, mutable=["batch_stats"])
    assert set(out) == {"loss_cls", "loss_box_reg"}

    predict = make_predict_step(model, mesh)
    outs = [predict(st.variables(), parallel.shard_batch({k: b[k] for k in ("image", "image_size")}, mesh))
            for b in eval_batches]
    assert predict._cache_size() == 1
    o = jax.device_get(outs[0])
    assert o["boxes"].shape == (2, 20, 4) and o["scores"].shape == (2, 20) and o["valid"].dtype == bool
    assert o["classes"].dtype == np.int32 and (o["classes"] < model.num_classes).all()
