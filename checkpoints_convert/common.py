"""Shared helpers for the checkpoint converters: array conversion, nested trees, strict key checks.

Conventions: converted variables are nested dicts of float32 numpy arrays shaped like the Flax
module's variable tree (``{'params': {...}, 'frozen': {...}}``); conv kernels HWIO, dense
kernels (in, out). Torch stores conv weights OIHW (grouped: ``[O, I/groups, kh, kw]``) and
linear weights (out, in).
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Iterable, Mapping, Tuple

import numpy as np

__all__ = [
    "TORCHVISION_PIXEL",
    "MSRA_PIXEL",
    "CAFFE2_PIXEL",
    "to_numpy",
    "as_float32",
    "conv_oihw_to_hwio",
    "conv_transpose_to_flax",
    "linear_to_dense",
    "expect_shape",
    "flatten_tree",
    "unflatten_tree",
    "check_keys",
    "check_shapes",
    "load_pickle",
]

#: Pixel conventions (0..255 scale) of the weight families, see DESIGN.md section 4.
TORCHVISION_PIXEL = {"channel_order": "RGB", "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]}
MSRA_PIXEL = {"channel_order": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0]}
CAFFE2_PIXEL = {"channel_order": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [57.375, 57.12, 58.395]}


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, requires_grad or not) or array-like -> numpy array (dtype kept)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_float32(x: Any) -> np.ndarray:
    """A torch tensor or array-like (any shape) -> a new C-contiguous float32 numpy array (e.g. a bias)."""
    return np.ascontiguousarray(to_numpy(x)).astype(np.float32)


def expect_shape(name: str, x: Any, shape: Tuple[int, ...], source: str) -> None:
    """Check the shape of one checkpoint array ``x`` (anything ``np.shape`` accepts, e.g. a torch tensor).

    Raises ValueError ``"<source>: <name> has shape (...), expected (...)"`` if ``np.shape(x) != shape``."""
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"{source}: {name} has shape {tuple(np.shape(x))}, expected {tuple(shape)}")


def conv_oihw_to_hwio(w: Any) -> np.ndarray:
    """Torch conv weight ``[O, I/groups, kh, kw]`` -> Flax kernel ``[kh, kw, I/groups, O]`` float32.

    Grouped convs need no special handling: both layouts keep the per-group input slice, and
    Flax's ``feature_group_count`` splits the output axis in the same contiguous groups as torch.
    Raises ValueError if ``w`` is not 4-D."""
    w = to_numpy(w)
    if w.ndim != 4:
        raise ValueError(f"expected a 4-D OIHW conv weight, got shape {w.shape}")
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


def conv_transpose_to_flax(w: Any) -> np.ndarray:
    """Torch ``ConvTranspose2d`` weight ``[in, out, kh, kw]`` (groups 1) -> flax ``nn.ConvTranspose`` kernel
    ``[kh, kw, in, out]`` float32 for ``transpose_kernel=False``, flipped in kh and kw.

    torch computes ``y[s*i + a, s*j + b, o] += x[i, j, c] * w[c, o, a, b]``; flax's ``ConvTranspose`` (without
    ``transpose_kernel``) is a cross-correlation of the stride-dilated input, which applies the kernel spatially
    flipped. Matches ``torch.nn.ConvTranspose2d`` (tested against torch in ``tests/modeling/test_mask_rcnn.py``).
    Raises ValueError if ``w`` is not 4-D."""
    w = to_numpy(w)
    if w.ndim != 4:
        raise ValueError(f"expected a 4-D (in, out, kh, kw) transposed-conv weight, got shape {w.shape}")
    return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))[::-1, ::-1]).astype(np.float32)


def linear_to_dense(w: Any) -> np.ndarray:
    """Torch linear weight ``[out, in]`` -> Flax Dense kernel ``[in, out]`` float32."""
    w = to_numpy(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D linear weight, got shape {w.shape}")
    return np.ascontiguousarray(w.T).astype(np.float32)


def flatten_tree(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
    """Nested dict -> ``{path tuple: leaf}`` (leaves are anything that is not a Mapping)."""
    out: Dict[Tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def unflatten_tree(flat: Mapping[Tuple[str, ...], Any]) -> Dict[str, Any]:
    """``{path tuple: leaf}`` -> nested dict (inverse of :func:`flatten_tree`)."""
    tree: Dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(expected: Iterable[str], given: Iterable[str], source: str) -> None:
    """Strict key check: raise ValueError listing missing and unexpected keys, naming ``source``
    (the file or state-dict description)."""
    expected, given = set(expected), set(given)
    missing, unexpected = expected - given, given - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        raise ValueError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))


def check_shapes(converted: Mapping[str, Any], reference: Mapping[str, Any], source: str) -> None:
    """Check that two variable trees have the same leaves with the same shapes.

    ``reference`` is typically ``jax.eval_shape(model.init, ...)`` (leaves with ``.shape``).
    Raises ValueError listing differing paths/shapes and naming ``source``."""
    a, b = flatten_tree(converted), flatten_tree(reference)
    errors = []
    for path in sorted(set(a) | set(b)):
        name = "/".join(path)
        if path not in a:
            errors.append(f"{name}: missing")
        elif path not in b:
            errors.append(f"{name}: not in the model")
        elif tuple(np.shape(a[path])) != tuple(b[path].shape):
            errors.append(f"{name}: checkpoint {tuple(np.shape(a[path]))} vs model {tuple(b[path].shape)}")
    if errors:
        more = f" ... (+{len(errors) - 20} more)" if len(errors) > 20 else ""
        raise ValueError(f"{source}: shape mismatch with the model (wrong depth/groups/width?): "
                         + "; ".join(errors[:20]) + more)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a (possibly Python-2, latin-1) pickle such as an MSRA/Detectron ``.pkl``.

    Raises FileNotFoundError if missing, ValueError if it cannot be unpickled."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from e
