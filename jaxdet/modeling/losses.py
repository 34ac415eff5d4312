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


def sigmoid_focal_loss(
    logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Elementwise sigmoid focal loss (RetinaNet, https://arxiv.org/abs/1708.02002), reduction none.

    ``logits`` and ``targets`` have the same (any) shape; targets are binary labels in [0, 1] (float or
    bool). Returns float32 of that shape: ``alpha_t * (1 - p_t) ** gamma * BCE(logits, targets)`` with
    ``p = sigmoid(logits)``, ``p_t = p * t + (1 - p) * (1 - t)``, ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``;
    ``alpha = -1`` disables the alpha weighting. Raises ValueError for alpha outside [0, 1] and != -1.
    Matches ``torchvision.ops.sigmoid_focal_loss(..., reduction="none")`` (torchvision/ops/focal_loss.py).
    """
    if not (0 <= alpha <= 1) and alpha != -1:
        raise ValueError(f"Invalid alpha value: {alpha}. alpha must be in [0, 1] or -1 for ignore.")
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = sigmoid_binary_cross_entropy(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def generalized_box_iou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Elementwise generalized-IoU loss ``1 - GIoU`` of paired xyxy boxes (Rezatofighi et al., CVPR 2019).

    ``boxes1`` and ``boxes2``: [..., 4] float, xyxy (same shape; pairs, not all-to-all), any units. Returns
    float32 [...]: ``1 - (IoU - (C - U) / (C + eps))`` with ``IoU = I / (U + eps)``, ``U`` the union and ``C``
    the area of the smallest enclosing box; in [0, 2] for proper boxes. Finite for degenerate boxes.
    Matches ``torchvision.ops.generalized_box_iou_loss(..., reduction="none")`` (torchvision/ops/giou_loss.py).
    """
    boxes1 = boxes1.astype(jnp.float32)
    boxes2 = boxes2.astype(jnp.float32)
    x1, y1, x2, y2 = (boxes1[..., i] for i in range(4))
    x1g, y1g, x2g, y2g = (boxes2[..., i] for i in range(4))
    xk1, yk1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
    xk2, yk2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
    inter = jnp.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    area_c = (jnp.maximum(x2, x2g) - jnp.minimum(x1, x1g)) * (jnp.maximum(y2, y2g) - jnp.minimum(y1, y1g))
    return 1.0 - (iou - (area_c - union) / (area_c + eps))
