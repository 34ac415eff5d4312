"""Balanced positive/negative sampling with static shapes.

Same rule as ``torchvision.models.detection._utils.BalancedPositiveNegativeSampler``:
``num_pos = min(#positives, int(num_samples * positive_fraction))`` and
``num_neg = min(#negatives, num_samples - num_pos)``, each a uniformly random subset. Instead of
``torch.randperm`` over a data-dependent number of candidates, every element gets a random 31-bit
key and the ``k`` largest keys among the positives (negatives) are taken with ``lax.top_k``
(O(N log k)); the top-k order is itself random, so its first ``num_pos`` entries are a uniform
random subset (up to key collisions, probability ~N^2 / 2^32 per call).
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _check(labels, num_samples, positive_fraction):
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N] (1 = positive, 0 = negative, -1 = ignore), got {labels.shape}")
    if int(num_samples) != num_samples or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    return labels, int(num_samples), int(num_samples * positive_fraction)


def _random_topk(candidates: Array, key: Array, k: int) -> Tuple[Array, Array]:
    """Indices of k random candidates (random order) and how many of them are real candidates.

    Returns ``(idx [k] int32, count scalar int32)``; entries ``>= count`` of ``idx`` are arbitrary
    (distinct) non-candidates. ``k`` may exceed N: the tail is then padded with index 0.
    """
    n = candidates.shape[0]
    bits = jax.random.bits(key, (n,), jnp.uint32)
    score = (bits >> 1).astype(jnp.int32)  # [0, 2^31)
    score = jnp.where(candidates, score, -1)
    kk = min(k, n)
    if kk > 0:
        _, idx = lax.top_k(score, kk)
        idx = idx.astype(jnp.int32)
    else:
        idx = jnp.zeros((0,), jnp.int32)
    if kk < k:
        idx = jnp.concatenate([idx, jnp.zeros((k - kk,), jnp.int32)])
    count = jnp.minimum(jnp.sum(candidates, dtype=jnp.int32), k)
    return idx, count


def _sample(labels, key, num_samples, max_pos):
    key_pos, key_neg = jax.random.split(key)
    positive = labels == 1
    negative = labels == 0
    pos_idx, n_pos_avail = _random_topk(positive, key_pos, max_pos)
    neg_idx, n_neg_avail = _random_topk(negative, key_neg, num_samples)
    num_pos = jnp.minimum(n_pos_avail, max_pos)
    num_neg = jnp.minimum(n_neg_avail, num_samples - num_pos)
    return pos_idx, num_pos, neg_idx, num_neg


def sample_balanced_masks(
    labels: Array, key: Array, num_samples: int, positive_fraction: float
) -> Tuple[Array, Array]:
    """Pick a balanced random subset of positives and negatives, returned as masks.

    Args:
      labels: [N] int, 1 = positive, 0 = negative, anything else (-1) = ignored.
      key: a ``jax.random`` key.
      num_samples: static int, total samples per image (RPN: 256).
      positive_fraction: static float, maximum fraction of positives (RPN: 0.5).
    Returns:
      (pos_mask [N] bool, neg_mask [N] bool), disjoint, with exactly ``num_pos`` and ``num_neg``
      True entries (rule in the module docstring).
    Raises:
      ValueError: on a bad shape or parameters.
    Matches ``BalancedPositiveNegativeSampler.__call__`` for one image (as masks).
    """
    labels, num_samples, max_pos = _check(labels, num_samples, positive_fraction)
    n = labels.shape[0]
    pos_idx, num_pos, neg_idx, num_neg = _sample(labels, key, num_samples, max_pos)
    pos_keep = jnp.arange(max_pos) < num_pos
    neg_keep = jnp.arange(num_samples) < num_neg
    # (max, not set: padding indices may repeat when num_samples > N.)
    pos_mask = jnp.zeros((n,), jnp.int32).at[pos_idx].max(pos_keep.astype(jnp.int32), mode="drop")
    neg_mask = jnp.zeros((n,), jnp.int32).at[neg_idx].max(neg_keep.astype(jnp.int32), mode="drop")
    return pos_mask.astype(bool), neg_mask.astype(bool)


def sample_balanced_indices(
    labels: Array, key: Array, num_samples: int, positive_fraction: float
) -> Tuple[Array, Array, Array]:
    """Pick a balanced random subset and return exactly ``num_samples`` slots.

    Args:
      labels: [N] int, 1 = positive, 0 = negative, anything else (-1) = ignored.
      key: a ``jax.random`` key.
      num_samples: static int (RoI head: 512).
      positive_fraction: static float (RoI head: 0.25).
    Returns:
      indices: [num_samples] int32 into ``labels``: slots ``0..num_pos-1`` are the sampled
        positives, slots ``num_pos..num_pos+num_neg-1`` the sampled negatives, the remaining slots
        are padding (index 0). No index appears twice among the valid slots.
      is_positive: [num_samples] bool, True on the positive slots.
      valid: [num_samples] bool, False on the padding slots.
    Raises:
      ValueError: on a bad shape or parameters.
    Same counts and distribution as ``BalancedPositiveNegativeSampler`` (which returns masks).
    """
    labels, num_samples, max_pos = _check(labels, num_samples, positive_fraction)
    pos_idx, num_pos, neg_idx, num_neg = _sample(labels, key, num_samples, max_pos)
    slot = jnp.arange(num_samples, dtype=jnp.int32)
    is_positive = slot < num_pos
    valid = slot < num_pos + num_neg
    if max_pos > 0:
        from_pos = pos_idx[jnp.minimum(slot, max_pos - 1)]
    else:
        from_pos = jnp.zeros((num_samples,), jnp.int32)
    from_neg = neg_idx[jnp.clip(slot - num_pos, 0, num_samples - 1)]
    indices = jnp.where(is_positive, from_pos, jnp.where(valid, from_neg, 0)).astype(jnp.int32)
    return indices, is_positive, valid
