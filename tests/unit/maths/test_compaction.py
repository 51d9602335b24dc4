import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import compaction


def reference_compaction(keep, gate, length):
  """NumPy: kept positions in order; on overflow the `length` highest-G ones."""
  indices, valid, dropped = [], [], []
  for k, g in zip(keep, gate):
    kept = np.flatnonzero(k)
    if len(kept) > length:
      order = sorted(kept, key=lambda i: (-g[i], i))[:length]
      kept = np.sort(order)
    dropped.append(int(k.sum()) - len(kept))
    indices.append(list(kept) + [0] * (length - len(kept)))
    valid.append([True] * len(kept) + [False] * (length - len(kept)))
  return np.array(indices), np.array(valid), np.array(dropped)


def test_keep_mask_threshold_and_rescue_rules():
  gate = jnp.array([[-1.0, -20.0, -3.0, -30.0],    # normal
                    [-16.0, -25.0, -17.0, -30.0],  # nothing passes: keep best real (-16)
                    [-30.0, -30.0, -30.0, -30.0]])  # all pad: keep position 0
  real = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
  keep = np.asarray(compaction.keep_mask(gate, real, -15.0))
  np.testing.assert_array_equal(keep, [[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])


def test_rescue_is_per_packed_segment():
  gate = jnp.array([[-20.0, -18.0, -1.0, -25.0, -16.0, -16.0, -30.0]])
  real = jnp.array([[1, 1, 1, 1, 1, 1, 0]])
  segments = jnp.array([[1, 1, 2, 3, 3, 3, 0]])
  keep = np.asarray(compaction.keep_mask(gate, real, -15.0, segments))
  np.testing.assert_array_equal(keep, [[0, 1, 1, 0, 1, 0, 0]])


@pytest.mark.parametrize("length", [3, 6, 10])
def test_compact_indices_match_numpy_reference(length):
  rng = np.random.RandomState(length)
  gate = rng.uniform(-30, 0, size=(6, 10)).astype(np.float32)
  gate[0, :] = -5.0  # ties: earlier positions win
  keep = gate > -15.0
  keep[:, 0] |= ~keep.any(1)
  got = compaction.compact_indices(jnp.asarray(keep), jnp.asarray(gate), length)
  indices, valid, dropped = reference_compaction(keep, gate, length)
  np.testing.assert_array_equal(got.indices, indices)
  np.testing.assert_array_equal(got.valid, valid)
  np.testing.assert_array_equal(got.num_dropped, dropped)


def test_gather_takes_rows_per_example():
  values = jnp.arange(2 * 5 * 3).reshape(2, 5, 3)
  idx = jnp.array([[4, 0], [1, 1]])
  out = np.asarray(compaction.gather(values, idx))
  np.testing.assert_array_equal(out[0], np.asarray(values)[0, [4, 0]])
  np.testing.assert_array_equal(out[1], np.asarray(values)[1, [1, 1]])


def test_bad_length_is_refused():
  with pytest.raises(ValueError, match="compacted length"):
    compaction.compact_indices(jnp.ones((1, 4), bool), jnp.zeros((1, 4)), 5)
