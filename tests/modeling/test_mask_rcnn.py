"""MaskRCNN: the mask head and transposed-conv conversion against torch, ``branch_losses`` against torchvision's
``maskrcnn_loss``, and a tiny Mask R-CNN whose train step and inference compile once per canvas."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss

from checkpoints_convert.common import conv_oihw_to_hwio
from checkpoints_convert.torchvision_mask_rcnn import conv_transpose_to_flax
from jaxdet.config import load_config
from jaxdet.engine import parallel
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.modeling.build import build_detector, trainable_mask
from jaxdet.modeling.detectors.mask_rcnn import MaskRCNN
from jaxdet.modeling.heads.mask_head import MaskRCNNHead, mask_probabilities

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CANVAS = 128
MASK_SIZE = 16  # gt_masks S x S; the test boxes have side 16 px so that the crops are exact
#: quickstart-sized: a narrow ResNet-18 with trainable BatchNorm (a random ResNet-50 with frozen identity norms
#: overflows in the backward pass)
TINY = [
    "model.backbone.depth=18", "model.backbone.norm=bn", "model.backbone.freeze_at=0",
    "model.backbone.width_multiplier=0.125", "model.fpn.out_channels=32", "model.roi_heads.fc_dim=64",
    "model.mask_head.conv_dim=16", "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50", "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.topk_candidates_test=200", "model.roi_heads.detections_per_image=20",
    "solver.base_lr=0.01", "solver.warmup_iters=0", f"data.mask_size={MASK_SIZE}",
]
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny():
    config = load_config(os.path.join(REPO, "configs", "mask_rcnn.py"), TINY)
    model = build_detector(config.model, NUM_CLASSES)
    assert isinstance(model, MaskRCNN)
    batch = {"image": jnp.zeros((1, 64, 64, 3), jnp.uint8), "image_size": jnp.array([[64, 64]], jnp.int32)}
    variables = jax.jit(lambda k: model.init(k, batch, method=MaskRCNN.initialize))(jax.random.key(0))
    return config, model, jax.device_get(variables)


def _to_torch(x):
    """NHWC numpy -> NCHW torch."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------------------------- head
def test_conv_transpose_kernel_conversion_matches_torch():
    """torch ConvTranspose2d(k=2, s=2), weight (in, out, kh, kw) == flax ConvTranspose with the converted kernel;
    the unflipped transpose (the tempting mistake) is far off."""
    import flax.linen as nn

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(6, 5, 2, stride=2)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        ref = layer(x).numpy().transpose(0, 2, 3, 1)
    mod = nn.ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID")
    bias = layer.bias.detach().numpy()
    out = mod.apply({"params": {"kernel": conv_transpose_to_flax(layer.weight), "bias": bias}},
                    x.numpy().transpose(0, 2, 3, 1))
    assert out.shape == ref.shape == (2, 10, 14, 5)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)
    unflipped = np.ascontiguousarray(layer.weight.detach().numpy().transpose(2, 3, 0, 1))
    wrong = mod.apply({"params": {"kernel": unflipped, "bias": bias}}, x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(np.asarray(wrong) - ref).max() > 0.1


def test_mask_head_matches_torchvision_heads_and_predictor():
    """MaskRCNNHead == torchvision MaskRCNNHeads + MaskRCNNPredictor (+ maskrcnn_inference's class selection)."""
    torch.manual_seed(0)
    cin, dim, k = 8, 12, 4
    heads, pred = MaskRCNNHeads(cin, [dim] * 4, 1), MaskRCNNPredictor(dim, dim, k)
    pooled = torch.randn(6, cin, 14, 14)
    with torch.no_grad():
        ref = pred(heads(pooled))
    sd = {**{f"h.{n}": v for n, v in heads.state_dict().items()}, **{f"p.{n}": v for n, v in pred.state_dict().items()}}
    params = {f"mask_fcn{i + 1}": {"kernel": conv_oihw_to_hwio(sd[f"h.{i}.0.weight"]),
                                   "bias": sd[f"h.{i}.0.bias"].numpy()} for i in range(4)}
    params["conv5_mask"] = {"kernel": conv_transpose_to_flax(sd["p.conv5_mask.weight"]),
                            "bias": sd["p.conv5_mask.bias"].numpy()}
    params["mask_fcn_logits"] = {"kernel": conv_oihw_to_hwio(sd["p.mask_fcn_logits.weight"]),
                                 "bias": sd["p.mask_fcn_logits.bias"].numpy()}
    head = MaskRCNNHead(num_classes=k - 1, conv_dim=dim)
    out = head.apply({"params": params}, pooled.numpy().transpose(0, 2, 3, 1).reshape(2, 3, 14, 14, cin))
    assert out.shape == (2, 3, 28, 28, k) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out).reshape(6, 28, 28, k), ref.numpy().transpose(0, 2, 3, 1),
                               rtol=0, atol=1e-5 * float(ref.abs().max()))
    labels = torch.tensor([1, 3, 2, 1, 1, 2])
    probs_ref = maskrcnn_inference(ref, [labels])[0][:, 0].numpy()
    valid = np.array([[True, True, True], [True, False, True]])
    probs = np.asarray(mask_probabilities(out, jnp.asarray(labels.numpy().reshape(2, 3) - 1), valid)).reshape(6, 28, 28)
    np.testing.assert_allclose(probs[valid.reshape(-1)], probs_ref[valid.reshape(-1)], rtol=0, atol=1e-6)
    assert np.all(probs[~valid.reshape(-1)] == 0)


# ----------------------------------------------------------------------------------------------- losses
def _scene(rng, image_hw, num_gt, num_pad):
    """Integer square gt boxes of side MASK_SIZE inside the image, random full-image masks inside them
    (the S x S crop is exact), classes 0..C-1; ``num_pad`` padding slots at the end."""
    h, w = image_hw
    boxes = np.zeros((num_gt + num_pad, 4), np.float32)
    full = np.zeros((num_gt + num_pad, h, w), np.uint8)
    for k in range(num_gt):
        x, y = rng.integers(0, w - MASK_SIZE + 1), rng.integers(0, h - MASK_SIZE + 1)
        boxes[k] = [x, y, x + MASK_SIZE, y + MASK_SIZE]
        full[k, y:y + MASK_SIZE, x:x + MASK_SIZE] = rng.random((MASK_SIZE, MASK_SIZE)) < 0.6
    crops = np.stack([m[int(b[1]):int(b[1]) + MASK_SIZE, int(b[0]):int(b[0]) + MASK_SIZE] if i < num_gt else
                      np.zeros((MASK_SIZE, MASK_SIZE), np.uint8) for i, (m, b) in enumerate(zip(full, boxes))])
    classes = np.concatenate([rng.integers(0, NUM_CLASSES, num_gt), np.zeros(num_pad, np.int64)]).astype(np.int32)
    valid = np.arange(num_gt + num_pad) < num_gt
    return boxes, full, crops, classes, valid


def _rois_near(rng, boxes, matched, image_hw):
    r = boxes[matched] + rng.uniform(-5, 5, (len(matched), 4)).astype(np.float32)
    r[:, [0, 2]] = np.clip(r[:, [0, 2]], 0, image_hw[1])
    r[:, [1, 3]] = np.clip(r[:, [1, 3]], 0, image_hw[0])
    return r


def test_branch_losses_equal_torchvision_maskrcnn_loss(tiny):
    """The mask loss on sampled RoIs (positives first, some background and padding among the first
    ``num_positives``) == torchvision's ``maskrcnn_loss`` on the same mask logits, with the full-image masks."""
    config, model, variables = tiny
    rng = np.random.default_rng(0)
    n = model.roi_heads.num_positives
    total = model.roi_heads.batch_size_per_image
    image_sizes = np.array([[128, 128], [96, 112]], np.int32)
    feats = {f"P{l}": jnp.asarray(rng.standard_normal((2, CANVAS >> l, CANVAS >> l, 32)), jnp.float32)
             for l in range(2, 7)}
    batch = {"image_size": image_sizes, "gt_boxes": [], "gt_masks": [], "gt_classes": []}
    samples = {"rois": [], "labels": [], "matched_idxs": [], "valid": []}
    tv_inputs = []
    for b, (num_gt, num_pos) in enumerate([(3, 6), (2, 3)]):
        hw = tuple(image_sizes[b])
        boxes, full, crops, classes, _ = _scene(rng, hw, num_gt, 4 - num_gt)
        matched = np.concatenate([rng.integers(0, num_gt, num_pos), rng.integers(0, 4, total - num_pos)]).astype(np.int32)
        rois = _rois_near(rng, boxes, matched, hw)
        labels = np.where(np.arange(total) < num_pos, classes[matched] + 1, 0).astype(np.int32)
        valid = np.arange(total) < total - 3  # the last sampled slots are padding
        for k, v in zip(("gt_boxes", "gt_masks", "gt_classes"), (boxes, crops, classes)):
            batch[k].append(v)
        for k, v in zip(("rois", "labels", "matched_idxs", "valid"), (rois, labels, matched, valid)):
            samples[k].append(v)
        pos = np.nonzero(valid[:n] & (labels[:n] > 0))[0]
        assert len(pos) == num_pos
        tv_inputs.append((b, pos, rois, full, classes + 1, matched))
    batch = {k: np.stack(v) if isinstance(v, list) else v for k, v in batch.items()}
    samples = {k: np.stack(v) for k, v in samples.items()}

    loss = model.apply(variables, feats, samples, batch, (CANVAS, CANVAS), method=MaskRCNN.branch_losses)
    logits = np.asarray(model.apply(variables, feats, samples["rois"][:, :n], (CANVAS, CANVAS),
                                    method=MaskRCNN.mask_logits))
    assert logits.shape == (2, n, 28, 28, NUM_CLASSES + 1)
    with torch.no_grad():
        ref = maskrcnn_loss(
            torch.cat([_to_torch(logits[b][pos]) for b, pos, *_ in tv_inputs]),
            [torch.from_numpy(rois[pos]) for _, pos, rois, *_ in tv_inputs],
            [torch.from_numpy(full) for *_, full, _, _ in tv_inputs],
            [torch.from_numpy(labels).long() for *_, labels, _ in tv_inputs],
            [torch.from_numpy(matched[pos]).long() for _, pos, _, _, _, matched in tv_inputs])
    assert set(loss) == {"loss_mask"}
    np.testing.assert_allclose(float(loss["loss_mask"]), float(ref), rtol=1e-5)
    assert float(ref) > 0.1

    # without positives the loss is 0 (torchvision: mask_logits.sum() * 0)
    none = dict(samples, labels=np.zeros_like(samples["labels"]))
    zero = model.apply(variables, feats, none, batch, (CANVAS, CANVAS), method=MaskRCNN.branch_losses)
    assert float(zero["loss_mask"]) == 0.0


# ----------------------------------------------------------------------------------------------- compile once
def _synthetic_batch(rng, num_objects, image_sizes, max_instances=8):
    """A training batch on the CANVAS x CANVAS canvas: textured background, filled ellipses (one class per
    shape colour) with their boxes and box-cropped masks (S = MASK_SIZE, nearest sampling)."""
    b = len(num_objects)
    image = rng.integers(0, 60, (b, CANVAS, CANVAS, 3)).astype(np.uint8)
    gt_boxes = np.zeros((b, max_instances, 4), np.float32)
    gt_masks = np.zeros((b, max_instances, MASK_SIZE, MASK_SIZE), np.uint8)
    gt_classes = np.zeros((b, max_instances), np.int32)
    yy, xx = np.mgrid[:CANVAS, :CANVAS] + 0.5
    for i, n in enumerate(num_objects):
        h, w = image_sizes[i]
        image[i, h:], image[i, :, w:] = 0, 0
        for k in range(n):
            bw, bh = rng.uniform(16, 0.6 * w), rng.uniform(16, 0.6 * h)
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            inside = ((xx - x1 - bw / 2) / (bw / 2)) ** 2 + ((yy - y1 - bh / 2) / (bh / 2)) ** 2 <= 1
            c = int(rng.integers(0, NUM_CLASSES))
            image[i][inside] = 80 + 60 * c
            gt_boxes[i, k] = [x1, y1, x1 + bw, y1 + bh]
            gt_classes[i, k] = c
            u = (np.arange(MASK_SIZE) + 0.5) / MASK_SIZE * 2 - 1
            gt_masks[i, k] = (u[:, None] ** 2 + u[None, :] ** 2 <= 1)
    valid = np.arange(max_instances)[None] < np.asarray(num_objects)[:, None]
    return {"image": image, "image_size": np.asarray(image_sizes, np.int32), "gt_boxes": gt_boxes,
            "gt_classes": gt_classes, "gt_valid": valid, "gt_is_crowd": np.zeros_like(valid), "gt_masks": gt_masks}


def test_train_step_and_inference_compile_once(tiny):
    config, model, variables = tiny
    rng = np.random.default_rng(0)
    batches = [_synthetic_batch(rng, [3, 1], [[128, 128], [96, 128]]),
               _synthetic_batch(rng, [5, 2], [[128, 100], [128, 128]])]
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    state = parallel.replicate(create_train_state(variables, tx, jax.random.key_data(jax.random.key(0))), mesh)
    step = make_train_step(model, tx, schedule, mesh)
    for b in batches:
        state, metrics = step(state, parallel.shard_batch(b, mesh))
        assert bool(metrics["finite"]) and float(metrics["loss_mask"]) > 0
        assert {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg", "loss_mask"} <= set(metrics)
    assert step._cache_size() == 1

    predict = make_predict_step(model, mesh)
    v = state.variables()
    for b in batches:
        out = predict(v, parallel.shard_batch({k: b[k] for k in ("image", "image_size")}, mesh))
    assert predict._cache_size() == 1
    d = model.roi_heads.detections_per_image
    assert out["masks"].shape == (2, d, 28, 28) and out["masks"].dtype == jnp.float32
    masks, valid = np.asarray(out["masks"]), np.asarray(out["valid"])
    assert np.all(masks[~valid] == 0) and masks.min() >= 0 and masks.max() <= 1
