"""Pure, static-shape detection ops (jax.numpy): boxes, box coding, anchors, matching, sampling,
NMS and RoIAlign. Single-image functions unless stated; ``jax.vmap`` them over the batch."""
from jaxdet.ops.anchors import cell_anchors, grid_anchors, multilevel_anchors
from jaxdet.ops.box_coder import decode_boxes, encode_boxes
from jaxdet.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_ioa,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    clip_boxes,
    small_boxes_mask,
)
from jaxdet.ops.matcher import match
from jaxdet.ops.nms import batched_nms, nms
from jaxdet.ops.roi_align import assign_levels, multilevel_roi_align, roi_align
from jaxdet.ops.sampler import sample_balanced_indices, sample_balanced_masks

__all__ = [
    "assign_levels",
    "batched_nms",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_ioa",
    "box_iou",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "cell_anchors",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "grid_anchors",
    "match",
    "multilevel_anchors",
    "multilevel_roi_align",
    "nms",
    "roi_align",
    "sample_balanced_indices",
    "sample_balanced_masks",
    "small_boxes_mask",
]
