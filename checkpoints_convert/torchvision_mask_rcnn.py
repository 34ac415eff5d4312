"""torchvision ``maskrcnn_resnet50_fpn`` (v1) state_dicts -> jaxdet ``MaskRCNN`` variables.

Everything but the mask branch is :func:`checkpoints_convert.torchvision_detector.convert_fasterrcnn_resnet50_fpn`
(same keys, classes, pixel convention and meta). The mask branch (``torchvision/models/detection/mask_rcnn.py``,
``MaskRCNNHeads`` and ``MaskRCNNPredictor``)::

    roi_heads.mask_head.{i}.0.{weight,bias}, i = 0..3     -> params/mask_head/mask_fcn{i+1}/{kernel,bias}  (HWIO)
      (torchvision < 0.13 files: roi_heads.mask_head.mask_fcn{i+1}.{weight,bias})
    roi_heads.mask_predictor.conv5_mask.{weight,bias}     -> params/mask_head/conv5_mask/*  (transposed conv)
    roi_heads.mask_predictor.mask_fcn_logits.{weight,bias} -> params/mask_head/mask_fcn_logits/*  (class rows
                                                              selected like the box predictor's)

Transposed conv: torchvision's ``ConvTranspose2d`` weight is stored (in, out, kh, kw) and computes
``y[s*i + a, s*j + b, o] += x[i, j, c] * w[c, o, a, b]``. A flax ``nn.ConvTranspose`` (default
``transpose_kernel=False``, kernel (kh, kw, in, out)) is a stride-dilated *convolution* (cross-correlation) of
the input, which applies the kernel spatially flipped; so the kernel is ``w`` transposed to (kh, kw, in, out)
and flipped in kh and kw (:func:`conv_transpose_to_flax`, tested against torch on a single layer in
``tests/modeling/test_mask_rcnn.py``).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from checkpoints_convert.common import (
    as_float32,
    check_keys,
    conv_oihw_to_hwio,
    conv_transpose_to_flax,
    expect_shape,
    to_numpy,
)
from checkpoints_convert.torchvision_detector import convert_fasterrcnn_resnet50_fpn

# conv_transpose_to_flax lives in common.py; re-exported here, where the mask converter introduced it.
__all__ = ["convert_maskrcnn_resnet50_fpn", "conv_transpose_to_flax", "maskrcnn_config_overrides"]

_ARCH = "maskrcnn_resnet50_fpn"
_NUM_CONVS = 4  # MaskRCNNHeads of maskrcnn_resnet50_fpn (v1): layers (256, 256, 256, 256)
_MASK_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
_PREDICTOR_KEYS = tuple(f"roi_heads.mask_predictor.{m}.{t}" for m in ("conv5_mask", "mask_fcn_logits")
                        for t in ("weight", "bias"))


def maskrcnn_config_overrides(faster_overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``fasterrcnn_config_overrides`` plus the mask branch's RoIAlign (torchvision: 14x14, sampling ratio 2;
    ``aligned`` is the box head's ``model.roi_heads.pooler_aligned``, False)."""
    out = dict(faster_overrides)
    out["model.mask_head.pooler_resolution"] = 14
    out["model.mask_head.sampling_ratio"] = 2
    return out


def _mask_conv_keys(sd: Mapping[str, Any], source: str) -> Tuple[list, list]:
    """Weight and bias keys of the 4 mask convs, in the file's key style (new ``{i}.0.`` or old ``mask_fcn``)."""
    new = [k for k in sd if re.match(r"^roi_heads\.mask_head\.\d+\.0\.", k)]
    old = [k for k in sd if k.startswith("roi_heads.mask_head.mask_fcn")]
    if new and old:
        raise ValueError(f"{source}: both roi_heads.mask_head.<i>.0.* and roi_heads.mask_head.mask_fcn<i>.* "
                         "present (mixed key styles)")
    if old:
        names = [f"roi_heads.mask_head.mask_fcn{i + 1}." for i in range(_NUM_CONVS)]
    else:
        names = [f"roi_heads.mask_head.{i}.0." for i in range(_NUM_CONVS)]
    return [n + "weight" for n in names], [n + "bias" for n in names]


def convert_maskrcnn_resnet50_fpn(
    state_dict: Mapping[str, Any],
    *,
    category_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    norm_eps: float = 0.0,
    source: str = "<state_dict>",
    progress: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Converts a torchvision ``maskrcnn_resnet50_fpn`` (v1) state_dict to jaxdet ``MaskRCNN`` variables.

    Args (as :func:`~checkpoints_convert.torchvision_detector.convert_fasterrcnn_resnet50_fpn`):
      state_dict: ``{name: torch.Tensor | np.ndarray}``; both key styles of the RPN, FPN and mask head
        (``roi_heads.mask_head.{i}.0.*`` and pre-0.13 ``roi_heads.mask_head.mask_fcn{i+1}.*``) are accepted.
      category_ids: torchvision output indices (COCO category ids) that become the contiguous classes 0..C-1,
        applied to the box predictor *and* the mask predictor's class channels; None keeps all outputs.
      class_names: C names for the meta (None: COCO names / ``class_<id>``).
      norm_eps: FrozenBN epsilon the weights need (0.0 for torchvision's published COCO weights, 1e-5 for a
        model built with ``weights=None``).
      source: file name (or description) for error messages and ``meta["source"]``.
      progress: tqdm bar over the backbone tensors.

    Returns:
      ``(variables, meta)``: the Faster R-CNN tree plus ``params/mask_head`` (``mask_fcn1..4``, ``conv5_mask``,
      ``mask_fcn_logits``; kernels HWIO, float32 numpy), the tree of ``build_detector`` for
      ``configs/mask_rcnn.py`` with ``num_classes = C``. ``meta`` as for Faster R-CNN with ``arch``
      ``'maskrcnn_resnet50_fpn'`` and :func:`maskrcnn_config_overrides`.

    Raises:
      ValueError: missing / unexpected keys (listed, naming ``source``), mixed key styles, mis-shaped arrays
        (e.g. a mask predictor with another number of classes than the box predictor), bad ``category_ids`` or
        ``class_names``.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state_dict (mapping of name -> tensor), got {type(state_dict).__name__}")
    sd = {str(k): v for k, v in state_dict.items()}
    mask_sd = {k: v for k, v in sd.items() if k.startswith(_MASK_PREFIXES)}
    rest = {k: v for k, v in sd.items() if not k.startswith(_MASK_PREFIXES)}
    w_keys, b_keys = _mask_conv_keys(mask_sd, source)
    check_keys(set(w_keys) | set(b_keys) | set(_PREDICTOR_KEYS), mask_sd, source)

    variables, meta = convert_fasterrcnn_resnet50_fpn(rest, category_ids=category_ids, class_names=class_names,
                                                      norm_eps=norm_eps, source=source, progress=progress)

    # ---- MaskRCNNHeads: 3x3 convs, input = FPN channels
    head: Dict[str, Any] = {}
    in_ch = variables["params"]["neck"]["layer_0"]["kernel"].shape[-1]
    for i, (wk, bk) in enumerate(zip(w_keys, b_keys)):
        w = to_numpy(mask_sd[wk])
        if w.ndim != 4 or w.shape[1:] != (in_ch, 3, 3):
            raise ValueError(f"{source}: {wk} has shape {w.shape}, expected [out, {in_ch}, 3, 3]")
        expect_shape(bk, mask_sd[bk], (w.shape[0],), source)
        head[f"mask_fcn{i + 1}"] = {"kernel": conv_oihw_to_hwio(w), "bias": as_float32(mask_sd[bk])}
        in_ch = w.shape[0]

    # ---- MaskRCNNPredictor: transposed conv, then 1x1 class logits (rows [0] + ids, as the box predictor)
    w5 = to_numpy(mask_sd["roi_heads.mask_predictor.conv5_mask.weight"])
    if w5.ndim != 4 or w5.shape[0] != in_ch or w5.shape[2:] != (2, 2):
        raise ValueError(f"{source}: roi_heads.mask_predictor.conv5_mask.weight has shape {w5.shape}, expected "
                         f"[{in_ch}, dim_reduced, 2, 2]")
    dim_reduced = w5.shape[1]
    expect_shape("roi_heads.mask_predictor.conv5_mask.bias", mask_sd["roi_heads.mask_predictor.conv5_mask.bias"],
                 (dim_reduced,), source)
    k = int(np.shape(rest["roi_heads.box_predictor.cls_score.weight"])[0])
    expect_shape("roi_heads.mask_predictor.mask_fcn_logits.weight",
                 mask_sd["roi_heads.mask_predictor.mask_fcn_logits.weight"], (k, dim_reduced, 1, 1), source)
    expect_shape("roi_heads.mask_predictor.mask_fcn_logits.bias",
                 mask_sd["roi_heads.mask_predictor.mask_fcn_logits.bias"], (k,), source)
    rows = np.asarray([0] + list(meta["category_ids"]), np.int64)
    w_logits = to_numpy(mask_sd["roi_heads.mask_predictor.mask_fcn_logits.weight"])[rows]
    head["conv5_mask"] = {"kernel": conv_transpose_to_flax(w5),
                          "bias": as_float32(mask_sd["roi_heads.mask_predictor.conv5_mask.bias"])}
    head["mask_fcn_logits"] = {
        "kernel": conv_oihw_to_hwio(w_logits),
        "bias": as_float32(mask_sd["roi_heads.mask_predictor.mask_fcn_logits.bias"])[rows]}

    variables["params"]["mask_head"] = head
    meta["arch"] = _ARCH
    meta["config_overrides"] = maskrcnn_config_overrides(meta["config_overrides"])
    return variables, meta
