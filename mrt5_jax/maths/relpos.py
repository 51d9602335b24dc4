"""T5 relative position buckets and the bias they select from a learned table.

Pure functions, shared by the dense path (``model.attention.RelativePositionBiases``)
and the blocked attention, which builds the bias one (query, key) block at a
time from positions instead of materialising it at (L, L).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def _log_bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
  """Bucket of each distance 0..max_distance (one direction), in float32 as T5 computes it."""
  max_exact = num_buckets // 2
  n = np.arange(max_distance + 1, dtype=np.int64)
  with np.errstate(divide="ignore"):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  large = max_exact + np.where(n >= max_exact, scaled, 0).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """T5's bucketing of ``key_position - query_position`` (int array of any shape)."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  table = jnp.asarray(_log_bucket_table(num_buckets, max_distance))
  return buckets + table[jnp.minimum(distance, max_distance)]


def bias_from_table(table: jax.Array, query_positions: jax.Array, key_positions: jax.Array,
                    *, bidirectional: bool, max_distance: int = 128) -> jax.Array:
  """table (H, num_buckets), positions (B|1, Q) and (B|1, K) int -> (B|1, H, Q, K)."""
  relative = key_positions[:, None, :] - query_positions[:, :, None]
  bucket = relative_position_bucket(relative.astype(jnp.int32), bidirectional,
                                    table.shape[1], max_distance)
  values = jnp.take(table.T, bucket, axis=0)
  return jnp.transpose(values, (0, 3, 1, 2))
