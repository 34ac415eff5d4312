"""ResNet backbone and norm layers: shapes/strides, variable layout, FrozenBN math, freeze_at.

Numeric parity with torchvision lives in tests/convert/test_backbone_parity.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.modeling.backbones.resnet import ResNet, resnet_trainable_mask
from jaxdet.modeling.layers import FrozenBatchNorm, get_norm

KEY = jax.random.PRNGKey(0)


def _init(model, shape=(2, 64, 64, 3)):
    """Variables of ``model`` without compiling its init: shapes from ``jax.eval_shape``, conv
    kernels He-normal from numpy, norm variables at their init values (1 / 0)."""
    x = jax.random.normal(KEY, shape, jnp.float32)
    shapes = jax.eval_shape(model.init, KEY, x)
    rng = np.random.RandomState(0)

    def make(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return jnp.asarray(rng.randn(*s.shape).astype(np.float32) * np.sqrt(2.0 / np.prod(s.shape[:-1])))
        if leaf in ("weight", "scale", "running_var", "var"):
            return jnp.ones(s.shape, jnp.float32)
        return jnp.zeros(s.shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(make, shapes), x


def _apply(model, variables, x, **kwargs):
    """Jitted apply (eager flax dispatches op by op and is much slower on CPU)."""
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _torch_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _expected_hw(h):
    """Spatial size after stem conv, maxpool, then 3 stride-2 3x3 convs (torch arithmetic)."""
    sizes = {}
    h = _torch_size(_torch_size(h, 7, 2, 3), 3, 2, 1)
    sizes["C2"] = h
    for c in ("C3", "C4", "C5"):
        h = _torch_size(h, 3, 2, 1)
        sizes[c] = h
    return sizes


@pytest.mark.parametrize(
    "kwargs, channels",
    [
        (dict(depth=18, width_multiplier=0.125), {"C2": 8, "C3": 16, "C4": 32, "C5": 64}),
        (dict(depth=50, width_multiplier=0.125), {"C2": 32, "C3": 64, "C4": 128, "C5": 256}),
        (dict(depth=50, groups=4, width_per_group=8, width_multiplier=0.125), {"C2": 32, "C3": 64, "C4": 128, "C5": 256}),
    ],
    ids=["r18", "r50", "x50"],
)
def test_output_shapes_and_strides(kwargs, channels):
    model = ResNet(**kwargs)
    variables, x = _init(model)
    out = jax.eval_shape(model.apply, variables, x)
    assert set(out) == {"C2", "C3", "C4", "C5"}
    assert model.feature_channels() == channels
    for name, stride in {"C2": 4, "C3": 8, "C4": 16, "C5": 32}.items():
        assert out[name].shape == (2, 64 // stride, 64 // stride, channels[name])
        assert out[name].dtype == jnp.float32
    # odd input sizes follow torch's floor((n + 2p - k) / s) + 1 arithmetic
    odd = jax.eval_shape(model.apply, variables, jnp.ones((1, 65, 47, 3)))
    eh, ew = _expected_hw(65), _expected_hw(47)
    assert eh == {"C2": 17, "C3": 9, "C4": 5, "C5": 3} and ew == {"C2": 12, "C3": 6, "C4": 3, "C5": 2}
    for name in odd:
        assert odd[name].shape[1:3] == (eh[name], ew[name])


def test_variable_layout_torchvision_names_and_hwio():
    # basic blocks: no downsample in layer1 (64 -> 64, stride 1), downsample in layer2..4
    v18, _ = _init(ResNet(depth=18, width_multiplier=0.125))
    p = v18["params"]
    assert sorted(p) == sorted(["conv1"] + [f"layer{s}_{i}" for s in range(1, 5) for i in range(2)])
    assert p["conv1"]["kernel"].shape == (7, 7, 3, 8)  # HWIO
    assert "downsample_conv" not in p["layer1_0"]
    assert set(p["layer2_0"]) == {"conv1", "conv2", "downsample_conv"}
    assert p["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 8, 16)
    # bottleneck ResNeXt: grouped 3x3 kernel is [3, 3, width/groups, width]
    vx, _ = _init(ResNet(depth=50, groups=4, width_per_group=8, width_multiplier=0.125))
    b = vx["params"]["layer1_0"]
    width = int(8 * 8 / 64) * 4  # int(planes * wpg / 64) * groups
    assert set(b) == {"conv1", "conv2", "conv3", "downsample_conv"}
    assert b["conv2"]["kernel"].shape == (3, 3, width // 4, width)
    assert b["conv3"]["kernel"].shape == (1, 1, width, 32)
    assert set(vx["frozen"]["layer1_0"]) == {"bn1", "bn2", "bn3", "downsample_bn"}
    assert len([k for k in vx["params"] if k.startswith("layer3_")]) == 6


def test_frozen_collection_not_in_params():
    variables, _ = _init(ResNet(depth=18, width_multiplier=0.125))
    assert set(variables) == {"params", "frozen"}
    param_leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    assert all(path[-1].key == "kernel" for path, _ in param_leaves)  # only conv kernels are trained
    assert set(variables["frozen"]["bn1"]) == {"weight", "bias", "running_mean", "running_var"}
    bn = FrozenBatchNorm().init(KEY, jnp.ones((1, 2, 2, 8)))
    assert set(bn) == {"frozen"}
    bn = bn["frozen"]
    np.testing.assert_array_equal(bn["weight"], np.ones(8))
    np.testing.assert_array_equal(bn["bias"], np.zeros(8))
    np.testing.assert_array_equal(bn["running_mean"], np.zeros(8))
    np.testing.assert_array_equal(bn["running_var"], np.ones(8))


@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_frozen_batchnorm_matches_hand_computation(eps):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 4, 5).astype(np.float32)
    w = np.array([1.5, -0.5, 2.0, 0.25, 1.0], np.float32)
    b = np.array([0.1, 0.2, -0.3, 0.0, 5.0], np.float32)
    rm = np.array([0.5, -1.0, 0.0, 2.0, 0.3], np.float32)
    rv = np.array([0.25, 4.0, 1.0, 0.01, 2.0], np.float32)
    frozen = {"weight": w, "bias": b, "running_mean": rm, "running_var": rv}
    y = FrozenBatchNorm(eps=eps).apply({"frozen": frozen}, jnp.asarray(x))
    expected = (x.astype(np.float64) - rm) / np.sqrt(rv.astype(np.float64) + eps) * w + b
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6, atol=1e-6)
    # one hand-worked element: channel 1 -> (x + 1) / sqrt(4 + eps) * -0.5 + 0.2
    np.testing.assert_allclose(float(y[0, 0, 0, 1]), (x[0, 0, 0, 1] + 1.0) / np.sqrt(4.0 + eps) * -0.5 + 0.2, rtol=1e-6)
    yb = FrozenBatchNorm(eps=eps, dtype=jnp.bfloat16).apply({"frozen": frozen}, jnp.asarray(x))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), expected, rtol=2e-2, atol=5e-2)


def test_freeze_at_stops_gradients():
    model_kwargs = dict(depth=18, width_multiplier=0.125)
    x = jax.random.normal(KEY, (1, 64, 64, 3))

    def grads(freeze_at):
        model = ResNet(freeze_at=freeze_at, **model_kwargs)
        variables, _ = _init(model, x.shape)

        def loss(params):
            out = model.apply({"params": params, "frozen": variables["frozen"]}, x)
            return sum(jnp.sum(o ** 2) for o in out.values())

        return jax.jit(jax.grad(loss))(variables["params"])

    def norms(g):
        return {k: float(sum(jnp.sum(jnp.abs(l)) for l in jax.tree_util.tree_leaves(v))) for k, v in g.items()}

    g0, g2 = norms(grads(0)), norms(grads(2))
    assert all(v > 0 for v in g0.values())
    frozen = ["conv1", "layer1_0", "layer1_1"]
    assert all(g2[k] == 0.0 for k in frozen)
    assert all(g2[k] > 0 for k in g2 if k not in frozen)
    # the trainable mask marks the same params
    params = jax.eval_shape(ResNet(**model_kwargs).init, KEY, x)["params"]
    mask = resnet_trainable_mask(params, 2)
    assert {k for k, v in mask.items() if not all(jax.tree_util.tree_leaves(v))} == set(frozen)
    assert all(all(jax.tree_util.tree_leaves(mask[k])) for k in mask if k not in frozen)


def test_out_features_builds_only_needed_stages():
    model = ResNet(depth=18, width_multiplier=0.125, out_features=("C3", "C4"))
    variables, x = _init(model)
    assert not any(k.startswith("layer4") for k in variables["params"])
    assert set(jax.eval_shape(model.apply, variables, x)) == {"C3", "C4"}


def test_batchnorm_and_groupnorm_variants():
    model = ResNet(depth=18, width_multiplier=0.125, norm="bn")
    variables, x = _init(model)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]["bn1"]) == {"scale", "bias"}
    stem, updates = bn_train_step(model, variables, x)
    # running stats move in train mode: mean <- 0.9 * 0 + 0.1 * batch mean of conv1's output
    assert not np.allclose(updates["batch_stats"]["bn1"]["mean"], 0.0)
    # train mode normalises with batch statistics: per-channel mean / var of bn1's output are 0 / 1
    np.testing.assert_allclose(np.asarray(stem.mean(axis=(0, 1, 2))), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(stem.var(axis=(0, 1, 2))), 1.0, rtol=1e-2)
    gn = ResNet(depth=18, width_multiplier=0.5, norm="gn")
    vg, xg = _init(gn, (1, 64, 64, 3))
    assert set(vg) == {"params"} and set(vg["params"]["bn1"]) == {"scale", "bias"}
    assert jax.eval_shape(gn.apply, vg, xg)["C5"].shape == (1, 2, 2, 256)
    # syncbn averages batch statistics over the mapped axis (here vmap standing in for devices)
    xs = jnp.stack([jnp.full((2, 3, 3, 4), 1.0), jnp.full((2, 3, 3, 4), 3.0)])  # 2 "devices"
    for kind, expected in (("syncbn", [-1.0, 1.0]), ("bn", [0.0, 0.0])):
        norm = get_norm(kind, train=True, axis_name="dev" if kind == "syncbn" else None)
        nv = norm.init(KEY, xs[0])
        y, _ = jax.vmap(lambda x: norm.apply(nv, x, mutable=["batch_stats"]), axis_name="dev")(xs)
        np.testing.assert_allclose(np.asarray(y[:, 0, 0, 0, 0]), expected, atol=1e-2)
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("layernorm")


def bn_train_step(model, variables, x):
    """Train-mode apply of a norm='bn' ResNet; returns (stem bn1 output, batch_stats updates),
    the bn1 output captured with flax's method interception."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "bn1" and context.module.parent.name is None:
            captured["bn1"] = out
        return out

    import flax.linen as nn

    def run(v, x):
        with nn.intercept_methods(interceptor):
            _, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        return captured["bn1"], updates

    return jax.jit(run)(variables, x)


def test_bfloat16_compute():
    model32 = ResNet(depth=18, width_multiplier=0.125)
    variables, x = _init(model32, (1, 64, 64, 3))
    out16 = _apply(ResNet(depth=18, width_multiplier=0.125, dtype=jnp.bfloat16), variables, x)
    out32 = _apply(model32, variables, x)
    for k in out32:
        assert out16[k].dtype == jnp.bfloat16
        ref = np.asarray(out32[k])
        assert np.abs(np.asarray(out16[k], np.float32) - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=20), "depth"),
        (dict(depth=18, groups=32), "BasicBlock"),
        (dict(depth=50, out_features=("C6",)), "out_features"),
        (dict(depth=50, freeze_at=6), "freeze_at"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(ResNet(**kwargs).init, KEY, jnp.zeros((1, 32, 32, 3)))
