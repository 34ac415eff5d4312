"""Faster R-CNN R50-FPN, 1x schedule (90k iterations at batch 16), torchvision / detectron2 semantics.

Reference: torchvision ``fasterrcnn_resnet50_fpn`` (v1) and detectron2
``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml`` (37.0 / 37.9 box AP on COCO val2017 in their zoos).

Run::

    python -m jaxdet.train --config configs/faster_rcnn.py --config.data.root=/path/to/coco

Every field can be overridden on the command line, e.g. ``--config.solver.base_lr=0.01``.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.output_dir = "output/faster_rcnn_R_50_FPN_1x"
    c.seed = 0
    c.log_period = 20

    # ---------------------------------------------------------------- data (COCO layout)
    c.data = ml_collections.ConfigDict()
    c.data.format = "coco"            # coco: the json files below | voc: a Pascal VOC folder (data.root)
    c.data.root = "datasets/coco"
    c.data.train_json = "annotations/instances_train2017.json"
    c.data.train_images = "train2017"
    c.data.val_json = "annotations/instances_val2017.json"
    c.data.val_images = "val2017"
    c.data.train_split = "trainval"   # voc: ImageSets/Main/<split>.txt
    c.data.val_split = "test"
    c.data.voc_classes = ()           # voc: class names in order; () = the 20 Pascal VOC classes
    c.data.synthetic = False          # True: generate the synthetic shapes dataset into data.root first
    c.data.num_workers = 2            # grain worker processes (0 = in the main process)
    c.data.prefetch = 2               # batches prefetched to the devices
    c.data.max_instances = 100        # ground truth padded to this many objects per image
    c.data.mask_size = 0              # > 0: gt_masks of this size (box-cropped masks, Mask R-CNN: 112)
    c.data.num_keypoints = 0          # > 0: gt_keypoints (Keypoint R-CNN; must match the annotation file)

    # ---------------------------------------------------------------- input transforms
    c.input = ml_collections.ConfigDict()
    c.input.format = "RGB"            # channel order the weights expect
    c.input.min_size_train = (800,)   # shortest edge; several values = multi-scale training
    c.input.max_size_train = 1333
    c.input.min_size_test = 800
    c.input.max_size_test = 1333
    c.input.random_flip = 0.5         # horizontal flip probability
    c.input.canvases = ((800, 1344), (1344, 800))  # (H, W) padded canvases, multiples of 32

    # ---------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.meta_architecture = "FasterRCNN"
    c.model.weights = ""              # a jaxdet checkpoint or converted weights (checkpoints_convert/)
    c.model.num_classes = -1          # -1: read from the training annotation file
    c.model.pixel_mean = (123.675, 116.28, 103.53)
    c.model.pixel_std = (58.395, 57.12, 57.375)
    c.model.dtype = "float32"         # compute dtype ("bfloat16" for mixed precision; params stay float32)

    c.model.backbone = ml_collections.ConfigDict()
    c.model.backbone.depth = 50
    c.model.backbone.groups = 1
    c.model.backbone.width_per_group = 64
    c.model.backbone.width_multiplier = 1.0
    c.model.backbone.stride_in_1x1 = False   # True for MSRA weights
    c.model.backbone.norm = "frozen_bn"      # frozen_bn | bn | syncbn | gn
    c.model.backbone.norm_eps = 1e-5         # 0.0 for torchvision's legacy COCO detector weights
    c.model.backbone.freeze_at = 2           # stem + res2 frozen (as with ImageNet weights)

    c.model.fpn = ml_collections.ConfigDict()
    c.model.fpn.out_channels = 256

    c.model.anchor = ml_collections.ConfigDict()
    c.model.anchor.sizes = ((32,), (64,), (128,), (256,), (512,))  # one size per level, P2..P6
    c.model.anchor.aspect_ratios = (0.5, 1.0, 2.0)

    c.model.rpn = ml_collections.ConfigDict()
    c.model.rpn.pre_nms_topk_train = 2000    # per FPN level
    c.model.rpn.pre_nms_topk_test = 1000
    c.model.rpn.post_nms_topk_train = 2000   # per image
    c.model.rpn.post_nms_topk_test = 1000
    c.model.rpn.nms_thresh = 0.7
    c.model.rpn.min_size = 1e-3
    c.model.rpn.fg_iou_thresh = 0.7
    c.model.rpn.bg_iou_thresh = 0.3
    c.model.rpn.batch_size_per_image = 256
    c.model.rpn.positive_fraction = 0.5
    c.model.rpn.smooth_l1_beta = 1.0 / 9.0
    c.model.rpn.bbox_reg_weights = (1.0, 1.0, 1.0, 1.0)

    c.model.roi_heads = ml_collections.ConfigDict()
    c.model.roi_heads.batch_size_per_image = 512
    c.model.roi_heads.positive_fraction = 0.25
    c.model.roi_heads.fg_iou_thresh = 0.5
    c.model.roi_heads.bg_iou_thresh = 0.5
    c.model.roi_heads.bbox_reg_weights = (10.0, 10.0, 5.0, 5.0)
    c.model.roi_heads.smooth_l1_beta = 1.0 / 9.0
    c.model.roi_heads.pooler_resolution = 7
    c.model.roi_heads.pooler_sampling_ratio = 2
    c.model.roi_heads.pooler_aligned = False  # torchvision: False; detectron2/mmdet: True
    c.model.roi_heads.fc_dim = 1024
    c.model.roi_heads.score_thresh_test = 0.05
    c.model.roi_heads.nms_thresh_test = 0.5
    c.model.roi_heads.detections_per_image = 100
    c.model.roi_heads.topk_candidates_test = 2000  # (RoI, class) pairs kept, by score, before NMS

    # ---------------------------------------------------------------- solver (1x schedule)
    c.solver = ml_collections.ConfigDict()
    c.solver.ims_per_batch = 16
    c.solver.base_lr = 0.02
    c.solver.momentum = 0.9
    c.solver.weight_decay = 1e-4
    c.solver.weight_decay_norm = 0.0
    c.solver.warmup_iters = 1000
    c.solver.warmup_factor = 0.001
    c.solver.steps = (60000, 80000)
    c.solver.gamma = 0.1
    c.solver.max_iter = 90000
    c.solver.checkpoint_period = 5000
    c.solver.max_to_keep = 3
    c.solver.nan_policy = "stop"      # stop | skip: what a non-finite loss does

    # ---------------------------------------------------------------- test
    c.test = ml_collections.ConfigDict()
    c.test.eval_period = 0            # 0: evaluate only at the end of training
    c.test.ims_per_batch = 8
    c.test.max_images = 0             # 0: the whole val split
    c.test.voc_07_metric = True       # voc: 11-point AP (VOC2007 test); False: area AP (VOC2010+)
    return c
