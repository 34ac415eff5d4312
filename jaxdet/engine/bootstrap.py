"""What a train or evaluation run builds before its loop: datasets, model variables, checkpoint meta."""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.data.coco import CocoDataset, load_coco
from jaxdet.engine import checkpoint as ckpt_lib

log = logging.getLogger(__name__)


def load_datasets(config, train: bool = True) -> tuple[CocoDataset | None, CocoDataset]:
    """The train (``skip_empty=True``) and val datasets of ``config.data``: COCO json files
    (``data.format="coco"``) or a Pascal VOC folder's ``data.train_split`` / ``data.val_split``
    (``data.format="voc"``); generates the synthetic data first when ``data.synthetic`` is set."""
    root = os.path.expanduser(config.data.root)
    if config.data.synthetic:
        from jaxdet.data.synthetic import generate_synthetic_coco

        generate_synthetic_coco(root, **dict(config.data.synthetic_args))
    if config.data.format == "voc":  # Pascal VOC XML folder: data.root holds Annotations/, JPEGImages/, ImageSets/
        from jaxdet.data.voc import VOC_CLASSES, load_voc

        classes = tuple(config.data.voc_classes) or VOC_CLASSES
        train_ds = load_voc(root, config.data.train_split, skip_empty=True, class_names=classes) if train else None
        return train_ds, load_voc(root, config.data.val_split, skip_empty=False, class_names=classes)
    if config.data.format != "coco":
        raise ValueError(f"data.format must be 'coco' or 'voc', got {config.data.format!r}")
    train_ds = None
    if train:
        train_ds = load_coco(os.path.join(root, config.data.train_json), os.path.join(root, config.data.train_images),
                             skip_empty=True)
    val_ds = load_coco(os.path.join(root, config.data.val_json), os.path.join(root, config.data.val_images),
                       skip_empty=False)
    return train_ds, val_ds


def _dummy_batch() -> dict:
    return {"image": jnp.zeros((1, 64, 64, 3), jnp.uint8), "image_size": jnp.array([[64, 64]], jnp.int32)}


def _init(model, key):
    """``model.init`` through the model's light ``initialize`` method when it has one."""
    method = getattr(type(model), "initialize", None)
    return model.init({"params": key}, _dummy_batch(), **({"method": method} if method else {"train": False}))


def model_shapes(model) -> dict:
    """The model's variables as ``jax.ShapeDtypeStruct`` s (no compilation, no allocation)."""
    return dict(jax.eval_shape(lambda k: _init(model, k), jax.random.key(0)))


def init_variables(model, config, seed: int) -> dict:
    """Model variables (numpy), initialised on a small dummy canvas (parameter shapes do not depend on its size)."""
    variables = jax.jit(lambda k: _init(model, k))(jax.random.key(seed))
    return jax.tree.map(np.asarray, dict(variables))


#: Config fields that decide whether weights are used right; every checkpoint records those its config has.
CONVENTION_KEYS = ("input.format", "model.pixel_mean", "model.pixel_std", "model.backbone.norm_eps",
                   "model.backbone.stride_in_1x1", "model.roi_heads.pooler_aligned",
                   "model.roi_heads.pooler_sampling_ratio", "model.fpn.p6p7_in",
                   "model.mask_head.pooler_resolution", "model.mask_head.sampling_ratio")


def _get(config, dotted: str):
    node = config
    for p in dotted.split("."):
        node = node[p]
    return list(node) if isinstance(node, tuple) else node


def _has(config, dotted: str) -> bool:
    node = config
    for p in dotted.split("."):
        if p not in node:
            return False
        node = node[p]
    return True


def model_meta(config, dataset: CocoDataset, num_classes: int) -> dict:
    """What a checkpoint must carry to be used without the training data: classes, pixel convention and the
    architectural switches (``config_overrides``, applied by :func:`checkpoint.apply_meta_to_config`)."""
    overrides = {k: _get(config, k) for k in CONVENTION_KEYS if _has(config, k)}
    overrides["model.num_classes"] = num_classes
    return {
        "format": "jaxdet",
        "model": config.model.to_dict(),
        "num_classes": num_classes,
        "category_ids": list(map(int, dataset.category_ids)),
        "class_names": list(dataset.class_names),
        "config_overrides": overrides,
    }


def load_initial_weights(config, path: str) -> dict:
    """Reads weights for initialisation (``model.weights``: a jaxdet checkpoint or converter output) and applies
    their pixel convention and switches to ``config`` (logged). Returns the loaded variables, to be merged
    into the freshly initialised ones with :func:`checkpoint.merge_variables` (partial weights allowed)."""
    loaded, meta = ckpt_lib.load_variables(path)
    overrides = dict(meta.get("config_overrides") or {})
    overrides.pop("model.num_classes", None)  # a detector may be fine-tuned on other classes
    for change in ckpt_lib.apply_meta_to_config(config, {"config_overrides": overrides}, path):
        log.info("from %s: %s", path, change)
    return loaded
