"""jaxdet: object detection and instance segmentation in JAX/Flax.

The research API, for code that builds on jaxdet's models rather than on its command-line programs::

    import jax, jaxdet

    config = jaxdet.load_config("configs/quickstart.py", ["model.num_classes=3"])
    model, init = jaxdet.build_detector(config)          # a flax.linen Module and its variables' maker
    variables = init(seed=0)                              # fresh weights; build_detector(config, checkpoint=DIR)
                                                          # makes init() return the checkpoint's instead
    losses = model.apply(variables, batch, train=True, rngs={"sampling": jax.random.key(0)},
                         mutable=["batch_stats"])[0]     # dict of scalar losses
    detections = model.apply(variables, batch, train=False)

``batch`` follows the data contract of DESIGN.md section 2 (what `jaxdet.data.make_train_iterator` and
`jaxdet.data.make_eval_iterator` yield): ``image`` uint8 [B, H, W, 3] (a padded canvas, in the channel order
of ``config.input.format``), ``image_size`` int32 [B, 2] (height, width of the resized image inside it), and
for training ``gt_boxes`` float32 [B, M, 4] (xyxy canvas pixels), ``gt_classes`` int32 [B, M] (contiguous
0..C-1), ``gt_valid`` and ``gt_is_crowd`` bool [B, M]. Training returns the loss terms (``loss_rpn_cls``,
``loss_rpn_reg``, ``loss_cls``, ``loss_box_reg`` for Faster R-CNN; their sum is what the train step
minimises) and needs the ``"sampling"`` rng; ``mutable=["batch_stats"]`` is needed when the backbone uses
trainable BatchNorm (``model.backbone.norm="bn"``) and harmless otherwise. Inference returns ``boxes``
float32 [B, D, 4] (xyxy canvas pixels), ``scores`` [B, D], ``classes`` int32 [B, D] (contiguous) and ``valid``
bool [B, D]. Divide boxes by ``image_size / orig_size`` per axis to get original-image pixels
(`jaxdet.evaluation.coco.detections_to_coco` does it and maps classes back to dataset category ids).

The train and predict steps of `jaxdet.engine.steps` take any module with this contract, so a modified
detector (e.g. a subclass of `jaxdet.modeling.detectors.faster_rcnn.FasterRCNN` with another box head, see
``scripts/custom_box_head.py``) trains with the library's optimiser, data parallelism and checkpoints.

``import jaxdet`` stays light: jax, flax and the models are imported when first used.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

__all__ = ["build_detector", "DetectorVariables", "load_config", "Predictor"]

_log = logging.getLogger("jaxdet")


@dataclasses.dataclass
class DetectorVariables:
    """Makes the variables of a detector built by :func:`build_detector` (call it: ``init(seed=0)``).

    Attributes:
      model: the built module (the default target of ``__call__``).
      config: the config the module was built from, after the checkpoint's or ``model.weights``' pixel
        convention was applied (a copy: the caller's config is not modified). Use it for the data pipeline.
      num_classes: C, foreground classes.
      class_names: names of the contiguous classes 0..C-1, or None if unknown.
      category_ids: dataset category id of each contiguous class, or None if unknown.
      checkpoint: the checkpoint path given to :func:`build_detector`, or None.
    """

    model: Any = dataclasses.field(repr=False)
    config: Any = dataclasses.field(repr=False)
    num_classes: int
    class_names: list | None
    category_ids: list | None
    checkpoint: str | None = None
    _checkpoint_variables: dict | None = dataclasses.field(default=None, repr=False)
    _initial_weights: dict | None = dataclasses.field(default=None, repr=False)

    def __call__(self, seed: int = 0, *, model=None, allow_missing: bool | None = None) -> dict:
        """The variables (``{"params": ..., "frozen"/"batch_stats": ...}``, numpy arrays) for ``model.apply``.

        Without a checkpoint: fresh weights drawn from ``seed`` (jit-compiled ``model.init`` on a small dummy
        canvas), into which ``config.model.weights`` (if set) is merged, missing entries keeping their fresh
        values (as ``python -m jaxdet.train`` does). With a checkpoint: its weights; every variable of the
        model must be in it unless ``allow_missing``.

        Args:
          seed: PRNG seed of the fresh weights.
          model: another module to make variables for (default: the built one), e.g. a subclass with a
            modified head; its variables that the checkpoint / weights lack keep fresh values when
            ``allow_missing`` (default: True for another module, False for the built one).
          allow_missing: see ``model``.

        Raises:
          ValueError: the checkpoint's arrays do not fit the module (unexpected, mis-shaped or, unless
            ``allow_missing``, missing keys, all listed).
        """
        from jaxdet.engine import checkpoint as ckpt_lib
        from jaxdet.engine.bootstrap import init_variables, model_shapes

        target = self.model if model is None else model
        if allow_missing is None:
            allow_missing = model is not None and model is not self.model
        if self._checkpoint_variables is not None:
            if allow_missing:
                fresh = init_variables(target, self.config, seed)
                return ckpt_lib.merge_variables(fresh, self._checkpoint_variables, self.checkpoint, allow_missing=True)
            return ckpt_lib.merge_variables(model_shapes(target), self._checkpoint_variables, self.checkpoint,
                                            allow_missing=False)
        variables = init_variables(target, self.config, seed)
        if self._initial_weights is not None:
            variables = ckpt_lib.merge_variables(variables, self._initial_weights, self.config.model.weights,
                                                 allow_missing=True)
        return variables


def _json_classes(config) -> tuple[list[int], list[str]]:
    """(category ids, names) of ``config.data``'s training json, sorted by id as `jaxdet.data.coco.load_coco`."""
    path = os.path.join(os.path.expanduser(config.data.root), config.data.train_json)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.num_classes is {config.model.num_classes} (read from the data) but the training annotation "
            f"file {path} does not exist; set model.num_classes, pass num_classes=, or pass a checkpoint "
            "(synthetic datasets are written by jaxdet.engine.bootstrap.load_datasets(config) or a training run)")
    try:
        with open(path, "rb") as f:
            cats = json.load(f)["categories"]
        cats = sorted(((int(c["id"]), str(c.get("name", c["id"]))) for c in cats))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the categories of {path}: {e}") from e
    return [c for c, _ in cats], [n for _, n in cats]


def build_detector(config, num_classes: int | None = None, *, checkpoint: str | None = None):
    """Builds the detector of a config: ``model, init = jaxdet.build_detector(config)``.

    The module is `jaxdet.modeling.build.build_detector` of ``config.model`` (a ``flax.linen.Module``;
    its ``apply`` contract is in this package's docstring); ``init`` (a :class:`DetectorVariables`) makes or
    loads its variables with `jaxdet.engine.bootstrap.init_variables` and
    `jaxdet.engine.checkpoint.load_variables` / ``merge_variables``.

    Args:
      config: a full config (``configs/*.py``, e.g. from :func:`jaxdet.load_config`); not modified.
      num_classes: C, foreground classes. Default: the checkpoint's, else ``config.model.num_classes`` if
        positive, else the number of categories in ``config.data.root/config.data.train_json`` (only the json
        is read).
      checkpoint: optional jaxdet checkpoint (a run folder, its ``checkpoints/``, one step, or
        ``checkpoints_convert`` output). Its pixel convention, architectural switches and classes
        (``meta["config_overrides"]``) are applied to a copy of the config before the module is built, as
        ``python -m jaxdet.evaluate`` does, and ``init()`` returns its weights. Without it,
        ``config.model.weights`` (if set) is read the way training reads it.

    Returns:
      ``(model, init)``: the ``flax.linen.Module`` and its :class:`DetectorVariables`.

    Raises:
      FileNotFoundError: the checkpoint, the ``model.weights`` file or (when the class count must be read
        from it) the training annotation file does not exist.
      ValueError: ``num_classes`` contradicts the checkpoint's; unknown ``model.meta_architecture``; a
        checkpoint setting a config key this config lacks.
    """
    import copy

    from jaxdet.engine import checkpoint as ckpt_lib
    from jaxdet.engine.bootstrap import load_initial_weights
    from jaxdet.modeling.build import build_detector as _build

    cfg = copy.deepcopy(config)
    ckpt_vars = weights = None
    meta: dict = {}
    if checkpoint is not None:
        ckpt_vars, meta = ckpt_lib.load_variables(checkpoint)
        for change in ckpt_lib.apply_meta_to_config(cfg, meta, checkpoint):
            _log.info("from the checkpoint: %s", change)
    elif cfg.model.weights:
        weights = load_initial_weights(cfg, cfg.model.weights)
    ids, names = meta.get("category_ids"), meta.get("class_names")
    n = meta.get("num_classes")
    if n is not None and num_classes is not None and int(num_classes) != int(n):
        raise ValueError(f"num_classes={num_classes} but checkpoint {checkpoint} predicts {n} classes")
    if n is None:
        n = num_classes
    if n is None and cfg.model.num_classes > 0:
        n = cfg.model.num_classes
    if n is None:
        ids, names = _json_classes(cfg)
        n = len(ids)
    n = int(n)
    if n <= 0:
        raise ValueError(f"num_classes must be positive, got {n}")
    if ids is not None and len(ids) != n:
        ids = names = None
    model = _build(cfg.model, n)
    return model, DetectorVariables(model=model, config=cfg, num_classes=n,
                                    class_names=list(names) if names is not None else None,
                                    category_ids=list(map(int, ids)) if ids is not None else None,
                                    checkpoint=checkpoint, _checkpoint_variables=ckpt_vars, _initial_weights=weights)


def __getattr__(name):
    if name == "load_config":
        from jaxdet.config import load_config

        return load_config
    if name == "Predictor":
        from jaxdet.demo import Predictor

        return Predictor
    raise AttributeError(f"module 'jaxdet' has no attribute {name!r}")
