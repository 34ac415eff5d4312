"""torchvision ``retinanet_resnet50_fpn`` (v1) state_dicts -> jaxdet ``RetinaNet`` variables.

Source layout: ``torchvision/models/detection/retinanet.py`` (``RetinaNetHead``,
``RetinaNetClassificationHead``, ``RetinaNetRegressionHead``)::

    backbone.body.*                                   -> params/backbone, frozen/backbone (convert_torchvision_resnet)
    backbone.fpn.{inner,layer}_blocks.{0,1,2}.*       -> params/neck/{inner_i,layer_i}   (C3..C5; no P2)
    backbone.fpn.extra_blocks.{p6,p7}.*               -> params/neck/{p6,p7}             (convert_torchvision_fpn)
    head.classification_head.conv.{i}.0.{weight,bias} -> params/head/classification_head/conv_{i}/{kernel,bias}
      (torchvision < 0.13 files, e.g. retinanet_resnet50_fpn_coco-eeacb38b.pth: conv.{2i}.{weight,bias})
    head.classification_head.cls_logits.*             -> params/head/classification_head/cls_logits/* (columns selected)
    head.regression_head.conv.{i}.0.* (or conv.{2i}.*) -> params/head/regression_head/conv_{i}/*
    head.regression_head.bbox_reg.*                   -> params/head/regression_head/bbox_reg/*

Classes: torchvision's COCO RetinaNet has K = 91 sigmoid outputs per anchor indexed by COCO category id (output 0
is the unused "background" slot, ids such as 12 unused). ``cls_logits`` has ``A * K`` output channels, channel
``a * K + k`` = anchor a, output k; jaxdet uses contiguous classes 0..C-1, so for ``category_ids`` ``ids`` the
converter keeps channels ``a * K + ids[c]`` (anchor-major, then class), i.e. the selection is made *per anchor*.

Pixel convention and switches (``meta["config_overrides"]``): RGB, ImageNet mean/std in 0..255 units, stride on the
3x3 conv, FrozenBN eps (0.0 for torchvision's published COCO weights, 1e-5 for a model built with ``weights=None``),
and the input of the P6/P7 block (``P5`` for v1's ``LastLevelP6P7(256, 256)``, read from the p6 weight shape).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from checkpoints_convert.common import as_float32, check_keys, conv_oihw_to_hwio, expect_shape, to_numpy
from checkpoints_convert.torchvision_backbone import convert_torchvision_fpn, convert_torchvision_resnet
from checkpoints_convert.torchvision_detector import (
    select_categories,
    torchvision_config_overrides,
    torchvision_meta,
)

__all__ = ["convert_retinanet_resnet50_fpn", "retinanet_config_overrides"]

_ARCH = "retinanet_resnet50_fpn"
_NUM_CONVS = 4
_SUBNETS = (("classification_head", "cls_logits"), ("regression_head", "bbox_reg"))


def retinanet_config_overrides(num_classes: int, norm_eps: float, p6p7_in: str = "P5") -> Dict[str, Any]:
    """The jaxdet config fields (dotted keys of ``configs/retinanet.py``) that torchvision's RetinaNet weights need:
    pixel convention (RGB, ImageNet mean/std in 0..255 units), stride on the 3x3 conv, FrozenBN ``norm_eps``, the
    P6/P7 input and the number of classes. ``model.fpn.p6p7_in`` also makes loading into a config without it (an
    R-CNN config) fail loudly."""
    return {**torchvision_config_overrides(num_classes, norm_eps), "model.fpn.p6p7_in": p6p7_in}


def _conv_prefixes(sd: Mapping[str, Any], subnet: str, source: str) -> Tuple[list, str]:
    """The per-conv key prefixes of one subnet (new ``conv.{i}.0.`` or old ``conv.{2i}.`` layout)."""
    base = f"head.{subnet}.conv."
    new = [f"{base}{i}.0." for i in range(_NUM_CONVS)]
    old = [f"{base}{2 * i}." for i in range(_NUM_CONVS)]
    has_new = any(k.startswith(tuple(new)) for k in sd)
    has_old = any(p + t in sd for p in old for t in ("weight", "bias"))
    if has_new and has_old:
        raise ValueError(f"{source}: both {base}<i>.0.* and {base}<2i>.* present (mixed key styles)")
    return (old if has_old else new), base


def convert_retinanet_resnet50_fpn(
    state_dict: Mapping[str, Any],
    *,
    category_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    norm_eps: float = 0.0,
    source: str = "<state_dict>",
    progress: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Converts a torchvision ``retinanet_resnet50_fpn`` (v1) state_dict to jaxdet ``RetinaNet`` variables.

    Args:
      state_dict: ``{name: torch.Tensor | np.ndarray}``, e.g. from
        :func:`checkpoints_convert.torchvision_backbone.load_torchvision_state_dict`. Both head key styles
        (``conv.{i}.0.*`` and pre-0.13 ``conv.{2i}.*``) and both FPN styles are accepted; ``*.num_batches_tracked``
        buffers (BatchNorm2d models) are ignored.
      category_ids: torchvision outputs (= COCO category ids for the COCO model) that become the contiguous jaxdet
        classes 0..C-1, in that order; distinct ints in 0..K-1 (K = torchvision outputs per anchor; 0 is the
        background slot of torchvision's convention, a sigmoid output like the others, selectable for checks).
        None keeps outputs 1..K-1 (class c = torchvision label c + 1). Use
        :data:`checkpoints_convert.torchvision_detector.COCO_CATEGORY_IDS` for the 80 COCO-2017 classes.
      class_names: C unique names for the meta; None: COCO names for a 91-output model (unused ids become
        ``'N/A (id 12)'``), else ``'class_<id>'``.
      norm_eps: FrozenBN epsilon the weights need (0.0 for torchvision's published COCO weights, 1e-5 for a model
        built with ``weights=None``), recorded in the meta.
      source: file name (or description) for error messages and ``meta["source"]``.
      progress: show a tqdm bar over the backbone tensors.

    Returns:
      ``(variables, meta)``: ``variables = {"params": {"backbone", "neck", "head"}, "frozen": {"backbone"}}`` nested
      dicts of float32 numpy arrays (conv kernels HWIO), the tree of ``jaxdet.modeling.build.build_detector`` for
      ``configs/retinanet.py`` with ``num_classes = C``; ``meta`` (JSON-able): ``source``, ``format``
      ('torchvision'), ``arch``, ``num_classes``, ``category_ids``, ``class_names``, ``config_overrides``
      (:func:`retinanet_config_overrides`).

    Raises:
      ValueError: missing / unexpected keys (listed, with ``source``), mis-shaped arrays, an FPN that is not
        3 levels + P6/P7, bad ``category_ids`` (out of range, duplicates, empty) or ``class_names`` (wrong length,
        duplicates).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state_dict (mapping of name -> tensor), got {type(state_dict).__name__}")
    sd = {str(k): v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")}

    # ---- strict key accounting outside backbone.body / backbone.fpn
    conv_prefixes = {subnet: _conv_prefixes(sd, subnet, source)[0] for subnet, _ in _SUBNETS}
    expected = {f"head.{subnet}.{pred}.{t}" for subnet, pred in _SUBNETS for t in ("weight", "bias")}
    expected |= {p + t for prefixes in conv_prefixes.values() for p in prefixes for t in ("weight", "bias")}
    given = {k for k in sd if not k.startswith(("backbone.body.", "backbone.fpn."))}
    stray_body = {k for k in sd if k.startswith("backbone.body.fc.")}
    check_keys(expected, given | stray_body, source)

    # ---- backbone and FPN
    body = convert_torchvision_resnet(sd, depth=50, prefix="backbone.body.", source=source, progress=progress)
    fpn = convert_torchvision_fpn(sd, prefix="backbone.fpn.", source=source)["params"]
    want_fpn = {f"{t}_{i}" for t in ("inner", "layer") for i in range(3)} | {"p6", "p7"}
    if set(fpn) != want_fpn:
        raise ValueError(f"{source}: backbone.fpn has modules {sorted(fpn)}, expected {sorted(want_fpn)} "
                         "(C3..C5 with LastLevelP6P7; not an R-CNN FPN)")
    ch = fpn["layer_0"]["kernel"].shape[-1]
    p6_in = fpn["p6"]["kernel"].shape[2]
    p6p7_in = "P5" if p6_in == ch else "C5"
    if p6p7_in == "C5" and p6_in != fpn["inner_2"]["kernel"].shape[2]:
        raise ValueError(f"{source}: backbone.fpn.extra_blocks.p6 takes {p6_in} channels, neither P5 ({ch}) nor C5")

    # ---- head
    w_cls = to_numpy(sd["head.classification_head.cls_logits.weight"])
    w_box = to_numpy(sd["head.regression_head.bbox_reg.weight"])
    if w_box.ndim != 4 or w_box.shape[0] % 4:
        raise ValueError(f"{source}: head.regression_head.bbox_reg.weight has shape {w_box.shape}, expected "
                         f"[4 * A, {ch}, 3, 3]")
    a = w_box.shape[0] // 4
    expect_shape("head.regression_head.bbox_reg.weight", w_box, (4 * a, ch, 3, 3), source)
    expect_shape("head.regression_head.bbox_reg.bias", sd["head.regression_head.bbox_reg.bias"], (4 * a,), source)
    if w_cls.ndim != 4 or w_cls.shape[0] % a:
        raise ValueError(f"{source}: head.classification_head.cls_logits.weight has shape {w_cls.shape}, expected "
                         f"[{a} * K, {ch}, 3, 3]")
    k = w_cls.shape[0] // a
    expect_shape("head.classification_head.cls_logits.weight", w_cls, (a * k, ch, 3, 3), source)
    expect_shape("head.classification_head.cls_logits.bias", sd["head.classification_head.cls_logits.bias"],
                 (a * k,), source)
    ids, names = select_categories(category_ids, class_names, k, source, first_id=0)  # 0: a sigmoid output too
    columns = (np.arange(a)[:, None] * k + np.asarray(ids, np.int64)[None, :]).reshape(-1)  # per anchor, per class

    head: Dict[str, Any] = {}
    for subnet, pred in _SUBNETS:
        tree = {}
        for i, p in enumerate(conv_prefixes[subnet]):
            expect_shape(p + "weight", sd[p + "weight"], (ch, ch, 3, 3), source)
            expect_shape(p + "bias", sd[p + "bias"], (ch,), source)
            tree[f"conv_{i}"] = {"kernel": conv_oihw_to_hwio(sd[p + "weight"]), "bias": as_float32(sd[p + "bias"])}
        w = to_numpy(sd[f"head.{subnet}.{pred}.weight"])
        b = as_float32(sd[f"head.{subnet}.{pred}.bias"])
        if pred == "cls_logits":
            w, b = w[columns], b[columns]
        tree[pred] = {"kernel": conv_oihw_to_hwio(w), "bias": np.ascontiguousarray(b)}
        head[subnet] = tree

    variables = {
        "params": {"backbone": body["params"], "neck": fpn, "head": head},
        "frozen": {"backbone": body["frozen"]},
    }
    meta = torchvision_meta(_ARCH, source, ids, names, retinanet_config_overrides(len(ids), norm_eps, p6p7_in))
    return variables, meta
