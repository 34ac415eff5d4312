"""torchvision ResNet/ResNeXt and FPN state_dicts -> jaxdet variables.

Source layout: ``torchvision/models/resnet.py`` (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``,
``bn{1,2,3}``, ``downsample.{0,1}``, ``fc``) and ``torchvision/ops/feature_pyramid_network.py``
(``inner_blocks.{i}.0``, ``layer_blocks.{i}.0``, ``extra_blocks.p6/p7``). Detection checkpoints
nest them under ``backbone.body.`` and ``backbone.fpn.``. Target layout: see
``jaxdet/modeling/backbones/resnet.py`` and ``fpn.py``.

Typical use::

    sd = load_torchvision_state_dict("resnet50-0676ba61.pth")
    variables = convert_torchvision_resnet(sd, depth=50, source="resnet50-0676ba61.pth")
    feats = ResNet(depth=50).apply(variables, images)

torch is only needed to read ``.pth`` files (:func:`load_torchvision_state_dict`); the
converters themselves accept numpy arrays.

CLI (writes a jaxdet checkpoint holding the detector's ``backbone`` variables and the weights' pixel
convention, to initialise training with ``--config.model.weights=DIR``)::

    python -m checkpoints_convert.torchvision_backbone --weights resnet50-0676ba61.pth \\
        --arch resnet50 --output weights/R-50-torchvision
    python -m jaxdet.train --config configs/faster_rcnn.py \\
        --config.model.weights=weights/R-50-torchvision --config.data.root=/path/to/coco

``--arch`` is one of :data:`TORCHVISION_ARCHS` (sets depth / groups / width_per_group).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from checkpoints_convert.common import (
    TORCHVISION_PIXEL,
    check_keys,
    check_shapes,
    conv_oihw_to_hwio,
    flatten_tree,
    to_numpy,
    unflatten_tree,
)
from jaxdet.modeling.backbones.resnet import ResNet

__all__ = [
    "load_torchvision_state_dict",
    "convert_torchvision_resnet",
    "convert_torchvision_fpn",
    "convert_torchvision_resnet_file",
    "torchvision_metadata",
    "resnet_variable_to_torch_name",
    "resnet_variable_shapes",
    "TORCHVISION_ARCHS",
    "backbone_checkpoint",
    "check_output_dir",
    "write_backbone_checkpoint",
    "main",
]

#: ``--arch`` name -> (depth, groups, width_per_group), as built by ``torchvision/models/resnet.py``.
TORCHVISION_ARCHS: Dict[str, Tuple[int, int, int]] = {
    "resnet18": (18, 1, 64),
    "resnet34": (34, 1, 64),
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnet152": (152, 1, 64),
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
    "wide_resnet50_2": (50, 1, 128),
    "wide_resnet101_2": (101, 1, 128),
}

_BN_NAMES = {
    # (collection, leaf) -> torch buffer/param name
    ("frozen", "weight"): "weight",
    ("frozen", "bias"): "bias",
    ("frozen", "running_mean"): "running_mean",
    ("frozen", "running_var"): "running_var",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def load_torchvision_state_dict(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Read a torch ``.pth``/``.pt`` state_dict into ``{name: numpy array}`` (dtypes kept).

    Accepts a bare state_dict or a training checkpoint holding it under ``'model'`` or
    ``'state_dict'``. Uses ``torch.load(weights_only=True)`` (no arbitrary code execution).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ImportError: torch is not installed (``pip install torch`` to convert checkpoints).
      ValueError: the file is not a state_dict of tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as e:
        raise ImportError(
            "reading torch checkpoints needs PyTorch: `pip install torch` (only for conversion; jaxdet itself does not use it)"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot load as a torch state_dict ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (mapping of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; not a state_dict")
        out[str(k)] = to_numpy(v)
    return out


def torchvision_metadata(norm_eps: float = 1e-5) -> Dict[str, Any]:
    """Pixel/architecture conventions of torchvision weights (RGB, ImageNet mean/std in 0..255,
    stride on the 3x3 conv). ``norm_eps`` is 1e-5, or 0.0 for the legacy COCO detectors."""
    return dict(TORCHVISION_PIXEL, stride_in_1x1=False, norm_eps=float(norm_eps))


def resnet_variable_to_torch_name(collection: str, path: Tuple[str, ...]) -> str:
    """Torch state_dict name of one jaxdet ResNet variable.

    E.g. ``('params', ('layer1_0', 'downsample_conv', 'kernel'))`` -> ``'layer1.0.downsample.0.weight'``,
    ``('frozen', ('bn1', 'running_var'))`` -> ``'bn1.running_var'``. Raises ValueError for an
    unknown variable."""
    parts = []
    for p in path[:-1]:
        m = re.fullmatch(r"layer(\d)_(\d+)", p)
        if m:
            parts += [f"layer{m.group(1)}", m.group(2)]
        elif p == "downsample_conv":
            parts += ["downsample", "0"]
        elif p == "downsample_bn":
            parts += ["downsample", "1"]
        else:
            parts.append(p)
    leaf = path[-1]
    if leaf == "kernel" and collection == "params":
        parts.append("weight")
    elif (collection, leaf) in _BN_NAMES:
        parts.append(_BN_NAMES[(collection, leaf)])
    else:
        raise ValueError(f"no torch name for ResNet variable {collection}/{'/'.join(path)}")
    return ".".join(parts)


@functools.lru_cache(maxsize=16)
def resnet_variable_shapes(depth: int, groups: int = 1, width_per_group: int = 64, norm: str = "frozen_bn") -> Dict[str, Any]:
    """Variable tree of ``ResNet(depth, groups, width_per_group, norm)`` with
    ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape`` of init: no compute, cached)."""
    model = ResNet(depth=depth, groups=groups, width_per_group=width_per_group,
                   norm=norm, norm_axis_name="batch" if norm == "syncbn" else None)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))


def convert_torchvision_resnet(
    state_dict: Mapping[str, Any],
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    prefix: str = "",
    norm: str = "frozen_bn",
    source: str = "<state_dict>",
    progress: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Convert a torchvision ResNet/ResNeXt state_dict to ``ResNet(depth, groups, width_per_group)`` variables.

    Args:
      state_dict: ``{name: torch.Tensor | np.ndarray}``; only keys starting with ``prefix`` are
        used (so a whole detector state_dict can be passed with ``prefix='backbone.body.'``).
        ``fc.*`` (classifier) is dropped, ``*.num_batches_tracked`` ignored.
      depth, groups, width_per_group: the architecture (resnet50: 50,1,64; resnext50_32x4d:
        50,32,4; resnext101_32x8d: 101,32,8; wide_resnet50_2: 50,1,128).
      prefix: key prefix, e.g. ``''`` for classification files, ``'backbone.body.'`` for
        torchvision detection files.
      norm: target norm layout. ``'frozen_bn'`` (default): BN arrays go to the ``'frozen'``
        collection. ``'bn'``/``'syncbn'``: weight/bias to ``params/{scale,bias}``,
        running stats to ``batch_stats/{mean,var}`` (for fine-tuning with batch norm).
      source: name used in error messages (the file path).
      progress: show a tqdm bar over the tensors (on stderr).

    Returns:
      ``{'params': ..., 'frozen': ...}`` (or ``{'params', 'batch_stats'}``) nested dicts of
      float32 numpy arrays; conv kernels HWIO.

    Raises:
      ValueError: missing/unexpected keys (listed), shape mismatches, unsupported ``norm``.
    """
    if norm not in ("frozen_bn", "bn", "syncbn"):
        raise ValueError(f"convert_torchvision_resnet: norm must be 'frozen_bn', 'bn' or 'syncbn', got {norm!r}")
    reference = resnet_variable_shapes(depth, groups, width_per_group, norm)
    ref_flat = {(path[0], path[1:]): leaf for path, leaf in flatten_tree(reference).items()}
    name_of = {key: resnet_variable_to_torch_name(*key) for key in ref_flat}

    given = {}
    for k, v in state_dict.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if name.endswith("num_batches_tracked") or name.startswith("fc."):
            continue
        given[name] = v
    check_keys(name_of.values(), given.keys(), f"{source} (prefix {prefix!r})")

    flat = {}
    for (collection, path), torch_name in tqdm(name_of.items(), desc="converting", unit="tensor",
                                               disable=not progress, leave=False):
        v = given[torch_name]
        if path[-1] == "kernel":
            if np.ndim(v) != 4:
                raise ValueError(f"{source}: {prefix}{torch_name} should be a 4-D conv weight, got shape {np.shape(v)}")
            flat[(collection,) + path] = conv_oihw_to_hwio(v)
        else:
            flat[(collection,) + path] = to_numpy(v).astype(np.float32)
    converted = unflatten_tree(flat)
    check_shapes(converted, reference, f"{source} (prefix {prefix!r}, depth={depth}, groups={groups}, "
                                       f"width_per_group={width_per_group})")
    return converted


def convert_torchvision_fpn(
    state_dict: Mapping[str, Any],
    prefix: str = "backbone.fpn.",
    source: str = "<state_dict>",
) -> Dict[str, Dict[str, Any]]:
    """Convert torchvision ``FeaturePyramidNetwork`` (+ ``LastLevelP6P7``) weights to ``FPN`` params.

    Accepts current names ``{prefix}inner_blocks.{i}.0.{weight,bias}`` /
    ``layer_blocks.{i}.0.*`` and the pre-0.13 names ``inner_blocks.{i}.{weight,bias}``;
    ``extra_blocks.p6.*``/``extra_blocks.p7.*`` become ``p6``/``p7``. The number of levels is
    read from the keys (i = 0, 1, ... lowest level first).

    Returns ``{'params': {'inner_{i}': {'kernel' [1,1,Cin,C], 'bias' [C]}, 'layer_{i}': ..., 'p6'?, 'p7'?}}``
    with float32 numpy arrays.

    Raises:
      ValueError: no FPN keys under ``prefix``, unexpected keys, or incomplete/non-contiguous blocks.
    """
    where = f"{source} (prefix {prefix!r})"
    params: Dict[str, Dict[str, np.ndarray]] = {}
    unexpected = []
    pattern = re.compile(r"(inner_blocks|layer_blocks)\.(\d+)(?:\.0)?\.(weight|bias)|extra_blocks\.(p6|p7)\.(weight|bias)")
    for k, v in state_dict.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        m = pattern.fullmatch(name)
        if not m:
            unexpected.append(name)
            continue
        if m.group(1):
            module = ("inner_" if m.group(1) == "inner_blocks" else "layer_") + m.group(2)
            kind = m.group(3)
        else:
            module, kind = m.group(4), m.group(5)
        leaf = "kernel" if kind == "weight" else "bias"
        if leaf in params.get(module, {}):
            raise ValueError(f"{where}: {name} given twice (old and new FPN key formats mixed)")
        params.setdefault(module, {})[leaf] = conv_oihw_to_hwio(v) if leaf == "kernel" else to_numpy(v).astype(np.float32)
    if unexpected:
        raise ValueError(f"{where}: unexpected FPN keys: {', '.join(sorted(unexpected))}")
    n = len([m for m in params if m.startswith("inner_")])
    if n == 0:
        raise ValueError(f"{where}: no FPN weights found (expected inner_blocks.*/layer_blocks.*)")
    expected = {f"{t}_{i}" for t in ("inner", "layer") for i in range(n)} | ({"p6", "p7"} & set(params))
    problems = [f"{m}: missing module" for m in sorted(expected - set(params))]
    problems += [f"{m}: unexpected module" for m in sorted(set(params) - expected)]
    problems += [f"{m}: needs weight and bias" for m in sorted(set(params) & expected) if len(params[m]) != 2]
    if ("p6" in params) != ("p7" in params):
        problems.append("extra_blocks needs both p6 and p7")
    if problems:
        raise ValueError(f"{where}: bad FPN weights: {'; '.join(problems)}")
    return {"params": params}


def convert_torchvision_resnet_file(
    path: str | os.PathLike,
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    prefix: str = "",
    norm: str = "frozen_bn",
    norm_eps: float = 1e-5,
    progress: bool = False,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """Load a torchvision ``.pth`` and convert its ResNet; returns ``(variables, metadata)``.

    ``metadata`` is :func:`torchvision_metadata` (``channel_order``, ``pixel_mean``,
    ``pixel_std``, ``stride_in_1x1``, ``norm_eps``): set the model/data config from it.
    Raises like :func:`load_torchvision_state_dict` and :func:`convert_torchvision_resnet`, plus a
    ValueError with a hint when ``prefix=''`` is used on a torchvision *detection* checkpoint."""
    sd = load_torchvision_state_dict(path)
    if not prefix and "conv1.weight" not in sd and "backbone.body.conv1.weight" in sd:
        raise ValueError(f"{os.fspath(path)}: this is a torchvision detection checkpoint (keys 'backbone.body.*'); "
                         "convert the whole detector with `python -m checkpoints_convert.torchvision_detector`, "
                         "or only its backbone with --prefix backbone.body.")
    variables = convert_torchvision_resnet(sd, depth, groups, width_per_group, prefix=prefix, norm=norm,
                                           source=os.fspath(path), progress=progress)
    return variables, torchvision_metadata(norm_eps)


# ---------------------------------------------------------------- backbone checkpoints and the CLI


def backbone_checkpoint(
    variables: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any],
    *,
    source: str,
    fmt: str,
    arch: str,
    depth: int,
    groups: int,
    width_per_group: int,
    norm: str = "frozen_bn",
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """Wrap converted ResNet variables as a detector's ``backbone`` and describe them for the train loop.

    Args:
      variables: ``{collection: ResNet tree}`` from a converter (``params`` + ``frozen``, or
        ``params`` + ``batch_stats``).
      metadata: the converter's conventions (:func:`torchvision_metadata` or
        ``checkpoints_convert.msra.msra_metadata``): ``channel_order``, ``pixel_mean``,
        ``pixel_std`` (0..255 units, in ``channel_order``), ``stride_in_1x1``, ``norm_eps``.
      source: the converted file (recorded in the meta).
      fmt: ``'torchvision'``, ``'msra'`` or ``'caffe2'``.
      arch, depth, groups, width_per_group, norm: the architecture the weights were converted for.

    Returns:
      ``(detector_variables, meta)``: ``{collection: {'backbone': tree}}`` (the ``backbone``
      attribute of ``jaxdet.modeling.detectors.faster_rcnn.FasterRCNN``) and
      ``{'source', 'format', 'arch', 'config_overrides'}``, where ``config_overrides`` maps dotted
      config keys (``input.format``, ``model.pixel_mean``, ``model.pixel_std``,
      ``model.backbone.{stride_in_1x1, norm_eps, depth, groups, width_per_group, norm,
      width_multiplier}``) to the values these weights need; ``jaxdet.engine.bootstrap.load_initial_weights``
      applies them.
    """
    nested = {collection: {"backbone": tree} for collection, tree in variables.items()}
    overrides = {
        "input.format": metadata["channel_order"],
        "model.pixel_mean": [float(v) for v in metadata["pixel_mean"]],
        "model.pixel_std": [float(v) for v in metadata["pixel_std"]],
        "model.backbone.stride_in_1x1": bool(metadata["stride_in_1x1"]),
        "model.backbone.norm_eps": float(metadata["norm_eps"]),
        "model.backbone.depth": int(depth),
        "model.backbone.groups": int(groups),
        "model.backbone.width_per_group": int(width_per_group),
        "model.backbone.norm": norm,
        "model.backbone.width_multiplier": 1.0,
    }
    meta = {"source": os.path.abspath(source), "format": fmt, "arch": arch, "content": "backbone",
            "config_overrides": overrides}
    return nested, meta


def check_output_dir(output: str | os.PathLike) -> str:
    """Refuse to write into an existing non-empty folder (or over a file); returns the absolute path.

    Raises FileExistsError naming ``output``."""
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"output {output} already exists and is not an empty folder; "
                              "choose another --output or remove it")
    return output


def write_backbone_checkpoint(output: str | os.PathLike, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Save ``(variables, meta)`` from :func:`backbone_checkpoint` with
    ``jaxdet.engine.checkpoint.save_variables`` (step 0) and print what was written.

    Returns the step folder. Raises FileExistsError if ``output`` is a non-empty folder."""
    from jaxdet.engine.checkpoint import save_variables  # noqa: PLC0415 - orbax import kept off `--help`

    output = check_output_dir(output)
    print(f"writing {output} ...", flush=True)
    path = save_variables(output, dict(variables), dict(meta))
    leaves = list(flatten_tree(variables).values())
    n = sum(int(np.size(v)) for v in leaves)
    print(f"wrote {path}: {meta['format']} {meta['arch']} backbone, {len(leaves)} arrays, {n / 1e6:.2f}M values "
          f"(from {meta['source']})")
    print("config overrides applied when loading: "
          + ", ".join(f"{k}={v}" for k, v in meta["config_overrides"].items()))
    print(f"use: python -m jaxdet.train --config configs/faster_rcnn.py --config.model.weights={output} "
          "--config.data.root=/path/to/coco")
    return path


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m checkpoints_convert.torchvision_backbone",
        description="Convert a torchvision ImageNet ResNet/ResNeXt .pth into a jaxdet backbone checkpoint "
                    "(load it with --config.model.weights=OUTPUT; its pixel convention is applied automatically).")
    p.add_argument("--weights", required=True, help="torchvision .pth state_dict, e.g. resnet50-0676ba61.pth")
    p.add_argument("--arch", required=True, choices=list(TORCHVISION_ARCHS),
                   help="architecture of the file (sets depth / groups / width_per_group)")
    p.add_argument("--output", required=True, help="new folder for the jaxdet checkpoint")
    p.add_argument("--prefix", default="", help="key prefix of the ResNet inside the file, e.g. 'backbone.body.' "
                                                "to take the backbone of a torchvision detector (default: none)")
    p.add_argument("--norm", default="frozen_bn", choices=["frozen_bn", "bn", "syncbn"],
                   help="norm layout of the target model (default frozen_bn, as detectron2/torchvision detectors)")
    p.add_argument("--norm-eps", type=float, default=1e-5,
                   help="BatchNorm eps the weights were trained with (1e-5; 0.0 for torchvision's legacy COCO "
                        "detectors' backbones)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (see the module docstring). Returns 0.

    Raises FileNotFoundError (missing ``--weights``), FileExistsError (non-empty ``--output``) or
    ValueError (not a state_dict, or keys/shapes that do not match ``--arch``), naming the file."""
    args = _parse_args(argv)
    depth, groups, width = TORCHVISION_ARCHS[args.arch]
    check_output_dir(args.output)  # fail before a long conversion
    print(f"reading {args.weights} ...", flush=True)
    variables, metadata = convert_torchvision_resnet_file(args.weights, depth, groups, width, prefix=args.prefix,
                                                          norm=args.norm, norm_eps=args.norm_eps, progress=True)
    nested, meta = backbone_checkpoint(variables, metadata, source=os.fspath(args.weights), fmt="torchvision",
                                       arch=args.arch, depth=depth, groups=groups, width_per_group=width,
                                       norm=args.norm)
    write_backbone_checkpoint(args.output, nested, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
