"""The matmul weight gradient of jaxdet/ops/conv.py equals XLA's convolution gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdet.ops import conv as conv_ops

jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("k,stride,padding,groups", [
    (3, 1, "SAME", 1), (3, 2, ((1, 1), (1, 1)), 1), (1, 1, "VALID", 1), (1, 2, "VALID", 1),
    (7, 2, ((3, 3), (3, 3)), 1), (3, 2, ((1, 1), (1, 1)), 4), (2, 2, ((0, 1), (1, 0)), 1),
])
def test_gradients_match_lax(k, stride, padding, groups):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 11, 9, 8), jnp.float32)
    w = jax.random.normal(kw, (k, k, 8 // groups, 12), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(fn, x, w):
        y = fn(x, w, (stride, stride), padding, dimension_numbers=dn, feature_group_count=groups)
        return jnp.sum(y * jax.random.normal(kg, y.shape))

    ref = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
    ours = jax.grad(lambda x, w: loss(conv_ops.conv_general_dilated, x, w), (0, 1))(x, w)
    y_ref = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn, feature_group_count=groups)
    y = conv_ops.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn,
                                      feature_group_count=groups)
    np.testing.assert_array_equal(y, y_ref)  # the forward is XLA's own convolution
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-4)


def test_flax_conv_with_it_has_the_same_params_and_grads():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 4))
    a = nn.Conv(6, (3, 3), strides=2, padding=((1, 1), (1, 1)))
    b = nn.Conv(6, (3, 3), strides=2, padding=((1, 1), (1, 1)), conv_general_dilated=conv_ops.conv_general_dilated)
    params = a.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(b.init(jax.random.key(0), x))
    ga = jax.grad(lambda p: jnp.sum(a.apply(p, x) ** 2))(params)
    gb = jax.grad(lambda p: jnp.sum(b.apply(p, x) ** 2))(params)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4), ga, gb)


def test_bfloat16_inputs_accumulate_in_float32_and_fallbacks():
    x = jax.random.normal(jax.random.key(2), (1, 8, 8, 4)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(3), (3, 3, 4, 4)).astype(jnp.bfloat16)
    dn = ("NHWC", "HWIO", "NHWC")
    g = jax.grad(lambda w: jnp.sum(conv_ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
                                   .astype(jnp.float32)))(w)
    ref = jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1),
                                                              "SAME", dimension_numbers=dn)))(w)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), ref, rtol=2e-2, atol=2e-1)
    # dilation is outside the fast path: same result as lax
    y = conv_ops.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dn)
    np.testing.assert_array_equal(y, lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                                              dimension_numbers=dn))
    assert conv_ops.select("xla") is None and conv_ops.select("matmul") is conv_ops.conv_general_dilated
    with pytest.raises(ValueError, match="weight-gradient mode"):
        conv_ops.select("cudnn")


@pytest.mark.parametrize("k,stride,padding", [(2, 2, "VALID"), (4, 2, ((2, 2), (2, 2))), (3, 2, "SAME"),
                                              (3, 3, ((0, 1), (2, 0)))])
def test_conv_transpose_matches_lax_and_flax(k, stride, padding):
    import flax.linen as nn

    from jaxdet.modeling.conv import ConvTranspose

    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
    ref_mod = nn.ConvTranspose(4, (k, k), strides=(stride, stride), padding=padding)
    ours_mod = ConvTranspose(4, (k, k), strides=(stride, stride), padding=padding)
    params = ref_mod.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours_mod.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours_mod.apply(params, x), ref_mod.apply(params, x), rtol=1e-5, atol=1e-5)
    g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(ref_mod.apply(p, x))))(params)
    g = jax.grad(lambda p: jnp.sum(jnp.sin(ours_mod.apply(p, x))))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g, g_ref)
