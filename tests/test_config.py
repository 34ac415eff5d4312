"""Configs: the names users look for exist, overrides are typed, unknown keys fail before any work."""
import os

import pytest

from jaxdet.config import load_config
from jaxdet.engine.checkpoint import apply_meta_to_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRCNN = os.path.join(REPO, "configs", "faster_rcnn.py")


def test_reference_1x_recipe_and_detectron2_names():
    c = load_config(FRCNN)
    assert (c.solver.ims_per_batch, c.solver.base_lr, c.solver.momentum, c.solver.weight_decay) == (16, 0.02, 0.9, 1e-4)
    assert (c.solver.warmup_iters, c.solver.warmup_factor, c.solver.steps, c.solver.max_iter) == (
        1000, 0.001, (60000, 80000), 90000)
    assert (c.input.min_size_train, c.input.max_size_train, c.input.min_size_test, c.input.max_size_test) == (
        (800,), 1333, 800, 1333)
    assert c.input.random_flip == 0.5 and c.model.backbone.norm == "frozen_bn" and c.model.backbone.freeze_at == 2
    for key in ("data.root", "output_dir", "model.weights", "solver.checkpoint_period", "test.eval_period"):
        node = c
        for p in key.split("."):
            node = node[p]


def test_overrides_are_typed():
    c = load_config(FRCNN, ["solver.base_lr=0.01", "--config.solver.steps=(10,20)", "input.min_size_train=(512,)"])
    assert c.solver.base_lr == 0.01 and c.solver.steps == (10, 20) and c.input.min_size_train == (512,)


@pytest.mark.parametrize("override,word", [("solver.bogus=1", "bogus"), ("solver.base_lr=abc", "base_lr"),
                                           ("nosuch.key=1", "nosuch")])
def test_bad_override_names_the_key(override, word):
    with pytest.raises(ValueError, match=word):
        load_config(FRCNN, [override])


def test_quickstart_derives_from_faster_rcnn():
    c = load_config(os.path.join(REPO, "configs", "quickstart.py"))
    assert c.model.meta_architecture == "FasterRCNN" and c.data.synthetic and c.model.backbone.depth == 18


def test_checkpoint_meta_overrides_the_pixel_convention():
    c = load_config(FRCNN)
    changes = apply_meta_to_config(c, {"config_overrides": {"input.format": "BGR", "model.pixel_std": [1, 1, 1],
                                                            "model.backbone.norm_eps": 0}}, "w.pkl")
    assert c.input.format == "BGR" and c.model.pixel_std == (1.0, 1.0, 1.0) and c.model.backbone.norm_eps == 0.0
    assert len(changes) == 3
    with pytest.raises(ValueError, match="w.pkl"):
        apply_meta_to_config(c, {"config_overrides": {"model.nope": 1}}, "w.pkl")
