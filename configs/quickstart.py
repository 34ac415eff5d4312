"""Quickstart: a small Faster R-CNN trained from scratch on the embedded synthetic shapes dataset.

No download: the first run writes the synthetic COCO-layout dataset (circles, rectangles, triangles on
textured backgrounds; `jaxdet.data.synthetic`) into ``data.root`` and then trains and evaluates on its
held-out val split, all with the same loader, model, train loop and pycocotools evaluation as the full
configs. Sized for 2 CPU cores: a narrow ResNet-18 with trainable BatchNorm, a 64-channel FPN, 320x320
canvases.

    python -m jaxdet.train --config configs/quickstart.py
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "faster_rcnn")
    c.output_dir = "output/quickstart"
    c.log_period = 20

    c.data.root = "datasets/synthetic_shapes"
    c.data.synthetic = True
    c.data.synthetic_args = ml_collections.ConfigDict(dict(num_train=1024, num_val=128, seed=0))
    c.data.num_workers = 0

    c.input.min_size_train = (256, 288, 320)
    c.input.max_size_train = 320
    c.input.min_size_test = 320
    c.input.max_size_test = 320
    c.input.canvases = ((320, 320),)

    c.model.backbone.depth = 18
    c.model.backbone.width_multiplier = 0.25
    c.model.backbone.norm = "syncbn"   # BatchNorm over the global batch (the same on one device)
    c.model.backbone.freeze_at = 0
    c.model.fpn.out_channels = 64
    c.model.anchor.sizes = ((16,), (32,), (64,), (128,), (256,))
    c.model.rpn.pre_nms_topk_train = 1000
    c.model.rpn.post_nms_topk_train = 500
    c.model.rpn.pre_nms_topk_test = 500
    c.model.rpn.post_nms_topk_test = 300
    c.model.roi_heads.batch_size_per_image = 128
    c.model.roi_heads.fc_dim = 256
    c.model.roi_heads.topk_candidates_test = 1000

    c.solver.ims_per_batch = 8
    c.solver.base_lr = 0.02
    c.solver.warmup_iters = 100
    c.solver.max_iter = 600
    c.solver.steps = (450, 550)
    c.solver.checkpoint_period = 200
    c.test.eval_period = 0
    c.test.ims_per_batch = 8
    return c
