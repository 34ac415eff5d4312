"""torchvision ``fasterrcnn_resnet50_fpn`` (v1) state_dicts -> jaxdet ``FasterRCNN`` variables, and a CLI.

Source layout: ``torchvision/models/detection/faster_rcnn.py`` (``FasterRCNN``, ``TwoMLPHead``,
``FastRCNNPredictor``) and ``rpn.py`` (``RPNHead``)::

    backbone.body.*                     -> params/backbone, frozen/backbone  (convert_torchvision_resnet)
    backbone.fpn.*                      -> params/neck/{inner_i,layer_i}     (convert_torchvision_fpn)
    rpn.head.conv.0.0.{weight,bias}     -> params/rpn_head/conv/{kernel,bias}        (HWIO)
      (torchvision < 0.13 files: rpn.head.conv.{weight,bias})
    rpn.head.cls_logits.*               -> params/rpn_head/cls_logits/*
    rpn.head.bbox_pred.*                -> params/rpn_head/bbox_pred/*
    roi_heads.box_head.fc6.*            -> params/box_head/fc6/*   (input rows permuted, see below)
    roi_heads.box_head.fc7.*            -> params/box_head/fc7/*
    roi_heads.box_predictor.cls_score.* -> params/box_head/cls_score/*  (class rows selected, see below)
    roi_heads.box_predictor.bbox_pred.* -> params/box_head/bbox_pred/*  (4-row class blocks selected)

fc6: torchvision flattens the pooled RoI features [C, 7, 7] in (channel, y, x) order; jaxdet's
``FastRCNNHead`` flattens NHWC [7, 7, C] in (y, x, channel) order, so the kernel's input rows are permuted.

Classes: torchvision's COCO detectors have 91 outputs indexed by COCO *category id* (0 = background,
ids such as 12, 26, 29 unused, named 'N/A'). jaxdet uses contiguous classes 0..C-1 (logit ``c + 1``);
``category_ids`` chooses which torchvision outputs become them (the 80 COCO-2017 ids by default in the
CLI), and evaluation maps class ``c`` back to ``category_ids[c]``.

Pixel convention and switches (written to the checkpoint's ``meta["config_overrides"]``): RGB,
ImageNet mean/std in 0..255 units, stride on the 3x3 conv, RoIAlign ``aligned=False`` with sampling
ratio 2, and FrozenBN eps 0.0 for torchvision's published COCO weights (torchvision calls
``overwrite_eps(model, 0.0)`` when it loads them; a model built with ``weights=None`` uses
``BatchNorm2d`` eps 1e-5 instead).

CLI (``--arch`` picks the detector; the other families' converters live in ``torchvision_mask_rcnn.py``,
``torchvision_keypoint_rcnn.py``, ``torchvision_retinanet.py`` and ``torchvision_fcos.py`` and reuse this
module's backbone/FPN/R-CNN parts)::

    python -m checkpoints_convert.torchvision_detector \\
        --weights fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --output weights/faster_rcnn_tv
    python -m checkpoints_convert.torchvision_detector --arch maskrcnn_resnet50_fpn \\
        --weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output weights/mask_rcnn_tv
    python -m jaxdet.evaluate --config configs/faster_rcnn.py --checkpoint weights/faster_rcnn_tv ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from checkpoints_convert.common import (
    TORCHVISION_PIXEL,
    as_float32,
    check_keys,
    conv_oihw_to_hwio,
    expect_shape,
    flatten_tree,
    linear_to_dense,
    to_numpy,
)
from checkpoints_convert.torchvision_backbone import (
    check_output_dir,
    convert_torchvision_fpn,
    convert_torchvision_resnet,
    load_torchvision_state_dict,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "TORCHVISION_COCO_CATEGORIES",
    "convert_fasterrcnn_resnet50_fpn",
    "fasterrcnn_config_overrides",
    "torchvision_config_overrides",
    "torchvision_meta",
    "select_categories",
    "categories_from_annotations",
    "main",
]

#: torchvision's 91 COCO outputs (``torchvision.models._meta._COCO_CATEGORIES``): index = COCO category id,
#: 0 = background, 'N/A' = an id COCO-2017 does not use.
TORCHVISION_COCO_CATEGORIES: Tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: The 80 category ids of COCO 2017 (``instances_*2017.json``), ascending.
COCO_CATEGORY_IDS: Tuple[int, ...] = tuple(i for i, n in enumerate(TORCHVISION_COCO_CATEGORIES) if i and n != "N/A")
#: Their names, in the same order (as in the COCO json's ``categories``).
COCO_CLASS_NAMES: Tuple[str, ...] = tuple(TORCHVISION_COCO_CATEGORIES[i] for i in COCO_CATEGORY_IDS)

_ARCH = "fasterrcnn_resnet50_fpn"
_RPN_NEW = "rpn.head.conv.0.0."   # torchvision >= 0.13 (Conv2dNormActivation inside a Sequential)
_RPN_OLD = "rpn.head.conv."       # older files, e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth
_HEAD_KEYS = (
    "rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias",
    "rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias",
    "roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc6.bias",
    "roi_heads.box_head.fc7.weight", "roi_heads.box_head.fc7.bias",
    "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
)


def torchvision_config_overrides(num_classes: int, norm_eps: float) -> Dict[str, Any]:
    """The jaxdet config fields (dotted keys) that every torchvision R50-FPN detector's weights need: the number of
    classes, the pixel convention (RGB, ImageNet mean/std in 0..255 units), FrozenBN ``norm_eps`` and the stride on
    the 3x3 conv. The families' ``*_config_overrides`` add their own switches to these."""
    return {
        "model.num_classes": int(num_classes),
        "model.pixel_mean": list(TORCHVISION_PIXEL["pixel_mean"]),
        "model.pixel_std": list(TORCHVISION_PIXEL["pixel_std"]),
        "input.format": TORCHVISION_PIXEL["channel_order"],
        "model.backbone.norm_eps": float(norm_eps),
        "model.backbone.stride_in_1x1": False,
    }


def fasterrcnn_config_overrides(num_classes: int, norm_eps: float) -> Dict[str, Any]:
    """The jaxdet config fields (dotted keys of ``configs/faster_rcnn.py``) that torchvision's Faster R-CNN
    weights need: pixel convention (RGB, ImageNet mean/std in 0..255 units), stride on the 3x3 conv,
    FrozenBN ``norm_eps``, RoIAlign ``aligned=False`` / sampling ratio 2 and the number of classes."""
    return {
        **torchvision_config_overrides(num_classes, norm_eps),
        "model.roi_heads.pooler_aligned": False,
        "model.roi_heads.pooler_sampling_ratio": 2,
    }


def torchvision_meta(arch: str, source: str, category_ids: list, class_names: list,
                     config_overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON-able ``meta`` of a converted torchvision detector: ``source``, ``format`` ('torchvision'),
    ``arch``, ``num_classes`` (= ``len(category_ids)``), ``category_ids``, ``class_names`` (as given, e.g. by
    :func:`select_categories`) and ``config_overrides`` (the family's ``*_config_overrides``)."""
    return {
        "source": source,
        "format": "torchvision",
        "arch": arch,
        "num_classes": len(category_ids),
        "category_ids": category_ids,
        "class_names": class_names,
        "config_overrides": config_overrides,
    }


def _default_names(category_ids: Sequence[int], num_outputs: int) -> list:
    """Names of torchvision outputs ``category_ids``: COCO names for a 91-output model, unique placeholders
    for unused ids ('N/A' -> 'N/A (id 12)') and for other models ('class_7')."""
    names = []
    for i in category_ids:
        if num_outputs == len(TORCHVISION_COCO_CATEGORIES):
            n = TORCHVISION_COCO_CATEGORIES[i]
            names.append(f"N/A (id {i})" if n == "N/A" else n)
        else:
            names.append(f"class_{i}")
    return names


def select_categories(
    category_ids: Optional[Sequence[int]],
    class_names: Optional[Sequence[str]],
    num_outputs: int,
    source: str,
    first_id: int = 1,
) -> Tuple[list, list]:
    """The validated ``(ids, names)`` of the torchvision class outputs a converter keeps, in that order.

    Args:
      category_ids: torchvision output indices (= COCO category ids for the COCO models) that become the
        contiguous jaxdet classes 0..C-1; distinct ints in ``first_id..num_outputs-1``. None: every output
        ``1..num_outputs-1`` (C = K - 1; category id = torchvision label).
      class_names: C names for the meta; None: COCO names for a 91-output model (unused ids become
        ``'N/A (id 12)'``, output 0 ``'__background__'``), else ``'class_<id>'``.
      num_outputs: K, the torchvision model's class outputs (91 for the COCO models; 0 = background).
      source: file name (or description) for the error messages.
      first_id: the smallest selectable output: 1 where output 0 is a softmax background (R-CNN, FCOS), 0 where
        it is a sigmoid output like the others (RetinaNet, selectable for checks).

    Returns:
      ``(ids, names)``: two lists of C python ints / strs (JSON-able, for ``meta``).

    Raises:
      ValueError: ``category_ids`` empty, out of range or with duplicates; ``class_names`` not C long or with
        duplicates. The messages name ``source``.
    """
    if category_ids is None:
        ids = list(range(1, num_outputs))
    else:
        ids = [int(i) for i in category_ids]
        if not ids:
            raise ValueError(f"{source}: category_ids is empty")
        bad = [i for i in ids if not first_id <= i < num_outputs]
        if bad:
            background = ", 0 = background" if first_id > 0 else ""
            raise ValueError(f"{source}: category_ids {bad[:10]} are outside {first_id}..{num_outputs - 1} "
                             f"(the model has {num_outputs} outputs{background})")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{source}: duplicate entries in category_ids {ids}")
    if class_names is None:
        return ids, _default_names(ids, num_outputs)
    names = [str(n) for n in class_names]
    if len(names) != len(ids):
        raise ValueError(f"{source}: {len(names)} class_names for {len(ids)} category_ids")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: duplicate entries in class_names")
    return ids, names


def convert_fasterrcnn_resnet50_fpn(
    state_dict: Mapping[str, Any],
    *,
    category_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    norm_eps: float = 0.0,
    source: str = "<state_dict>",
    progress: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Converts a torchvision ``fasterrcnn_resnet50_fpn`` (v1) state_dict to jaxdet ``FasterRCNN`` variables.

    Args:
      state_dict: ``{name: torch.Tensor | np.ndarray}``, e.g. from :func:`load_torchvision_state_dict`.
        Both RPN-head key styles are accepted (``rpn.head.conv.0.0.*`` and pre-0.13 ``rpn.head.conv.*``),
        as are both FPN styles; ``*.num_batches_tracked`` buffers (BatchNorm2d models) are ignored.
      category_ids: torchvision output indices (= COCO category ids for the COCO model) that become the
        contiguous jaxdet classes 0..C-1, in that order; distinct ints in 1..K-1 (K = torchvision outputs).
        None keeps every output 1..K-1 (C = K - 1; category id = torchvision label).
        Use :data:`COCO_CATEGORY_IDS` for the 80 COCO-2017 classes.
      class_names: C names (unique) for the meta; None: COCO names (unused COCO ids become
        ``'N/A (id 12)'``), or ``'class_<id>'`` for a model that does not have 91 outputs.
      norm_eps: FrozenBN epsilon the weights need, recorded in the meta: 0.0 for torchvision's published
        COCO weights, 1e-5 for a model built with ``weights=None`` (``BatchNorm2d`` in eval mode).
      source: name of the file (or description) used in error messages and ``meta["source"]``.
      progress: show a tqdm bar (with ETA) over the backbone tensors.

    Returns:
      ``(variables, meta)``. ``variables`` = ``{"params": {"backbone", "neck", "rpn_head", "box_head"},
      "frozen": {"backbone"}}`` nested dicts of float32 numpy arrays (conv kernels HWIO, Dense kernels
      [in, out]), the tree of ``jaxdet.modeling.build.build_detector`` with ``num_classes = C``.
      ``meta`` (JSON-able): ``source``, ``format`` ('torchvision'), ``arch``, ``num_classes``,
      ``category_ids``, ``class_names`` and ``config_overrides`` (:func:`fasterrcnn_config_overrides`).

    Raises:
      ValueError: missing / unexpected keys (listed, with ``source``), mis-shaped arrays, bad
        ``category_ids`` (out of range, duplicates, empty) or ``class_names`` (wrong length, duplicates).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state_dict (mapping of name -> tensor), got {type(state_dict).__name__}")
    sd = {str(k): v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")}

    # ---- strict key accounting for everything outside backbone.body / backbone.fpn
    has_new = any(k.startswith(_RPN_NEW) for k in sd)
    has_old = any(k in (_RPN_OLD + "weight", _RPN_OLD + "bias") for k in sd)
    if has_new and has_old:
        raise ValueError(f"{source}: both {_RPN_NEW}* and {_RPN_OLD}{{weight,bias}} present (mixed key styles)")
    rpn_conv = _RPN_OLD if has_old else _RPN_NEW
    expected_heads = set(_HEAD_KEYS) | {rpn_conv + "weight", rpn_conv + "bias"}
    heads_given = {k for k in sd if not k.startswith(("backbone.body.", "backbone.fpn."))}
    stray_body = sorted(k for k in sd if k.startswith("backbone.body.fc."))  # a classifier has no place here
    check_keys(expected_heads, heads_given | set(stray_body), source)

    # ---- backbone and FPN (strict on their own prefixes)
    body = convert_torchvision_resnet(sd, depth=50, prefix="backbone.body.", source=source, progress=progress)
    fpn = convert_torchvision_fpn(sd, prefix="backbone.fpn.", source=source)["params"]
    want_fpn = {f"{t}_{i}" for t in ("inner", "layer") for i in range(4)}
    if set(fpn) != want_fpn:
        raise ValueError(f"{source}: backbone.fpn has modules {sorted(fpn)}, expected {sorted(want_fpn)} "
                         "(4 levels, LastLevelMaxPool; not a RetinaNet/FCOS FPN)")
    fpn_ch = fpn["layer_0"]["kernel"].shape[-1]

    # ---- RPN head
    w_conv = sd[rpn_conv + "weight"]
    expect_shape(rpn_conv + "weight", w_conv, (fpn_ch, fpn_ch, 3, 3), source)
    num_anchors = int(np.shape(sd["rpn.head.cls_logits.weight"])[0])
    expect_shape("rpn.head.cls_logits.weight", sd["rpn.head.cls_logits.weight"], (num_anchors, fpn_ch, 1, 1), source)
    expect_shape("rpn.head.bbox_pred.weight", sd["rpn.head.bbox_pred.weight"], (4 * num_anchors, fpn_ch, 1, 1),
                 source)
    rpn_head = {
        "conv": {"kernel": conv_oihw_to_hwio(w_conv), "bias": as_float32(sd[rpn_conv + "bias"])},
        "cls_logits": {"kernel": conv_oihw_to_hwio(sd["rpn.head.cls_logits.weight"]),
                       "bias": as_float32(sd["rpn.head.cls_logits.bias"])},
        "bbox_pred": {"kernel": conv_oihw_to_hwio(sd["rpn.head.bbox_pred.weight"]),
                      "bias": as_float32(sd["rpn.head.bbox_pred.bias"])},
    }
    for name in ("conv", "cls_logits", "bbox_pred"):
        expect_shape(f"rpn.head.{name} bias", rpn_head[name]["bias"], (rpn_head[name]["kernel"].shape[-1],), source)

    # ---- box head: fc6 input rows (c, y, x) -> (y, x, c)
    w6 = to_numpy(sd["roi_heads.box_head.fc6.weight"])
    if w6.ndim != 2 or w6.shape[1] % fpn_ch:
        raise ValueError(f"{source}: roi_heads.box_head.fc6.weight has shape {w6.shape}, expected "
                         f"[fc_dim, {fpn_ch} * S * S]")
    fc_dim, s2 = w6.shape[0], w6.shape[1] // fpn_ch
    s = int(round(np.sqrt(s2)))
    if s * s != s2:
        raise ValueError(f"{source}: fc6 input {w6.shape[1]} is not {fpn_ch} * S * S")
    fc6_kernel = w6.reshape(fc_dim, fpn_ch, s, s).transpose(2, 3, 1, 0).reshape(s * s * fpn_ch, fc_dim)
    expect_shape("roi_heads.box_head.fc6.bias", sd["roi_heads.box_head.fc6.bias"], (fc_dim,), source)
    expect_shape("roi_heads.box_head.fc7.weight", sd["roi_heads.box_head.fc7.weight"], (fc_dim, fc_dim), source)
    expect_shape("roi_heads.box_head.fc7.bias", sd["roi_heads.box_head.fc7.bias"], (fc_dim,), source)

    # ---- predictor with class selection
    w_cls = to_numpy(sd["roi_heads.box_predictor.cls_score.weight"])
    if w_cls.ndim != 2 or w_cls.shape[1] != fc_dim or w_cls.shape[0] < 2:
        raise ValueError(f"{source}: roi_heads.box_predictor.cls_score.weight has shape {w_cls.shape}, "
                         f"expected [K >= 2, {fc_dim}]")
    k = w_cls.shape[0]
    expect_shape("roi_heads.box_predictor.cls_score.bias", sd["roi_heads.box_predictor.cls_score.bias"], (k,), source)
    expect_shape("roi_heads.box_predictor.bbox_pred.weight", sd["roi_heads.box_predictor.bbox_pred.weight"],
                 (4 * k, fc_dim), source)
    expect_shape("roi_heads.box_predictor.bbox_pred.bias", sd["roi_heads.box_predictor.bbox_pred.bias"], (4 * k,),
                 source)
    ids, names = select_categories(category_ids, class_names, k, source)
    rows = np.asarray([0] + ids, np.int64)                                  # logit rows: background first
    box_rows = (4 * rows[:, None] + np.arange(4)[None, :]).reshape(-1)      # class-major (dx, dy, dw, dh) blocks
    w_box = to_numpy(sd["roi_heads.box_predictor.bbox_pred.weight"])
    box_head = {
        "fc6": {"kernel": as_float32(fc6_kernel),
                "bias": as_float32(sd["roi_heads.box_head.fc6.bias"])},
        "fc7": {"kernel": linear_to_dense(sd["roi_heads.box_head.fc7.weight"]),
                "bias": as_float32(sd["roi_heads.box_head.fc7.bias"])},
        "cls_score": {"kernel": linear_to_dense(w_cls[rows]),
                      "bias": as_float32(sd["roi_heads.box_predictor.cls_score.bias"])[rows]},
        "bbox_pred": {"kernel": linear_to_dense(w_box[box_rows]),
                      "bias": as_float32(sd["roi_heads.box_predictor.bbox_pred.bias"])[box_rows]},
    }

    variables = {
        "params": {"backbone": body["params"], "neck": fpn, "rpn_head": rpn_head, "box_head": box_head},
        "frozen": {"backbone": body["frozen"]},
    }
    meta = torchvision_meta(_ARCH, source, ids, names, fasterrcnn_config_overrides(len(ids), norm_eps))
    return variables, meta


def categories_from_annotations(path: str | os.PathLike) -> Tuple[list, list]:
    """``(category_ids, class_names)`` of a COCO annotation json's ``categories``, sorted by id.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not valid json, or no ``categories`` list of ``{"id", "name"}`` dicts.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid json file ({e})") from e
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats or not all(isinstance(c, dict) and "id" in c and "name" in c
                                                          for c in cats):
        raise ValueError(f"{path}: no 'categories' list of {{'id', 'name'}} entries (not a COCO annotation file?)")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    return [int(c["id"]) for c in cats], [str(c["name"]) for c in cats]


#: ``--arch`` -> (module, converter function, default (category ids, names) or None for the 80 COCO classes).
ARCHITECTURES = {
    "fasterrcnn_resnet50_fpn": ("checkpoints_convert.torchvision_detector", "convert_fasterrcnn_resnet50_fpn", None),
    "maskrcnn_resnet50_fpn": ("checkpoints_convert.torchvision_mask_rcnn", "convert_maskrcnn_resnet50_fpn", None),
    "keypointrcnn_resnet50_fpn": ("checkpoints_convert.torchvision_keypoint_rcnn",
                                  "convert_keypointrcnn_resnet50_fpn", ([1], ["person"])),
    "retinanet_resnet50_fpn": ("checkpoints_convert.torchvision_retinanet", "convert_retinanet_resnet50_fpn", None),
    "fcos_resnet50_fpn": ("checkpoints_convert.torchvision_fcos", "convert_fcos_resnet50_fpn", None),
}


#: FrozenBN epsilon of torchvision's published weights per ``--arch`` (0.0 where torchvision calls
#: ``overwrite_eps(model, 0.0)`` on loading them).
DEFAULT_NORM_EPS = {"fcos_resnet50_fpn": 1e-5}


def converter_for(arch: str):
    """The converter function of a torchvision detector name (a key of :data:`ARCHITECTURES`).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    import importlib  # noqa: PLC0415

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown --arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    module, fn, _ = ARCHITECTURES[arch]
    return getattr(importlib.import_module(module), fn)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m checkpoints_convert.torchvision_detector",
        description="Convert torchvision detector weights (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS; R50-FPN v1) "
                    "into a jaxdet checkpoint folder "
                    "(readable with jaxdet.engine.checkpoint.load_variables and python -m jaxdet.evaluate).")
    p.add_argument("--arch", default="fasterrcnn_resnet50_fpn", choices=sorted(ARCHITECTURES),
                   help="the torchvision detector the weights belong to (default fasterrcnn_resnet50_fpn)")
    p.add_argument("--weights", required=True, help="torchvision .pth state_dict, e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    p.add_argument("--output", required=True, help="output folder of the jaxdet checkpoint")
    p.add_argument("--norm-eps", type=float, default=None,
                   help="FrozenBN epsilon the weights need. Default: 0.0 for torchvision's published Faster/Mask/"
                        "Keypoint R-CNN and RetinaNet COCO weights (torchvision applies overwrite_eps(model, 0.0) to "
                        "them), 1e-5 for FCOS (its builder does not); 1e-5 for a model saved from torchvision built "
                        "with weights=None or trained with BatchNorm2d eps 1e-5")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--keep-all-classes", action="store_true",
                       help="keep every torchvision output 1..K-1 (90 for COCO, including unused ids) instead of the "
                            "80 COCO-2017 categories")
    group.add_argument("--categories-from", metavar="ANNOTATIONS_JSON",
                       help="take the category ids (= torchvision output indices) and names from a COCO annotation "
                            "json instead of the built-in COCO-2017 list")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (see the module docstring). Returns 0.

    Raises:
      FileNotFoundError: ``--weights`` or ``--categories-from`` missing.
      FileExistsError: ``--output`` exists and is not an empty folder (nothing is overwritten).
      ValueError: the weights file is unreadable, not a state_dict, or not a fasterrcnn_resnet50_fpn.
    """
    args = _parse_args(argv)
    if args.keep_all_classes:
        ids, names = None, None
    elif args.categories_from:
        ids, names = categories_from_annotations(args.categories_from)
    elif ARCHITECTURES[args.arch][2] is not None:
        ids, names = (list(v) for v in ARCHITECTURES[args.arch][2])
    else:
        ids, names = list(COCO_CATEGORY_IDS), list(COCO_CLASS_NAMES)
    convert = converter_for(args.arch)
    if args.norm_eps is None:
        args.norm_eps = DEFAULT_NORM_EPS.get(args.arch, 0.0)
    output = check_output_dir(args.output)  # before the (slow) conversion
    sd = load_torchvision_state_dict(args.weights)
    variables, meta = convert(sd, category_ids=ids, class_names=names, norm_eps=args.norm_eps,
                              source=os.fspath(args.weights), progress=True)
    from jaxdet.engine.checkpoint import save_variables  # noqa: PLC0415 - keeps `--help` fast

    path = save_variables(output, variables, meta)
    n = sum(int(np.size(v)) for v in flatten_tree(variables).values())
    print(f"converted {args.weights} ({args.arch}, {meta['num_classes']} classes, {n / 1e6:.1f}M values, "
          f"norm_eps={args.norm_eps}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
