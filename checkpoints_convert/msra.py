"""MSRA / Detectron (Caffe2) ResNet ``.pkl`` weights -> jaxdet ResNet variables.

Source naming (Detectron's ImageNet backbones such as ``R-50.pkl``, ``R-101.pkl`` and FAIR's
``X-101-32x8d.pkl``; the same names detectron2's ``c2_model_loading.convert_basic_c2_names``
reads)::

    conv1_w                              stem conv            -> conv1/kernel
    res_conv1_bn_{s,b}                   stem norm            -> bn1
    res{2..5}_{i}_branch2{a,b,c}_w       block convs          -> layer{1..4}_{i}/conv{1,2,3}/kernel
    res{2..5}_{i}_branch2{a,b,c}_bn_*    block norms          -> layer{1..4}_{i}/bn{1,2,3}
    res{2..5}_0_branch1_w / _bn_*        shortcut             -> layer{s}_0/downsample_conv, downsample_bn

A norm is either affine-fused (``_bn_s`` scale, ``_bn_b`` bias: statistics folded in; they become
running_mean 0 and running_var 1 - eps so FrozenBN's scale is exactly ``s``, as detectron2's
``FrozenBatchNorm2d`` buffers) or full (``_bn_gamma``/``_bn_s``, ``_bn_beta``/``_bn_b``,
``_bn_running_mean``/``_bn_rm``, ``_bn_running_var``/``_bn_riv``). ``*_momentum`` blobs (SGD state)
and the classifier ``fc1000_*`` are skipped. Weights may sit under a ``'blobs'`` key or at top level.

MSRA models (R-50/R-101) put the stride on the first 1x1 conv: build them as
``ResNet(stride_in_1x1=True)`` and feed BGR pixels normalised with mean [103.53, 116.28, 123.675],
std [1, 1, 1] (0..255 scale). FAIR's Caffe2 ResNeXt (X-101-32x8d) has the stride on the 3x3 conv
and std [57.375, 57.12, 58.395].

CLI (writes a jaxdet checkpoint holding the detector's ``backbone`` variables and the pixel
convention, to initialise training with ``--config.model.weights=DIR``)::

    python -m checkpoints_convert.msra --weights R-50.pkl --arch R-50 --style msra --output weights/R-50-msra
    python -m checkpoints_convert.msra --weights X-101-32x8d.pkl --arch X-101-32x8d --style caffe2 \\
        --output weights/X-101-32x8d
    python -m jaxdet.train --config configs/faster_rcnn.py --config.model.weights=weights/R-50-msra ...

``--arch`` is one of :data:`MSRA_ARCHS`; ``--style`` defaults to the arch's (R-*: msra, X-*: caffe2).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from checkpoints_convert.common import (
    CAFFE2_PIXEL,
    MSRA_PIXEL,
    check_keys,
    check_shapes,
    conv_oihw_to_hwio,
    flatten_tree,
    load_pickle,
    to_numpy,
    unflatten_tree,
)
from checkpoints_convert.torchvision_backbone import (
    backbone_checkpoint,
    check_output_dir,
    resnet_variable_shapes,
    write_backbone_checkpoint,
)

__all__ = ["load_msra_blobs", "convert_msra_resnet", "convert_msra_resnet_file", "msra_metadata",
           "resnet_module_to_msra_name", "MSRA_ARCHS", "main"]

#: ``--arch`` name -> (depth, groups, width_per_group, style) of Detectron's ImageNet models
#: (detectron2 ``ImageNetPretrained/MSRA/R-{50,101}.pkl``, ``ImageNetPretrained/FAIR/X-101-32x8d.pkl``).
MSRA_ARCHS: Dict[str, Tuple[int, int, int, str]] = {
    "R-50": (50, 1, 64, "msra"),
    "R-101": (101, 1, 64, "msra"),
    "X-101-32x8d": (101, 32, 8, "caffe2"),
}

_BRANCH2 = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c",
            "bn1": "branch2a_bn", "bn2": "branch2b_bn", "bn3": "branch2c_bn",
            "downsample_conv": "branch1", "downsample_bn": "branch1_bn"}

# FrozenBN leaf -> accepted blob suffixes, first match wins
_BN_SUFFIXES = {"weight": ("_s", "_gamma"), "bias": ("_b", "_beta"),
                "running_mean": ("_rm", "_running_mean"), "running_var": ("_riv", "_running_var")}


def resnet_module_to_msra_name(module_path: Tuple[str, ...]) -> str:
    """Blob name (without ``_w`` / ``_bn_*`` leaf suffix for norms) of a jaxdet ResNet submodule.

    ``('conv1',)`` -> ``'conv1'``, ``('bn1',)`` -> ``'res_conv1_bn'``,
    ``('layer2_0', 'conv1')`` -> ``'res3_0_branch2a'``, ``('layer1_0', 'downsample_bn')`` ->
    ``'res2_0_branch1_bn'``. Raises ValueError for anything else."""
    if module_path == ("conv1",):
        return "conv1"
    if module_path == ("bn1",):
        return "res_conv1_bn"
    if len(module_path) == 2:
        m = re.fullmatch(r"layer(\d)_(\d+)", module_path[0])
        if m and module_path[1] in _BRANCH2:
            return f"res{int(m.group(1)) + 1}_{m.group(2)}_{_BRANCH2[module_path[1]]}"
    raise ValueError(f"no MSRA name for ResNet module {'/'.join(module_path)}")


def load_msra_blobs(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Read an MSRA/Detectron ``.pkl`` into ``{blob name: numpy array}`` (unwrapping ``'blobs'``).

    Raises FileNotFoundError (missing file) or ValueError (not a dict of arrays, e.g. a detectron2
    model checkpoint with PyTorch-style names under ``'model'``)."""
    obj = load_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("blobs"), Mapping):
        obj = obj["blobs"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        raise ValueError(f"{os.fspath(path)}: a detectron2 model checkpoint ('model' with PyTorch-style names), "
                         "not MSRA/Caffe2 blobs (conv1_w, res2_0_branch2a_w, ...)")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a dict of blobs, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray) and not hasattr(v, "detach"):
            raise ValueError(f"{os.fspath(path)}: blob {k!r} is a {type(v).__name__}, not an array")
        out[str(k)] = to_numpy(v)
    return out


def _skipped(name: str) -> bool:
    return name.endswith("_momentum") or name.startswith("fc1000_")


def convert_msra_resnet(
    blobs: Mapping[str, Any],
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    norm_eps: float = 1e-5,
    source: str = "<blobs>",
    progress: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Convert MSRA/Caffe2-named ResNet blobs to ``ResNet(depth, groups, width_per_group)`` variables.

    Args:
      blobs: ``{name: array}`` (a ``'blobs'`` sub-dict is unwrapped).
      depth, groups, width_per_group: the architecture (R-50: 50,1,64; X-101-32x8d: 101,32,8).
      norm_eps: the FrozenBN eps the model will use; fused norms get running_var = 1 - eps.
      source: name used in error messages (the file path).
      progress: show a tqdm bar over the modules (on stderr).

    Returns:
      ``{'params': ..., 'frozen': ...}`` nested dicts of float32 numpy arrays (conv kernels HWIO),
      for a ``norm='frozen_bn'`` ResNet. The stride placement is not stored in the weights: pass
      ``stride_in_1x1`` to the ResNet from :func:`msra_metadata`.

    Raises:
      ValueError: missing or unexpected blobs (listed), a norm with statistics half present,
        shape mismatches.
    """
    if isinstance(blobs.get("blobs"), Mapping):
        blobs = blobs["blobs"]
    reference = resnet_variable_shapes(depth, groups, width_per_group, "frozen_bn")
    ref_flat = flatten_tree(reference)
    modules = sorted({path[:-1] for path in ref_flat})  # (collection, *module_path)

    flat: Dict[Tuple[str, ...], np.ndarray] = {}
    used, missing, problems = set(), [], []
    for mod in tqdm(modules, desc="converting", unit="module", disable=not progress, leave=False):
        collection, module_path = mod[0], mod[1:]
        base = resnet_module_to_msra_name(module_path)
        if collection == "params":
            name = base + "_w"
            if name not in blobs:
                missing.append(name)
                continue
            used.add(name)
            flat[mod + ("kernel",)] = conv_oihw_to_hwio(blobs[name])
            continue
        found = {}
        for leaf, suffixes in _BN_SUFFIXES.items():
            for suf in suffixes:
                if base + suf in blobs:
                    found[leaf] = base + suf
                    break
        for leaf in ("weight", "bias"):
            if leaf not in found:
                missing.append(base + _BN_SUFFIXES[leaf][0])
        if ("running_mean" in found) != ("running_var" in found):
            problems.append(f"{base}: only one of running mean/var present")
        used.update(found.values())
        if "weight" not in found or "bias" not in found:
            continue
        c = np.shape(blobs[found["weight"]])[0]
        values = {
            "weight": to_numpy(blobs[found["weight"]]),
            "bias": to_numpy(blobs[found["bias"]]),
            "running_mean": to_numpy(blobs[found["running_mean"]]) if "running_mean" in found else np.zeros(c),
            "running_var": to_numpy(blobs[found["running_var"]]) if "running_var" in found else np.full(c, 1.0 - norm_eps),
        }
        for leaf, v in values.items():
            flat[mod + (leaf,)] = np.asarray(v, np.float32).reshape(-1)
    unexpected = {k for k in blobs if k not in used and not _skipped(k)}
    if missing or unexpected:
        check_keys(set(missing) | used, used | unexpected, source)  # raises, listing both
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    converted = unflatten_tree(flat)
    check_shapes(converted, reference, f"{source} (depth={depth}, groups={groups}, width_per_group={width_per_group})")
    return converted


def msra_metadata(style: str = "msra", norm_eps: float = 1e-5) -> Dict[str, Any]:
    """Pixel/architecture conventions: ``style='msra'`` (R-50/R-101 .pkl: BGR, std 1, stride in the
    1x1) or ``'caffe2'`` (X-101-32x8d: BGR, std [57.375, 57.12, 58.395], stride in the 3x3).
    Raises ValueError for another style."""
    if style == "msra":
        return dict(MSRA_PIXEL, stride_in_1x1=True, norm_eps=float(norm_eps))
    if style == "caffe2":
        return dict(CAFFE2_PIXEL, stride_in_1x1=False, norm_eps=float(norm_eps))
    raise ValueError(f"style must be 'msra' or 'caffe2', got {style!r}")


def convert_msra_resnet_file(
    path: str | os.PathLike,
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    style: str = "msra",
    norm_eps: float = 1e-5,
    progress: bool = False,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """Load an MSRA/Caffe2 ``.pkl`` and convert it; returns ``(variables, metadata)`` with
    ``metadata = msra_metadata(style, norm_eps)``. Raises like :func:`load_msra_blobs` and
    :func:`convert_msra_resnet`."""
    metadata = msra_metadata(style, norm_eps)
    blobs = load_msra_blobs(path)
    variables = convert_msra_resnet(blobs, depth, groups, width_per_group, norm_eps, source=os.fspath(path),
                                    progress=progress)
    return variables, metadata


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m checkpoints_convert.msra",
        description="Convert an MSRA/Detectron (Caffe2) ImageNet ResNet .pkl into a jaxdet backbone checkpoint "
                    "(load it with --config.model.weights=OUTPUT; its pixel convention is applied automatically).")
    p.add_argument("--weights", required=True, help="the .pkl, e.g. R-50.pkl, R-101.pkl, X-101-32x8d.pkl")
    p.add_argument("--arch", required=True, choices=list(MSRA_ARCHS),
                   help="architecture of the file (sets depth / groups / width_per_group)")
    p.add_argument("--output", required=True, help="new folder for the jaxdet checkpoint")
    p.add_argument("--style", choices=["msra", "caffe2"], default=None,
                   help="msra: BGR, std 1, stride in the 1x1 (MSRA R-50/R-101); caffe2: BGR, std "
                        "[57.375, 57.12, 58.395], stride in the 3x3 (FAIR X-101-32x8d). Default: the arch's")
    p.add_argument("--norm-eps", type=float, default=1e-5, help="FrozenBN eps of the target model (default 1e-5)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (see the module docstring). Returns 0.

    Raises FileNotFoundError (missing ``--weights``), FileExistsError (non-empty ``--output``) or
    ValueError (not MSRA blobs, or blobs/shapes that do not match ``--arch``), naming the file."""
    args = _parse_args(argv)
    depth, groups, width, default_style = MSRA_ARCHS[args.arch]
    style = args.style or default_style
    check_output_dir(args.output)  # fail before a long conversion
    print(f"reading {args.weights} ({args.arch}, style {style}) ...", flush=True)
    variables, metadata = convert_msra_resnet_file(args.weights, depth, groups, width, style=style,
                                                   norm_eps=args.norm_eps, progress=True)
    nested, meta = backbone_checkpoint(variables, metadata, source=os.fspath(args.weights), fmt=style,
                                       arch=args.arch, depth=depth, groups=groups, width_per_group=width)
    write_backbone_checkpoint(args.output, nested, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
