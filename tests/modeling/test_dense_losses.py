"""sigmoid_focal_loss against torchvision.ops.sigmoid_focal_loss (reduction none), plus a hand case."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torchvision.ops import sigmoid_focal_loss as tv_focal  # noqa: E402

from jaxdet.modeling.losses import sigmoid_focal_loss  # noqa: E402


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1, 1.5), (0.75, 3.0)])
def test_matches_torchvision(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(7, 13)).astype(np.float32)
    logits[0, :4] = [-30.0, 30.0, 0.0, 80.0]  # saturated and zero logits
    targets = (rng.random((7, 13)) < 0.3).astype(np.float32)
    expected = tv_focal(torch.from_numpy(logits), torch.from_numpy(targets), alpha=alpha, gamma=gamma).numpy()
    got = np.asarray(sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets), alpha=alpha, gamma=gamma))
    assert got.shape == (7, 13) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_hand_computed_and_bool_targets():
    # logit 0 -> p = 0.5, BCE = log 2; (1 - p_t)^2 = 0.25; alpha_t = 0.25 (pos) / 0.75 (neg)
    got = np.asarray(sigmoid_focal_loss(jnp.zeros((2,)), jnp.array([True, False])))
    np.testing.assert_allclose(got, [0.25 * 0.25 * np.log(2), 0.75 * 0.25 * np.log(2)], rtol=1e-6)


def test_invalid_alpha():
    with pytest.raises(ValueError):
        sigmoid_focal_loss(jnp.zeros((2,)), jnp.zeros((2,)), alpha=1.5)
