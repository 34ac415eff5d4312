"""RetinaNet R50-FPN, 1x schedule (90k iterations at batch 16), torchvision semantics.

Reference: torchvision ``retinanet_resnet50_fpn`` (v1; 36.4 box AP on COCO val2017 in its zoo) and detectron2
``COCO-Detection/retinanet_R_50_FPN_1x.yaml`` (36.5; BASE_LR 0.01). ResNet C3..C5 -> FPN P3..P5, P6/P7 from P5
-> classification and box subnets (4 convs each), 9 anchors per location, focal loss, 300 detections.

Run::

    python -m jaxdet.train --config configs/retinanet.py --config.data.root=/path/to/coco

The ``rpn`` and ``roi_heads`` sections of the base config are kept (other tools read them) but RetinaNet does not
use them.
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "faster_rcnn")
    c.output_dir = "output/retinanet_R_50_FPN_1x"

    c.model.meta_architecture = "RetinaNet"
    c.model.fpn.p6p7_in = "P5"        # torchvision v1 LastLevelP6P7(256, 256); "C5" for detectron2 / torchvision v2

    # P3..P7: (s, int(s * 2 ** (1/3)), int(s * 2 ** (2/3))) for s = 32..512, as torchvision's _default_anchorgen
    c.model.anchor.sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
    c.model.anchor.aspect_ratios = (0.5, 1.0, 2.0)

    c.model.retinanet = ml_collections.ConfigDict()
    c.model.retinanet.num_convs = 4
    c.model.retinanet.prior_prob = 0.01
    c.model.retinanet.fg_iou_thresh = 0.5
    c.model.retinanet.bg_iou_thresh = 0.4
    c.model.retinanet.focal_loss_alpha = 0.25
    c.model.retinanet.focal_loss_gamma = 2.0
    c.model.retinanet.bbox_reg_weights = (1.0, 1.0, 1.0, 1.0)
    c.model.retinanet.score_thresh_test = 0.05
    c.model.retinanet.topk_candidates_test = 1000   # per FPN level, before NMS
    c.model.retinanet.nms_thresh_test = 0.5
    c.model.retinanet.detections_per_image = 300

    c.solver.base_lr = 0.01           # detectron2 retinanet_R_50_FPN_1x at batch 16
    return c
