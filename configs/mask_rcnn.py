"""Mask R-CNN R50-FPN, 1x schedule (90k iterations at batch 16), torchvision / detectron2 semantics.

Reference: torchvision ``maskrcnn_resnet50_fpn`` (v1; 37.9 box AP / 34.6 mask AP on COCO val2017 in its zoo)
and detectron2 ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`` (38.6 box AP / 35.2 mask AP).
Everything but the mask branch is ``configs/faster_rcnn.py``.

Run::

    python -m jaxdet.train --config configs/mask_rcnn.py --config.data.root=/path/to/coco

Torchvision's weights: convert them with ``checkpoints_convert/torchvision_mask_rcnn.py`` (see
docs/parity_mask_rcnn.md) and pass the output folder as ``--config.model.weights``.
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "faster_rcnn")
    c.output_dir = "output/mask_rcnn_R_50_FPN_1x"

    # instance masks cropped to their box and resized to mask_size x mask_size on the host (gt_masks)
    c.data.mask_size = 112

    c.model.meta_architecture = "MaskRCNN"
    c.model.mask_head = ml_collections.ConfigDict()
    c.model.mask_head.pooler_resolution = 14   # MultiScaleRoIAlign 14x14 on P2..P5; masks are 28x28
    c.model.mask_head.sampling_ratio = 2       # torchvision 2; detectron2 0 (adaptive)
    c.model.mask_head.conv_dim = 256
    c.model.mask_head.num_convs = 4
    c.model.mask_head.max_train_rois = 0      # positives per image for the mask loss; 0 = all (torchvision)
    return c
