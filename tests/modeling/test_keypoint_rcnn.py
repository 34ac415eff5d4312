"""A tiny KeypointRCNN: train step and inference each compile once per canvas over hand-built batches with
``gt_keypoints``; the keypoint loss reacts to the keypoints; outputs follow the DESIGN.md contract."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxdet.config import load_config
from jaxdet.engine import parallel
from jaxdet.engine.bootstrap import init_variables
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.modeling.build import build_detector, trainable_mask
from jaxdet.modeling.detectors.keypoint_rcnn import KeypointRCNN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CANVAS = 128
K = 5
M = 4
TINY = [
    "model.backbone.depth=18", "model.backbone.width_multiplier=0.125", "model.backbone.norm=bn",
    "model.backbone.freeze_at=0", "model.fpn.out_channels=16", "model.roi_heads.fc_dim=32",
    "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
    "model.roi_heads.batch_size_per_image=32", "model.roi_heads.topk_candidates_test=200",
    "model.roi_heads.detections_per_image=10", "model.roi_heads.score_thresh_test=0.0",
    f"model.keypoint_head.num_keypoints={K}", "model.keypoint_head.conv_dims=(16,16)",
    "model.keypoint_head.max_detections_test=6", "model.keypoint_head.num_candidates=4",
    "solver.base_lr=0.01", "solver.warmup_iters=0",
]


def _batch(seed: int) -> dict:
    """Two 128x128 images, each with 1..M boxes (textured squares) and K keypoints per box: corners and centre,
    some unlabelled (v = 0, x = y = 0)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(2, CANVAS, CANVAS, 3)).astype(np.uint8)
    boxes = np.zeros((2, M, 4), np.float32)
    kps = np.zeros((2, M, K, 3), np.float32)
    valid = np.zeros((2, M), bool)
    for b in range(2):
        for m in range(int(rng.integers(1, M + 1))):
            x1, y1 = rng.uniform(4, 60, 2)
            w, h = rng.uniform(24, 60, 2)
            x2, y2 = x1 + w, y1 + h
            image[b, int(y1):int(y2), int(x1):int(x2)] = rng.integers(150, 255, 3)
            boxes[b, m] = (x1, y1, x2, y2)
            pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [(x1 + x2) / 2, (y1 + y2) / 2]], np.float32)
            vis = rng.choice([0, 1, 2], size=K, p=[0.2, 0.2, 0.6]).astype(np.float32)
            kps[b, m, :, :2] = np.where(vis[:, None] > 0, pts, 0.0)
            kps[b, m, :, 2] = vis
            valid[b, m] = True
    return {"image": image, "image_size": np.array([[CANVAS, CANVAS], [CANVAS - 8, CANVAS]], np.int32),
            "gt_boxes": boxes, "gt_classes": np.zeros((2, M), np.int32), "gt_valid": valid,
            "gt_is_crowd": np.zeros((2, M), bool), "gt_keypoints": kps}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = load_config(os.path.join(REPO, "configs", "keypoint_rcnn.py"),
                         [f"output_dir={tmp_path_factory.mktemp('kp')}", *TINY])
    model = build_detector(config.model, 1)
    assert isinstance(model, KeypointRCNN) and model.keypoint_config.num_keypoints == K
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = init_variables(model, config, 0)
    assert set(variables["params"]["keypoint_head"]) == {"conv_fcn1", "conv_fcn2", "kps_score_lowres"}
    assert variables["params"]["keypoint_head"]["kps_score_lowres"]["kernel"].shape == (4, 4, 16, K)
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    state = jax.device_get(create_train_state(variables, tx, jax.random.key_data(jax.random.key(0))))
    return config, model, mesh, tx, schedule, state


def test_train_and_predict_compile_once(setup):
    config, model, mesh, tx, schedule, state = setup
    step = make_train_step(model, tx, schedule, mesh)
    st = parallel.replicate(state, mesh)
    for seed in (0, 1):
        st, metrics = step(st, parallel.shard_batch(_batch(seed), mesh))
        assert bool(metrics["finite"])
        assert float(metrics["loss_keypoint"]) > 0
        assert set(metrics) >= {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg", "loss_keypoint"}
    assert step._cache_size() == 1

    predict = make_predict_step(model, mesh)
    variables = st.variables()
    outs = [jax.device_get(predict(variables, parallel.shard_batch(
        {k: v for k, v in _batch(seed).items() if k in ("image", "image_size")}, mesh))) for seed in (2, 3)]
    assert predict._cache_size() == 1
    d = config.model.roi_heads.detections_per_image
    for out in outs:
        assert out["keypoints"].shape == (2, d, K, 3) and out["keypoints"].dtype == np.float32
        kp, boxes, valid = out["keypoints"], out["boxes"], out["valid"]
        assert valid.any()
        n = config.model.keypoint_head.max_detections_test
        # keypoints lie in their box (argmax pixel centres of the box's resized heatmap)
        inside = ((kp[..., 0] >= boxes[..., None, 0]) & (kp[..., 0] <= np.maximum(boxes[..., None, 2],
                                                                                   boxes[..., None, 0] + 1))
                  & (kp[..., 1] >= boxes[..., None, 1]) & (kp[..., 1] <= np.maximum(boxes[..., None, 3],
                                                                                    boxes[..., None, 1] + 1)))
        assert inside[:, :n][valid[:, :n]].all()
        assert not kp[:, :n][~valid[:, :n]].any() and not kp[:, n:].any()


def test_keypoint_loss_uses_the_keypoints(setup):
    """Same RoIs (same sampling key), ground-truth keypoints moved or unlabelled: only loss_keypoint changes;
    with every keypoint unlabelled it is exactly 0 (torchvision's empty case)."""
    config, model, mesh, tx, schedule, state = setup
    variables = state.variables()
    batch = _batch(0)
    key = jax.random.key(5)

    @jax.jit
    def losses(v, b):
        out, _ = model.apply(v, b, train=True, rngs={"sampling": key}, mutable=["batch_stats"])
        return out

    base = jax.device_get(losses(variables, batch))
    moved = dict(batch, gt_keypoints=batch["gt_keypoints"] + np.array([3.0, -2.0, 0.0], np.float32))
    other = jax.device_get(losses(variables, moved))
    none = jax.device_get(losses(variables, dict(batch, gt_keypoints=np.zeros_like(batch["gt_keypoints"]))))
    for k in base:
        if k != "loss_keypoint":
            assert other[k] == base[k] and none[k] == base[k], k
    assert other["loss_keypoint"] != base["loss_keypoint"]
    assert none["loss_keypoint"] == 0.0
    # untrained heatmaps are near uniform: the cross-entropy is about log(56 * 56)
    assert abs(float(base["loss_keypoint"]) - np.log(56 * 56)) < 1.0
