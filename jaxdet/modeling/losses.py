"""Detection losses as pure jnp functions, elementwise (reduction is the caller's, since the reference
implementations normalise by the number of sampled anchors / RoIs over the whole batch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise smooth-L1 (Huber with slope 1) of a residual ``x`` (any shape, float).

    ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``; ``beta == 0`` is plain L1.
    Matches ``torch.nn.functional.smooth_l1_loss(reduction='none')`` and detectron2's ``smooth_l1_loss``.
    """
    ax = jnp.abs(x)
    if beta < 1e-5:
        return ax
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``binary_cross_entropy_with_logits`` (numerically stable), any shape; targets in [0, 1]."""
    logits = logits.astype(jnp.float32)
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy per row: ``logits`` [..., K] float, ``labels`` [...] int32 in [0, K) -> [...] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
