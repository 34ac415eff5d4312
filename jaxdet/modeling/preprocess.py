"""On-device image normalisation for a padded canvas."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalize_images(images: jax.Array, image_size: jax.Array, pixel_mean: Sequence[float],
                     pixel_std: Sequence[float], dtype=jnp.float32) -> jax.Array:
    """``(image - mean) / std`` with the padding set to 0 *after* normalisation.

    torchvision's ``GeneralizedRCNNTransform`` and detectron2 normalise first and then pad with zeros, so
    the padded area is 0 in normalised space; doing the same keeps features near the bottom/right image
    border identical to theirs.

    Args:
      images: [B, H, W, 3] uint8 (or float) canvas in the channel order the weights expect.
      image_size: [B, 2] int32 (height, width) of the image inside the canvas.
      pixel_mean, pixel_std: 3 floats each, in the same channel order, in 0..255 pixel units.
      dtype: output dtype (the model's compute dtype).

    Returns:
      [B, H, W, 3] normalised images of ``dtype``.
    """
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(pixel_std, jnp.float32)
    _, h, w, _ = images.shape
    inside = ((jnp.arange(h)[None, :, None] < image_size[:, 0, None, None])
              & (jnp.arange(w)[None, None, :] < image_size[:, 1, None, None]))
    return jnp.where(inside[..., None], x, 0.0).astype(dtype)
