"""torchvision ``keypointrcnn_resnet50_fpn`` state_dicts -> jaxdet ``KeypointRCNN`` variables.

Source layout: ``torchvision/models/detection/keypoint_rcnn.py`` (``KeypointRCNNHeads``, an ``nn.Sequential`` of
conv + ReLU pairs, and ``KeypointRCNNPredictor``); everything else is the Faster R-CNN layout, converted by
:func:`checkpoints_convert.torchvision_detector.convert_fasterrcnn_resnet50_fpn`::

    roi_heads.keypoint_head.{0,2,...,14}.{weight,bias}          -> params/keypoint_head/conv_fcn{1..8}/*  (HWIO)
    roi_heads.keypoint_predictor.kps_score_lowres.{weight,bias} -> params/keypoint_head/kps_score_lowres/*

``kps_score_lowres`` is a ``ConvTranspose2d(512, K, 4, stride=2, padding=1)`` whose weight is stored
(in, out, kh, kw). jaxdet's flax ``ConvTranspose`` (explicit padding 2 on the stride-dilated input, no
``transpose_kernel``) computes a plain convolution of the dilated input, so its kernel is torchvision's weight
transposed to (kh, kw, in, out) and flipped in both spatial axes
(:func:`checkpoints_convert.common.conv_transpose_to_flax`).

Classes: torchvision's keypoint model has 2 box outputs (background, person); by default the single class is
COCO category 1, "person" (``person_keypoints_*.json``). No CLI here: the torchvision_detector CLI dispatches on
the architecture.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from checkpoints_convert.common import as_float32, check_keys, conv_oihw_to_hwio, conv_transpose_to_flax, to_numpy
from checkpoints_convert.torchvision_detector import convert_fasterrcnn_resnet50_fpn

__all__ = ["convert_keypointrcnn_resnet50_fpn", "keypointrcnn_config_overrides"]

_ARCH = "keypointrcnn_resnet50_fpn"
_HEAD = "roi_heads.keypoint_head."
_PRED = "roi_heads.keypoint_predictor.kps_score_lowres."
_CONV_KEY = re.compile(r"^roi_heads\.keypoint_head\.(\d+)\.(weight|bias)$")


def keypointrcnn_config_overrides(num_classes: int, norm_eps: float, num_keypoints: int,
                                  conv_dims: Sequence[int]) -> Dict[str, Any]:
    """The Faster R-CNN switches (:func:`~checkpoints_convert.torchvision_detector.fasterrcnn_config_overrides`)
    plus the keypoint branch's: K (``model.keypoint_head.num_keypoints`` and ``data.num_keypoints``), the conv
    widths and the keypoint RoIAlign sampling ratio (2); keys of ``configs/keypoint_rcnn.py``."""
    from checkpoints_convert.torchvision_detector import fasterrcnn_config_overrides

    out = fasterrcnn_config_overrides(num_classes, norm_eps)
    out.update({
        "data.num_keypoints": int(num_keypoints),
        "model.keypoint_head.num_keypoints": int(num_keypoints),
        "model.keypoint_head.conv_dims": [int(d) for d in conv_dims],
        "model.keypoint_head.sampling_ratio": 2,
    })
    return out


def convert_keypointrcnn_resnet50_fpn(
    state_dict: Mapping[str, Any],
    *,
    category_ids: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    norm_eps: float = 0.0,
    source: str = "<state_dict>",
    progress: bool = False,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Converts a torchvision ``keypointrcnn_resnet50_fpn`` state_dict to jaxdet ``KeypointRCNN`` variables.

    Args:
      state_dict: ``{name: torch.Tensor | np.ndarray}`` (both RPN/FPN key styles, as the Faster R-CNN converter).
      category_ids: torchvision box outputs (1..num_outputs-1) that become the contiguous classes; None keeps
        all (torchvision's person model: [1]).
      class_names: names for the meta; None: ``["person"]`` for a 2-output model, else as the Faster R-CNN
        converter (``class_<id>``).
      norm_eps: FrozenBN epsilon the weights need (0.0 for torchvision's published COCO weights, which
        torchvision loads with ``overwrite_eps(model, 0.0)``; 1e-5 for a model built with ``weights=None``).
      source: file name (or description) for error messages and ``meta["source"]``.
      progress: tqdm bar over the backbone tensors.

    Returns:
      ``(variables, meta)``: the Faster R-CNN tree plus ``params/keypoint_head`` (``conv_fcn1..N``: kernel HWIO,
      bias; ``kps_score_lowres``: kernel [4, 4, in, K], bias [K]), float32 numpy; ``meta`` as the Faster R-CNN
      converter's with ``arch`` ``keypointrcnn_resnet50_fpn``, ``num_keypoints`` and the overrides of
      :func:`keypointrcnn_config_overrides`.

    Raises:
      ValueError: missing / unexpected keys (listed, with ``source``), mis-shaped arrays, a keypoint head whose
        conv indices are not 0, 2, 4, ... (conv + ReLU pairs), or bad ``category_ids`` / ``class_names``.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state_dict (mapping of name -> tensor), "
                         f"got {type(state_dict).__name__}")
    sd = {str(k): v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")}
    kp_keys = {k for k in sd if k.startswith((_HEAD, "roi_heads.keypoint_predictor."))}

    # ---- keypoint head: conv + ReLU pairs at even Sequential indices
    conv_idx = sorted({int(m.group(1)) for k in kp_keys if (m := _CONV_KEY.match(k))})
    if not conv_idx:
        raise ValueError(f"{source}: missing keys: no {_HEAD}<i>.weight (not a keypointrcnn_resnet50_fpn?)")
    if conv_idx != list(range(0, 2 * len(conv_idx), 2)):
        raise ValueError(f"{source}: keypoint_head conv indices {conv_idx}, expected 0, 2, 4, ... (conv + ReLU pairs)")
    expected = {f"{_HEAD}{i}.{p}" for i in conv_idx for p in ("weight", "bias")}
    expected |= {_PRED + "weight", _PRED + "bias"}
    check_keys(expected, kp_keys, source)

    rest = {k: v for k, v in sd.items() if k not in kp_keys}
    n_out = int(np.shape(rest.get("roi_heads.box_predictor.cls_score.weight", np.zeros((0,))))[0])
    if class_names is None and category_ids is None and n_out == 2:
        class_names = ["person"]
    variables, meta = convert_fasterrcnn_resnet50_fpn(rest, category_ids=category_ids, class_names=class_names,
                                                      norm_eps=norm_eps, source=source, progress=progress)

    fpn_ch = variables["params"]["neck"]["layer_0"]["kernel"].shape[-1]
    head, dims, in_ch = {}, [], fpn_ch
    for n, i in enumerate(conv_idx):
        w, b = sd[f"{_HEAD}{i}.weight"], sd[f"{_HEAD}{i}.bias"]
        shape = tuple(np.shape(w))
        if len(shape) != 4 or shape[1:] != (in_ch, 3, 3) or tuple(np.shape(b)) != (shape[0],):
            raise ValueError(f"{source}: {_HEAD}{i}.weight has shape {shape} (bias {tuple(np.shape(b))}), expected "
                             f"[out, {in_ch}, 3, 3] and [out]")
        head[f"conv_fcn{n + 1}"] = {"kernel": conv_oihw_to_hwio(w), "bias": as_float32(b)}
        dims.append(shape[0])
        in_ch = shape[0]
    w, b = to_numpy(sd[_PRED + "weight"]), sd[_PRED + "bias"]
    if w.ndim != 4 or w.shape[0] != in_ch or w.shape[2:] != (4, 4) or tuple(np.shape(b)) != (w.shape[1],):
        raise ValueError(f"{source}: {_PRED}weight has shape {tuple(w.shape)} (bias {tuple(np.shape(b))}), expected "
                         f"[{in_ch}, K, 4, 4] (ConvTranspose2d in, out, kh, kw) and [K]")
    num_keypoints = int(w.shape[1])
    head["kps_score_lowres"] = {"kernel": conv_transpose_to_flax(w), "bias": as_float32(b)}
    variables["params"]["keypoint_head"] = head

    meta = dict(meta, arch=_ARCH, num_keypoints=num_keypoints,
                config_overrides=keypointrcnn_config_overrides(meta["num_classes"], norm_eps, num_keypoints, dims))
    return variables, meta
