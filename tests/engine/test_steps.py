"""Train/inference steps on real coco128 batches: the loss falls, and nothing compiles twice."""
from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from jaxdet.data.pipeline import make_eval_iterator, make_train_iterator
from jaxdet.engine import parallel
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.modeling.build import build_detector, trainable_mask
from jaxdet.engine.bootstrap import init_variables, load_datasets
from tests.engine.tiny import tiny_config


@pytest.fixture(scope="module")
def setup(coco128_root, tmp_path_factory):
    config = tiny_config(coco128_root, str(tmp_path_factory.mktemp("run")), **{"solver.base_lr": 0.01,
                                                                              "solver.warmup_iters": 0})
    train_ds, val_ds = load_datasets(config)
    model = build_detector(config.model, train_ds.num_classes)
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = init_variables(model, config, 0)
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    # host copy: each test places (and the step donates) its own device buffers
    state = jax.device_get(create_train_state(variables, tx, jax.random.key_data(jax.random.key(0))))
    kw = dict(batch_size=2, canvases=config.input.canvases, max_instances=config.data.max_instances)
    train_batches = [b for _, b in itertools.islice(make_train_iterator(
        train_ds, min_size_train=config.input.min_size_train, max_size_train=config.input.max_size_train, seed=0,
        **kw), 2)]
    eval_batches = [b for _, b in itertools.islice(make_eval_iterator(
        val_ds, min_size_test=config.input.min_size_test, max_size_test=config.input.max_size_test, **kw), 2)]
    # one compiled step for the module: the compile-count test then also proves that runs on other batches
    # (in whichever order the tests run) reused it
    step = make_train_step(model, tx, schedule, mesh)
    return config, model, mesh, step, state, train_batches, eval_batches


def _loss(model, state, batch, key):
    out, _ = model.apply(state.variables(), batch, train=True, rngs={"sampling": key}, mutable=["batch_stats"])
    return {k: float(v) for k, v in out.items()}


def test_training_lowers_loss_on_a_repeated_batch(setup):
    config, model, mesh, step, state, batches, _ = setup
    batch = batches[0]
    assert batch["gt_valid"].any(), "the coco128 batch must hold objects"
    key = jax.random.key(123)
    before = _loss(model, state, batch, key)
    assert all(np.isfinite(v) for v in before.values())
    st = parallel.replicate(state, mesh)
    for _ in range(8):
        st, metrics = step(st, parallel.shard_batch(batch, mesh))
        assert bool(metrics["finite"])
    after = _loss(model, jax.device_get(st), batch, key)
    assert int(st.step) == 8
    total_before, total_after = sum(before.values()), sum(after.values())
    assert total_after < 0.9 * total_before, (before, after)


def test_train_and_predict_compile_once_per_canvas(setup):
    config, model, mesh, step, state, train_batches, eval_batches = setup
    assert not np.array_equal(train_batches[0]["image_id"], train_batches[1]["image_id"])
    assert train_batches[0]["image"].shape == train_batches[1]["image"].shape
    st = parallel.replicate(state, mesh)
    for b in train_batches:
        st, _ = step(st, parallel.shard_batch(b, mesh))
    assert step._cache_size() == 1

    predict = make_predict_step(model, mesh)
    variables = st.variables()
    outs = []
    for b in eval_batches:
        outs.append(predict(variables, parallel.shard_batch({k: b[k] for k in ("image", "image_size")}, mesh)))
    assert predict._cache_size() == 1
    d = config.model.roi_heads.detections_per_image
    assert outs[0]["boxes"].shape == (2, d, 4) and outs[0]["valid"].dtype == bool


def test_frozen_stages_get_no_gradient_and_the_same_update(setup):
    """``trainable``: frozen params enter through stop_gradient. With the optimizer's own freezing (the
    multi_transform of ``build_optimizer``) the update of the trainable params is the same as computing every
    gradient, the frozen params do not move, and grad_norm only counts the trainable gradients."""
    config, model, mesh, _, state, batches, _ = setup
    params = state.params
    trainable = trainable_mask(params, 2)  # stem + res2 frozen
    frozen = [p for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable)) if not t]
    assert frozen and any(jax.tree.leaves(trainable))
    tx, schedule = build_optimizer(config.solver, params, trainable)
    st0 = jax.device_get(create_train_state(state.variables(), tx, jax.random.key_data(jax.random.key(0))))
    batch = parallel.shard_batch(batches[0], mesh)
    out = {}
    for name, mask in (("all_grads", None), ("stop_gradient", trainable)):
        step = make_train_step(model, tx, schedule, mesh, trainable=mask)
        st, metrics = step(parallel.replicate(st0, mesh), batch)
        out[name] = (jax.device_get(st.params), float(metrics["grad_norm"]))
    (p_all, norm_all), (p_sg, norm_sg) = out["all_grads"], out["stop_gradient"]
    for a, b, t, p0 in zip(jax.tree.leaves(p_all), jax.tree.leaves(p_sg), jax.tree.leaves(trainable),
                           jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        if not t:
            np.testing.assert_array_equal(b, p0)
    assert 0 < norm_sg < norm_all
