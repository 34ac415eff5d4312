"""FCOS R50-FPN, 1x schedule (90k iterations at batch 16, lr 0.01), torchvision semantics.

Reference: torchvision ``fcos_resnet50_fpn`` (39.2 box AP on COCO val2017 in torchvision's docs) and the FCOS
paper's 1x recipe. Everything not set here (data, input, backbone, solver fields) comes from
``configs/faster_rcnn.py``; ``model.rpn`` is dropped and ``model.roi_heads`` is unused by FCOS (it is kept
only because checkpoints record its RoIAlign fields among the pixel/architecture conventions).

Run::

    python -m jaxdet.train --config configs/fcos.py --config.data.root=/path/to/coco
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "faster_rcnn")
    c.output_dir = "output/fcos_R_50_FPN_1x"

    c.model.meta_architecture = "FCOS"
    del c.model["rpn"]
    c.model.fpn.p6p7_in = "P5"               # torchvision LastLevelP6P7(256, 256): P6 from P5
    c.model.anchor.sizes = ((8,), (16,), (32,), (64,), (128,))  # P3..P7; FCOS uses their centres as points
    c.model.anchor.aspect_ratios = (1.0,)

    c.model.fcos = ml_collections.ConfigDict()
    c.model.fcos.num_convs = 4               # conv + norm + ReLU blocks per tower
    c.model.fcos.head_norm = "gn"            # GroupNorm(32) | none
    c.model.fcos.prior_prob = 0.01
    c.model.fcos.center_sampling_radius = 1.5
    c.model.fcos.focal_alpha = 0.25
    c.model.fcos.focal_gamma = 2.0
    c.model.fcos.score_thresh_test = 0.2
    c.model.fcos.topk_candidates_test = 1000  # per level, before NMS
    c.model.fcos.nms_thresh_test = 0.6
    c.model.fcos.detections_per_image = 100

    c.solver.base_lr = 0.01
    return c
