"""A tiny Faster R-CNN config on real coco128 data, shared by the engine tests (small shapes, fast)."""
from __future__ import annotations

import os

from jaxdet.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: The tiny model and canvas, as config overrides (also used as ``--config.`` flags by tests/reliability).
TINY_OVERRIDES = [
    "data.synthetic=False", "data.num_workers=0",
    "data.train_json=annotations/instances_train2017.json", "data.train_images=train2017",
    "data.val_json=annotations/instances_val2017.json", "data.val_images=val2017",
    "input.canvases=((128,128),)", "input.min_size_train=(96,)",
    "input.max_size_train=128", "input.min_size_test=96", "input.max_size_test=128",
    "solver.ims_per_batch=2", "test.ims_per_batch=2", "data.max_instances=32",
    "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
    "model.roi_heads.batch_size_per_image=32", "model.roi_heads.topk_candidates_test=200",
    "model.roi_heads.detections_per_image=20", "model.fpn.out_channels=32", "model.roi_heads.fc_dim=64",
    "model.backbone.width_multiplier=0.125",
]


def tiny_config(coco128_root, output_dir, **overrides):
    """quickstart model on coco128 at a 128x128 canvas; ``overrides`` as ``{"solver.base_lr": 0.01}``."""
    base = [f"data.root={coco128_root}", f"output_dir={output_dir}", *TINY_OVERRIDES]
    base += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(os.path.join(REPO, "configs", "quickstart.py"), base)
