"""jaxdet.ops.sampler: torchvision's BalancedPositiveNegativeSampler counts, randomness, uniqueness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from jaxdet.ops.sampler import sample_balanced_indices, sample_balanced_masks


def make_labels(n_pos, n_neg, n_ign, seed=0):
    labels = np.array([1] * n_pos + [0] * n_neg + [-1] * n_ign, np.int32)
    return np.random.default_rng(seed).permutation(labels)


def torchvision_counts(labels, num, frac):
    pos, neg = BalancedPositiveNegativeSampler(num, frac)([torch.tensor(labels)])
    return int(pos[0].sum()), int(neg[0].sum())


CASES = [
    # (n_pos, n_neg, n_ign, num_samples, positive_fraction)
    (3, 1000, 50, 256, 0.5),  # few positives: fill with negatives
    (500, 1000, 0, 256, 0.5),  # plenty of both: 128 / 128
    (500, 20, 10, 256, 0.5),  # few negatives: 128 + 20
    (0, 30, 5, 16, 0.25),  # no positives
    (0, 0, 40, 16, 0.25),  # nothing to sample
    (40, 40, 0, 512, 0.25),  # RoI head: fewer candidates than samples
    (10, 3, 0, 8, 0.25),  # int(8*0.25) = 2 positives, 3 negatives
]


@pytest.mark.parametrize("case", CASES)
def test_mask_counts_match_torchvision(case):
    n_pos, n_neg, n_ign, num, frac = case
    labels = make_labels(n_pos, n_neg, n_ign)
    want_pos, want_neg = torchvision_counts(labels, num, frac)
    pos, neg = jax.jit(sample_balanced_masks, static_argnums=(2, 3))(labels, jax.random.PRNGKey(0), num, frac)
    pos, neg = np.asarray(pos), np.asarray(neg)
    assert (pos.sum(), neg.sum()) == (want_pos, want_neg)
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    assert not np.any(pos & neg)


@pytest.mark.parametrize("case", CASES)
def test_indices_counts_layout_and_uniqueness(case):
    n_pos, n_neg, n_ign, num, frac = case
    labels = make_labels(n_pos, n_neg, n_ign, seed=1)
    want_pos, want_neg = torchvision_counts(labels, num, frac)
    idx, is_pos, valid = jax.jit(sample_balanced_indices, static_argnums=(2, 3))(
        labels, jax.random.PRNGKey(3), num, frac
    )
    idx, is_pos, valid = map(np.asarray, (idx, is_pos, valid))
    assert idx.shape == is_pos.shape == valid.shape == (num,)
    assert idx.dtype == np.int32
    assert is_pos.sum() == want_pos and (valid & ~is_pos).sum() == want_neg
    # positives first, then negatives, then padding
    np.testing.assert_array_equal(is_pos, np.arange(num) < want_pos)
    np.testing.assert_array_equal(valid, np.arange(num) < want_pos + want_neg)
    assert np.all(labels[idx[is_pos]] == 1)
    assert np.all(labels[idx[valid & ~is_pos]] == 0)
    assert len(np.unique(idx[valid])) == valid.sum()


def test_different_keys_give_different_subsets_and_roughly_uniform():
    labels = make_labels(100, 400, 0)
    f = jax.jit(jax.vmap(lambda k: sample_balanced_masks(jnp.asarray(labels), k, 64, 0.25)))
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    pos, neg = map(np.asarray, f(keys))
    assert pos.sum(1).min() == 16 and neg.sum(1).min() == 48
    assert len({tuple(np.nonzero(p)[0]) for p in pos[:20]}) == 20  # all distinct subsets
    # each positive is picked with probability 16/100: 400 draws -> mean 64, sd ~7.3
    freq = pos.sum(0)[labels == 1]
    assert abs(freq.mean() - 64) < 1e-6
    assert freq.min() > 64 - 6 * 7.4 and freq.max() < 64 + 6 * 7.4
    freq_neg = neg.sum(0)[labels == 0]  # probability 48/400
    assert freq_neg.min() > 48 - 6 * 6.5 and freq_neg.max() < 48 + 6 * 6.5
    # picks are not concentrated at low or high indices
    pos_idx = np.nonzero(labels == 1)[0]
    first_half = freq[pos_idx < np.median(pos_idx)].sum() / freq.sum()
    assert 0.45 < first_half < 0.55


def test_indices_random_order_within_positives():
    labels = make_labels(300, 300, 0)
    idx, _, _ = sample_balanced_indices(labels, jax.random.PRNGKey(7), 256, 0.5)
    pos = np.asarray(idx)[:128]
    assert not np.all(np.diff(pos) > 0)  # not simply the first indices in order


def test_bad_input_raises():
    with pytest.raises(ValueError, match="labels"):
        sample_balanced_masks(np.zeros((2, 3), np.int32), jax.random.PRNGKey(0), 4, 0.5)
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_balanced_indices(np.zeros(3, np.int32), jax.random.PRNGKey(0), 4, 1.5)
