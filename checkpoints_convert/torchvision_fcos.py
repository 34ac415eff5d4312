"""torchvision ``fcos_resnet50_fpn`` state_dicts -> jaxdet ``FCOS`` variables.

Source layout: ``torchvision/models/detection/fcos.py`` (``FCOSHead``, ``FCOSClassificationHead``,
``FCOSRegressionHead``), i = 0..3 the tower blocks::

    backbone.body.*                                   -> params/backbone, frozen/backbone (convert_torchvision_resnet)
    backbone.fpn.{inner,layer}_blocks.{0,1,2}.*       -> params/neck/{inner_i,layer_i}   (C3..C5)
    backbone.fpn.extra_blocks.{p6,p7}.*               -> params/neck/{p6,p7}             (P6 from P5)
    head.classification_head.conv.{3i}.{weight,bias}  -> params/head/cls_conv{i}/{kernel,bias}   (HWIO)
    head.classification_head.conv.{3i+1}.{weight,bias}-> params/head/cls_norm{i}/{scale,bias}    (GroupNorm)
    head.classification_head.cls_logits.*             -> params/head/cls_logits/*     (class channels selected)
    head.regression_head.conv.{3i}.* / .{3i+1}.*      -> params/head/bbox_conv{i}/*, bbox_norm{i}/*
    head.regression_head.bbox_reg.*                   -> params/head/bbox_reg/*
    head.regression_head.bbox_ctrness.*               -> params/head/bbox_ctrness/*

Classes: torchvision's COCO FCOS has 91 sigmoid outputs indexed by COCO *category id* (output 0 and the unused
ids are never trained positive); jaxdet's classes are contiguous 0..C-1, and ``category_ids`` picks which
output channels become them (as :func:`checkpoints_convert.torchvision_detector.convert_fasterrcnn_resnet50_fpn`).

FrozenBN epsilon: unlike the R-CNN and RetinaNet v1 builders, ``fcos_resnet50_fpn`` does not call
``overwrite_eps(model, 0.0)``: the published FCOS weights use ``FrozenBatchNorm2d``'s default eps 1e-5, so that
is this converter's default.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from checkpoints_convert.common import as_float32, check_keys, conv_oihw_to_hwio, expect_shape
from checkpoints_convert.torchvision_backbone import convert_torchvision_fpn, convert_torchvision_resnet
from checkpoints_convert.torchvision_detector import (
    select_categories,
    torchvision_config_overrides,
    torchvision_meta,
)

__all__ = ["convert_fcos_resnet50_fpn", "fcos_config_overrides"]

_ARCH = "fcos_resnet50_fpn"
_TOWERS = {"classification_head": "cls", "regression_head": "bbox"}
_PREDICTORS = {"head.classification_head.cls_logits": "cls_logits", "head.regression_head.bbox_reg": "bbox_reg",
               "head.regression_head.bbox_ctrness": "bbox_ctrness"}


def fcos_config_overrides(num_classes: int, norm_eps: float, num_convs: int = 4) -> Dict[str, Any]:
    """The jaxdet config fields (dotted keys of ``configs/fcos.py``) that torchvision's FCOS weights need: pixel
    convention (RGB, ImageNet mean/std in 0..255 units), stride on the 3x3 conv, FrozenBN ``norm_eps``, P6 from
    P5, GroupNorm towers of ``num_convs`` blocks and the number of classes."""
    return {
        **torchvision_config_overrides(num_classes, norm_eps),
        "model.fpn.p6p7_in": "P5",
        "model.fcos.num_convs": int(num_convs),
        "model.fcos.head_norm": "gn",
    }


def convert_fcos_resnet50_fpn(
    state_dict: Mapping[str, Any],
    *,
    category_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    norm_eps: float = 1e-5,
    source: str = "<state_dict>",
    progress: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Converts a torchvision ``fcos_resnet50_fpn`` state_dict to jaxdet ``FCOS`` variables.

    Args:
      state_dict: ``{name: torch.Tensor | np.ndarray}``; ``*.num_batches_tracked`` buffers (BatchNorm2d models)
        are ignored; both FPN key styles are accepted.
      category_ids: torchvision output channels (= COCO category ids for the COCO model) that become the
        contiguous jaxdet classes 0..C-1, in that order; distinct ints in 1..K-1 (K = torchvision outputs).
        None keeps every output 1..K-1 (C = K - 1; category id = torchvision label). Use
        :data:`checkpoints_convert.torchvision_detector.COCO_CATEGORY_IDS` for the 80 COCO-2017 classes.
      class_names: C unique names for the meta; None: COCO names (``'N/A (id 12)'`` for unused ids) for a
        91-output model, else ``'class_<id>'``.
      norm_eps: FrozenBN epsilon the weights need, recorded in the meta: 1e-5 (the default) for torchvision's
        published FCOS weights and for a model built with ``weights=None``.
      source: file name (or description) used in error messages and ``meta["source"]``.
      progress: show a tqdm bar over the backbone tensors.

    Returns:
      ``(variables, meta)``: ``variables = {"params": {"backbone", "neck", "head"}, "frozen": {"backbone"}}``,
      nested dicts of float32 numpy arrays (conv kernels HWIO), the tree of
      ``jaxdet.modeling.build.build_detector`` for ``configs/fcos.py`` with ``num_classes = C``; ``meta``
      (JSON-able): ``source``, ``format`` ('torchvision'), ``arch``, ``num_classes``, ``category_ids``,
      ``class_names``, ``config_overrides`` (:func:`fcos_config_overrides`).

    Raises:
      ValueError: missing / unexpected keys (listed, naming ``source``), mis-shaped arrays, an FPN that is not
        C3..C5 + P6/P7, bad ``category_ids`` or ``class_names``.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state_dict (mapping of name -> tensor), "
                         f"got {type(state_dict).__name__}")
    sd = {str(k): v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")}

    # ---- strict key accounting outside backbone.body / backbone.fpn (the tower depth is read from the keys)
    tower_idx = [int(m.group(1)) for m in (re.fullmatch(r"head\.classification_head\.conv\.(\d+)\.weight", k)
                                           for k in sd) if m]
    num_convs = 1 + max(tower_idx, default=-1) // 3
    if num_convs == 0:
        raise ValueError(f"{source}: no head.classification_head.conv.* keys (not an FCOS state_dict?)")
    expected = {f"{p}.{leaf}" for p in _PREDICTORS for leaf in ("weight", "bias")}
    expected |= {f"head.{tower}.conv.{3 * i + j}.{leaf}" for tower in _TOWERS for i in range(num_convs)
                 for j in (0, 1) for leaf in ("weight", "bias")}
    given = {k for k in sd if not k.startswith(("backbone.body.", "backbone.fpn."))}
    check_keys(expected, given | {k for k in sd if k.startswith("backbone.body.fc.")}, source)

    body = convert_torchvision_resnet(sd, depth=50, prefix="backbone.body.", source=source, progress=progress)
    fpn = convert_torchvision_fpn(sd, prefix="backbone.fpn.", source=source)["params"]
    want_fpn = {f"{t}_{i}" for t in ("inner", "layer") for i in range(3)} | {"p6", "p7"}
    if set(fpn) != want_fpn:
        raise ValueError(f"{source}: backbone.fpn has modules {sorted(fpn)}, expected {sorted(want_fpn)} "
                         "(C3..C5 with LastLevelP6P7, as fcos_resnet50_fpn)")
    ch = fpn["layer_0"]["kernel"].shape[-1]
    expect_shape("backbone.fpn.extra_blocks.p6.weight", fpn["p6"]["kernel"], (3, 3, ch, ch), source + " (P6 from P5)")

    head: Dict[str, Dict[str, Any]] = {}
    for tower, short in _TOWERS.items():
        for i in range(num_convs):
            conv, norm = f"head.{tower}.conv.{3 * i}.", f"head.{tower}.conv.{3 * i + 1}."
            expect_shape(conv + "weight", sd[conv + "weight"], (ch, ch, 3, 3), source)
            for name in (conv + "bias", norm + "weight", norm + "bias"):
                expect_shape(name, sd[name], (ch,), source)
            head[f"{short}_conv{i}"] = {"kernel": conv_oihw_to_hwio(sd[conv + "weight"]),
                                        "bias": as_float32(sd[conv + "bias"])}
            head[f"{short}_norm{i}"] = {"scale": as_float32(sd[norm + "weight"]), "bias": as_float32(sd[norm + "bias"])}

    w_cls = sd["head.classification_head.cls_logits.weight"]
    k = int(w_cls.shape[0])
    ids, names = select_categories(category_ids, class_names, k, source)
    for prefix, out in (("head.classification_head.cls_logits", k), ("head.regression_head.bbox_reg", 4),
                        ("head.regression_head.bbox_ctrness", 1)):
        expect_shape(prefix + ".weight", sd[prefix + ".weight"], (out, ch, 3, 3), source)
        expect_shape(prefix + ".bias", sd[prefix + ".bias"], (out,), source)
    for prefix, name in _PREDICTORS.items():
        kernel, bias = conv_oihw_to_hwio(sd[prefix + ".weight"]), as_float32(sd[prefix + ".bias"])
        if name == "cls_logits":
            kernel, bias = kernel[..., ids], bias[ids]
        head[name] = {"kernel": kernel, "bias": bias}

    variables = {"params": {"backbone": body["params"], "neck": fpn, "head": head},
                 "frozen": {"backbone": body["frozen"]}}
    meta = torchvision_meta(_ARCH, source, ids, names, fcos_config_overrides(len(ids), norm_eps, num_convs))
    return variables, meta
