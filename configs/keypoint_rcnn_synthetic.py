"""A small Keypoint R-CNN trained from scratch on the embedded synthetic keypoint dataset (no download).

The first run writes the synthetic COCO-keypoint dataset into ``data.root`` (``jaxdet.data.synthetic`` with
``keypoints=True``: rotated rectangles annotated with 5 keypoints (4 corners, centre; some hidden by later
objects, v = 1, or unlabelled, v = 0), circles and triangles as unannotated distractors, textured backgrounds),
then trains and evaluates box and keypoint AP on its held-out val split (OKS sigmas from the json's
``kpt_oks_sigmas``), with the same loader, model, train loop and pycocotools evaluation as
``configs/keypoint_rcnn.py``. Sized for 2 CPU cores like ``configs/quickstart.py``: a narrow ResNet-18 with
trainable BatchNorm, a 64-channel FPN, a 4 x 64 keypoint head, 320x320 canvases.

    python -m jaxdet.train --config configs/keypoint_rcnn_synthetic.py
"""
import ml_collections

from jaxdet.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "keypoint_rcnn")
    c.output_dir = "output/keypoint_rcnn_synthetic"
    c.log_period = 20

    c.data.root = "datasets/synthetic_keypoints"
    c.data.synthetic = True
    c.data.synthetic_args = ml_collections.ConfigDict(dict(num_train=1024, num_val=128, seed=0, keypoints=True))
    c.data.train_json = "annotations/keypoints_train2017.json"
    c.data.val_json = "annotations/keypoints_val2017.json"
    c.data.num_keypoints = 5
    c.data.num_workers = 0

    # the quickstart's CPU-sized input, backbone, FPN, anchors, RPN and box head (configs/quickstart.py)
    quick = base_config(__file__, "quickstart")
    c.input = quick.input
    for section in ("backbone", "fpn", "anchor", "rpn", "roi_heads"):
        c.model[section] = quick.model[section]
    c.model.backbone.norm = "bn"
    # roi_heads.batch_size_per_image 128: at most 32 positives per image reach the keypoint head

    c.model.keypoint_head.num_keypoints = 5
    c.model.keypoint_head.conv_dims = (64,) * 4
    c.model.keypoint_head.max_detections_test = 20   # COCO keypoint AP counts the best 20 per image

    # lr per image as torchvision's keypoint recipe (0.02 at 16 images): at 0.02 for 8 images the keypoint loss
    # diverged (NaN) within 60 iterations in a smoke run, at 0.01 / 4 images it oscillated when overfitting one batch
    c.solver.ims_per_batch = 8
    c.solver.base_lr = 0.01
    c.solver.warmup_iters = 200
    c.solver.max_iter = 1200
    c.solver.steps = (900, 1100)
    c.solver.checkpoint_period = 200
    c.test.eval_period = 0
    c.test.ims_per_batch = 8
    return c
