"""Keypoint R-CNN R50-FPN (COCO person keypoints), 1x schedule (90k iterations at batch 16), torchvision semantics.

Reference: torchvision ``keypointrcnn_resnet50_fpn`` (COCO_V1 weights: 54.6 box AP / 65.0 keypoint AP on COCO
val2017; the legacy weights 50.6 / 61.1) and detectron2
``COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml``. Everything but the keypoint branch, the person-keypoint
annotation files and torchvision's multi-scale training sizes is ``configs/faster_rcnn.py``.

Run::

    python -m jaxdet.train --config configs/keypoint_rcnn.py --config.data.root=/path/to/coco

Torchvision's weights: convert them with ``checkpoints_convert/torchvision_keypoint_rcnn.py`` (see
docs/parity_keypoint_rcnn.md) and pass the output folder as ``--config.model.weights``.
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "faster_rcnn")
    c.output_dir = "output/keypoint_rcnn_R_50_FPN_1x"

    c.data.train_json = "annotations/person_keypoints_train2017.json"
    c.data.val_json = "annotations/person_keypoints_val2017.json"
    c.data.num_keypoints = 17          # gt_keypoints [B, M, 17, 3]: x, y canvas pixels, visibility 0/1/2

    # torchvision's KeypointRCNN default training sizes
    c.input.min_size_train = (640, 672, 704, 736, 768, 800)

    c.model.meta_architecture = "KeypointRCNN"
    c.model.keypoint_head = ml_collections.ConfigDict()
    c.model.keypoint_head.num_keypoints = 17
    c.model.keypoint_head.pooler_resolution = 14       # MultiScaleRoIAlign 14x14 on P2..P5; heatmaps are 56x56
    c.model.keypoint_head.sampling_ratio = 2
    c.model.keypoint_head.conv_dims = (512,) * 8       # KeypointRCNNHeads
    # keypoints for the best N detections only (0: all detections_per_image, as torchvision). The head costs
    # ~7 GFLOP per detection; COCO keypoint AP only counts the best 20 detections per image.
    c.model.keypoint_head.max_detections_test = 0
    c.model.keypoint_head.num_candidates = 16          # heatmap cells evaluated exactly per keypoint (argmax)
    return c
