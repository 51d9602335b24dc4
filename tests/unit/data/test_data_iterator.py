"""The training data stream: data shards, and checkpointed tf.data iterators (no replay)."""
import dataclasses
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import diagnostic_dataset
from mrt5_jax.checkpointing import writer
from mrt5_jax.data import pipeline


@pytest.fixture
def source_pulls(monkeypatch):
  """Counts the examples the diagnostic source generates (each pull from the source)."""
  from mrt5_jax.tasks import diagnostic
  calls = [0]
  original = diagnostic.generate_example

  def counting(*args, **kwargs):
    calls[0] += 1
    return original(*args, **kwargs)

  monkeypatch.setattr(diagnostic, "generate_example", counting)

  def measure(fn):
    calls[0] = 0
    result = fn()
    time.sleep(0.2)  # let tf.data's reader threads settle before reading the count
    return calls[0], result

  return measure


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for name in x:
      np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_resume_restores_the_iterator_without_reading_consumed_examples(tmp_path, source_pulls):
  config = diagnostic_dataset("vowel_removal", batch_size=4, seed=7)
  consumed = 30
  first = pipeline.BatchIterator(config)
  for _ in range(consumed):
    next(first)
  assert first.save_iterators(str(tmp_path))
  position = first.state()
  assert position["batches_consumed"] == consumed and position["iterator_state"]
  expected = [next(first) for _ in range(3)]

  def resume(pos):
    again = pipeline.BatchIterator(config)
    how = again.restore_iterators(str(tmp_path), pos)
    return how, again.batches_consumed, [next(again) for _ in range(3)]

  pulls, (how, count, batches) = source_pulls(lambda: resume(position))
  assert (how, count) == ("iterator", consumed)
  assert_batches_equal(batches, expected)
  # the 120 consumed examples are not generated again (the 12 new ones are, plus read-ahead)
  assert pulls < consumed * config.batch_size, pulls
  replay_pulls, (how, count, batches) = source_pulls(
      lambda: resume(dict(position, iterator_state=False)))
  assert (how, count) == ("replay", consumed)
  assert_batches_equal(batches, expected)
  assert replay_pulls >= (consumed + 3) * config.batch_size


def test_data_shards_give_the_same_batches_on_one_or_two_processes():
  config = dataclasses.replace(diagnostic_dataset("copy", batch_size=6, seed=3), num_shards=2)
  one = pipeline.BatchIterator(config)
  two = [pipeline.BatchIterator(config, process_index=i, process_count=2) for i in range(2)]
  assert (list(one.shard_ids), [list(p.shard_ids) for p in two]) == ([0, 1], [[0], [1]])
  for _ in range(4):
    together = next(one)
    parts = [next(p) for p in two]
    assert parts[0]["encoder_input_tokens"].shape[0] == 3
    assert_batches_equal([together], [{k: np.concatenate([p[k] for p in parts])
                                       for k in together}])
  # one shard per process is the default; the stream then differs from the 2-shard one
  default = pipeline.BatchIterator(dataclasses.replace(config, num_shards=None))
  assert default.num_shards == 1
  with pytest.raises(ValueError, match="not a multiple of the 2 processes"):
    pipeline.BatchIterator(dataclasses.replace(config, num_shards=3), process_count=2)
  with pytest.raises(ValueError, match="not divisible by 4 data shards"):
    pipeline.BatchIterator(dataclasses.replace(config, num_shards=4))


def test_iterator_state_saved_by_two_processes_restores_in_one(tmp_path):
  config = dataclasses.replace(diagnostic_dataset("copy", batch_size=4, seed=5), num_shards=2)
  processes = [pipeline.BatchIterator(config, process_index=i, process_count=2) for i in range(2)]
  for process in processes:
    for _ in range(5):
      next(process)
    assert process.save_iterators(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted(
      f"{pipeline.shard_file(s, 2)}{ext}" for s in (0, 1) for ext in (".index",
                                                                 ".data-00000-of-00001"))
  expected = [{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
              for parts in ([next(p) for p in processes] for _ in range(2))]
  single = pipeline.BatchIterator(config)
  assert single.restore_iterators(str(tmp_path), processes[0].state()) == "iterator"
  assert_batches_equal([next(single) for _ in range(2)], expected)
  with pytest.raises(ValueError, match="set DatasetConfig.num_shards = 2"):
    pipeline.BatchIterator(dataclasses.replace(config, num_shards=1)).restore_iterators(
        str(tmp_path), processes[0].state())


def test_a_pipeline_tf_data_cannot_save_falls_back_to_replay(tmp_path, monkeypatch):
  def generated(config, *, shard_id=0, num_shards=1, batches_to_skip=0):
    rows = lambda: ({"x": np.full((2,), i, np.int32)} for i in range(100))
    spec = {"x": tf.TensorSpec([2], tf.int32)}
    return tf.data.Dataset.from_generator(rows, output_signature=spec).batch(2)

  monkeypatch.setattr(pipeline, "get_dataset", generated)
  config = pipeline.DatasetConfig(batch_size=2)
  stream = pipeline.BatchIterator(config)
  for _ in range(3):
    next(stream)
  assert not stream.save_iterators(str(tmp_path))
  assert stream.state()["iterator_state"] is False and os.listdir(tmp_path) == []
  again = pipeline.BatchIterator(config)
  assert again.restore_iterators(str(tmp_path), stream.state()) == "replay"
  np.testing.assert_array_equal(next(again)["x"], [[6, 6], [7, 7]])


def test_orbax_item_keeps_the_json_position_readable(tmp_path):
  config = diagnostic_dataset("copy", batch_size=4, seed=1)
  stream = pipeline.BatchIterator(config)
  for _ in range(4):
    next(stream)
  state = {"step": np.asarray(4, np.int32)}
  with writer.manager(str(tmp_path / "run"), async_save=False) as mngr:
    writer.save(mngr, 4, state, stream)
    mngr.wait_until_finished()
  expected = next(stream)
  item = tmp_path / "run" / "checkpoints" / "4" / "data_iterator"
  assert sorted(set(os.listdir(item)) - {"commit_success.txt"}) == ["metadata", "shard_00000-of-00001.data-00000-of-00001",
                                      "shard_00000-of-00001.index"]
  with writer.manager(str(tmp_path / "run"), async_save=False) as mngr:
    _, position = writer.restore(mngr, 4, state)  # a reader without an iterator: JSON only
  assert position["batches_consumed"] == 4 and position["num_shards"] == 1
  resumed = pipeline.BatchIterator(config)
  with writer.manager(str(tmp_path / "run"), async_save=False) as mngr:
    restored, position = writer.restore(mngr, 4, state, data_iterator=resumed)
  assert int(restored["step"]) == 4 and position["resumed_by"] == "iterator"
  assert_batches_equal([next(resumed)], [expected])

  # a checkpoint written before iterator state existed (JSON only) resumes by replaying
  with writer.manager(str(tmp_path / "old"), async_save=False) as mngr:
    writer.save(mngr, 4, state, {"batches_consumed": 4, "seed": 1})
    mngr.wait_until_finished()
  old = pipeline.BatchIterator(config)
  with writer.manager(str(tmp_path / "old"), async_save=False) as mngr:
    _, position = writer.restore(mngr, 4, state, data_iterator=old)
  assert position["resumed_by"] == "replay" and old.batches_consumed == 4
  assert_batches_equal([next(old)], [expected])
