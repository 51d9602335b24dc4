"""Span corruption: length arithmetic, exact reconstruction, noise statistics."""
import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import mrt5_jax.tasks as tasks
from mrt5_jax.tasks import span_corruption

FIRST_SENTINEL = 258  # top id of seqio's 259-id ByteVocabulary (byte 0xFF)


MAX_DATA_ID = 200  # random test chunks use ids 3..200; sentinels stay above


def reconstruct(inputs, targets, max_data_id=MAX_DATA_ID):
  """Fills sentinels of ``inputs`` with their spans from ``targets`` (NumPy).

  Ids above ``max_data_id`` are sentinels; they must count down from 258 in
  both sequences, and in targets each sentinel precedes its span. EOS (1)
  and padding (0) are dropped.
  """
  inputs = np.asarray([t for t in inputs if t > 1])
  targets = np.asarray([t for t in targets if t > 1])
  in_sentinels = inputs[inputs > max_data_id]
  starts = np.flatnonzero(targets > max_data_id)
  expected = FIRST_SENTINEL - np.arange(len(starts))
  np.testing.assert_array_equal(targets[starts], expected)
  np.testing.assert_array_equal(in_sentinels, expected)
  assert starts[0] == 0
  spans = np.split(targets, starts[1:])
  out, k = [], 0
  for t in inputs:
    if t > max_data_id:
      out.extend(spans[k][1:])
      k += 1
    else:
      out.append(t)
  return np.asarray(out)


def test_byt5_lengths():
  assert tasks.span_corruption_lengths(1024, 0.15, 20.0) == (1193, 189)
  assert tasks.span_corruption_lengths(1024) == (1193, 189)
  assert tasks.feature_lengths() == {"inputs": 1024, "targets": 189}


def test_lengths_against_hand_computation():
  # T5 defaults, 512 inputs: raw 568 -> noise round(85.2) = 85 in
  # round(85 / 3) = 28 spans; inputs 568 - 85 + 28 + 1 = 512, targets
  # 85 + 28 + 1 = 114. Raw 569 -> noise 85, 28 spans, inputs 513 > 512.
  assert tasks.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
  # 128 inputs, density 0.3, spans of 5: raw 164 -> noise round(49.2) = 49,
  # round(9.8) = 10 spans, inputs 115 + 10 + 1 = 126; raw 165 -> noise
  # round(49.5) = 50 (half to even), 10 spans: 115 + 10 + 1 = 126;
  # raw 166 -> round(49.8) = 50: 116 + 11 = 127; raw 167 -> round(50.1) = 50:
  # 117 + 11 = 128; raw 168 -> round(50.4) = 50: 118 + 11 = 129 > 128.
  # So raw 167, targets 50 + 10 + 1 = 61.
  assert tasks.span_corruption_lengths(128, 0.3, 5.0) == (167, 61)


@pytest.mark.parametrize("kwargs", [
    dict(inputs_length=1024, noise_density=0.0, mean_noise_span_length=20.0),
    dict(inputs_length=1024, noise_density=1.0, mean_noise_span_length=20.0),
    dict(inputs_length=1024, noise_density=0.15, mean_noise_span_length=0.5),
    dict(inputs_length=1, noise_density=0.15, mean_noise_span_length=20.0),
])
def test_bad_settings_raise(kwargs):
  with pytest.raises(ValueError):
    tasks.span_corruption_lengths(**kwargs)


def _corrupt_raw_chunks(chunks, seed, density=0.15, mean_span=20.0):
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": np.asarray(c, np.int32)} for c in chunks),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  with seqio.utils.map_seed_manager(seed):
    ds = span_corruption.corrupt_chunks(ds, density, mean_span, FIRST_SENTINEL)
  return list(ds.as_numpy_iterator())


def test_raw_chunk_gives_exact_lengths_and_reconstructs():
  rng = np.random.default_rng(0)
  chunks = [rng.integers(3, MAX_DATA_ID + 1, size=1193) for _ in range(8)]
  for chunk, ex in zip(chunks, _corrupt_raw_chunks(chunks, seed=7)):
    assert len(ex["inputs"]) + 1 == 1024  # + EOS
    assert len(ex["targets"]) + 1 == 189
    np.testing.assert_array_equal(reconstruct(ex["inputs"], ex["targets"]),
                                  chunk)
    assert ex["targets"][0] == FIRST_SENTINEL


@pytest.mark.parametrize("inputs_length,density,mean_span", [
    (8, 0.15, 20.0), (16, 0.15, 20.0), (40, 0.15, 20.0), (64, 0.15, 20.0),
    (100, 0.5, 3.0), (333, 0.15, 3.0), (64, 0.3, 1.0), (2048, 0.15, 20.0)])
def test_arithmetic_matches_the_corrupted_lengths(inputs_length, density,
                                                  mean_span):
  raw, targets_length = tasks.span_corruption_lengths(inputs_length, density,
                                                      mean_span)
  rng = np.random.default_rng(inputs_length)
  chunks = [rng.integers(3, 100, size=raw) for _ in range(3)]
  for chunk, ex in zip(chunks, _corrupt_raw_chunks(chunks, 1, density,
                                                   mean_span)):
    assert len(ex["inputs"]) + 1 == inputs_length  # + EOS
    assert len(ex["targets"]) + 1 == targets_length
    np.testing.assert_array_equal(
        reconstruct(ex["inputs"], ex["targets"], max_data_id=100), chunk)


def test_noise_density_and_span_length_statistics():
  rng = np.random.default_rng(1)
  sizes = rng.integers(200, 3000, size=300)
  chunks = [rng.integers(3, MAX_DATA_ID + 1, size=n) for n in sizes]
  examples = _corrupt_raw_chunks(chunks, seed=3)
  noise = spans = total = 0
  first_half = second_half = 0
  span_lengths = []
  for chunk, ex in zip(chunks, examples):
    sentinel = ex["inputs"] > MAX_DATA_ID
    n_spans = int(sentinel.sum())
    n_noise = len(ex["targets"]) - n_spans
    noise, spans, total = noise + n_noise, spans + n_spans, total + len(chunk)
    # Noise positions in the raw chunk, from the inputs' layout.
    target_spans = np.split(ex["targets"],
                            np.flatnonzero(ex["targets"] > MAX_DATA_ID))
    span_lengths += [len(s) - 1 for s in target_spans if len(s)]
    mask = np.zeros(len(chunk), bool)
    position, span = 0, 1
    for token in ex["inputs"]:
      if token > MAX_DATA_ID:
        length = len(target_spans[span]) - 1
        mask[position:position + length] = True
        position, span = position + length, span + 1
      else:
        position += 1
    assert position == len(chunk)
    half = len(chunk) // 2
    first_half += mask[:half].sum() / half
    second_half += mask[half:].sum() / (len(chunk) - half)
  assert abs(noise / total - 0.15) < 0.015
  assert abs(noise / spans - 20.0) < 2.0
  assert abs(np.mean(span_lengths) - 20.0) < 2.0
  assert np.std(span_lengths) > 5.0  # span lengths vary, not all 20
  # Spread over the chunk (T5's masks start with non-noise and end with
  # noise, so the halves differ a little).
  assert abs(first_half / len(chunks) - 0.15) < 0.0225
  assert abs(second_half / len(chunks) - 0.15) < 0.0225


def test_seeded_masks_are_deterministic_and_seed_dependent():
  rng = np.random.default_rng(2)
  chunks = [rng.integers(3, MAX_DATA_ID + 1, size=1193) for _ in range(4)]
  a = _corrupt_raw_chunks(chunks, seed=11)
  b = _corrupt_raw_chunks(chunks, seed=11)
  c = _corrupt_raw_chunks(chunks, seed=12)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  assert any(not np.array_equal(x["inputs"], z["inputs"])
             for x, z in zip(a, c))


def test_text_file_round_trip_and_gin_knobs(tmp_path):
  """User text through the whole task: chunks reconstruct the file bytes."""
  text = "".join(
      f"Line {i}: ünïcödé Ελληνικά русский 中文 ไทย हिन्दी عربى {i * i}\n"
      for i in range(120))
  path = tmp_path / "corpus.txt"
  path.write_text(text, encoding="utf-8")
  gin.bind_parameter("mrt5_jax.tasks.text_files.train", [str(path)])
  gin.bind_parameter("mrt5_jax.tasks.span_corruption_config.inputs_length",
                     256)
  gin.bind_parameter("mrt5_jax.tasks.span_corruption_config.noise_density",
                     0.3)
  gin.bind_parameter(
      "mrt5_jax.tasks.span_corruption_config.mean_noise_span_length", 10.0)
  raw, targets_length = tasks.span_corruption_lengths(256, 0.3, 10.0)
  assert tasks.feature_lengths() == {"inputs": 256, "targets": targets_length}
  task = seqio.get_mixture_or_task(tasks.TEXT_TASK)
  examples = list(task.get_dataset(None, split="train", shuffle=False,
                                   seed=5).as_numpy_iterator())
  data = text.encode("utf-8")
  assert len(examples) == -(-len(data) // raw)
  # UTF-8 bytes are <= 0xF4 (id 247); 10 spans use sentinels 258..249.
  restored = np.concatenate(
      [reconstruct(ex["inputs"], ex["targets"], max_data_id=247)
       for ex in examples])
  np.testing.assert_array_equal(restored - 3, np.frombuffer(data, np.uint8))
  for ex in examples[:-1]:
    assert len(ex["inputs"]) == 256 and len(ex["targets"]) == targets_length
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
  with pytest.raises(ValueError, match="sequence_length\\['targets'\\]"):
    task.get_dataset({"inputs": 256, "targets": targets_length - 1},
                     split="train", shuffle=False)


def test_bad_gin_setting_is_named():
  gin.bind_parameter("mrt5_jax.tasks.span_corruption_config.noise_density",
                     1.5)
  with pytest.raises(ValueError, match="noise_density"):
    tasks.feature_lengths()
