"""Evaluation: soft/hard CE agree with the inference runner's independent scoring."""
import jax
import numpy as np
import pytest

from mrt5_jax.maths import controller as ctl
from mrt5_jax.evaluation import evaluator as evaluation
from mrt5_jax.evaluation.deletion_analysis import byte_label
from mrt5_jax.training import objective as obj
from mrt5_jax.parallel import partitioning
from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig, bucket_for
from mrt5_jax.inference.runner import InferenceRunner
from tests.fixtures import small_batch


@pytest.fixture(scope="module")
def setup(tiny_model):
  module, variables = tiny_model
  params = variables["params"]
  # a gate bias that deletes a good share of positions, so hard != soft
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["encoder"]["delete_gate"]["dense"]["bias"] = params["encoder"]["delete_gate"]["dense"][
      "bias"] - 1.0
  evaluator = evaluation.Evaluator(module, partitioning.Partitioner(), obj.ObjectiveConfig(z_loss=0.0),
                                   ctl.ControllerConfig())
  batch = small_batch(seed=5, batch=4, length=32, target_length=8, pad_from=(None, 20, 9, None),
                      target_pad_from=(6, None, 3, None))
  return module, params, evaluator, batch


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_cross_entropy_matches_inference_runner(setup, mode):
  module, params, evaluator, batch = setup
  state = ctl.init_state(ctl.ControllerConfig())
  sums = evaluator.batch_sums(params, state, batch, modes=[mode])[mode]
  runner = InferenceRunner(module.config, params, mode="soft" if mode == "soft" else "bucketed")
  ll = np.asarray(runner.score(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                               batch["decoder_target_tokens"]))
  np.testing.assert_allclose(float(sums["cross_entropy_sum"]), -ll.sum(), rtol=1e-4)
  assert float(sums["num_deleted"]) > 0


def test_hard_length_is_the_bucket_of_the_largest_kept_count(setup):
  module, params, evaluator, batch = setup
  reading = module.apply({"params": params}, batch["encoder_input_tokens"], None, False,
                         method=module.encode_stage_one)
  real = batch["encoder_input_tokens"] > 0
  kept = ((np.asarray(reading.gate) >= module.config.deletion_threshold) & real).sum(-1).max()
  state = ctl.init_state(ctl.ControllerConfig())
  length = float(evaluator.batch_sums(params, state, batch)["hard"]["compacted_length"])
  assert length == bucket_for(InferenceConfig(), 32, int(kept)) < 32


def test_evaluate_batches_and_profile(setup):
  module, params, evaluator, batch = setup
  collected = evaluation.DeletionProfile(module.config.vocab_size)
  results = evaluator.evaluate_batches(params, ctl.init_state(ctl.ControllerConfig()),
                                       [batch, batch], profile=collected)
  assert set(results) == {"soft", "hard"}
  np.testing.assert_allclose(results["soft"]["deletion_rate"], results["hard"]["deletion_rate"])
  assert results["hard"]["num_batches"] == 2
  profile = evaluation.deletion_profile(EncodePath(module), params, [batch])
  assert {k: (2 * d, 2 * n) for k, (d, n) in profile.items()} == collected.as_dict()
  seen = sum(s for _, s in profile.values())
  assert seen == int((batch["encoder_input_tokens"] > 0).sum())
  deleted = sum(d for d, _ in profile.values())
  assert deleted / seen == pytest.approx(results["soft"]["deletion_rate"])
  assert byte_label(ord("e") + 3) == "'e'" and byte_label(1) == "EOS"


def test_no_batches_is_an_error(setup):
  _, params, evaluator, _ = setup
  with pytest.raises(ValueError, match="no batches"):
    evaluator.evaluate_batches(params, ctl.init_state(ctl.ControllerConfig()), [])


def test_in_training_eval_pads_a_split_smaller_than_the_batch(setup, tmp_path):
  """A validation split of 3 examples and a batch of 8: one padded batch, not 'no batches'."""
  import json
  import gin
  from mrt5_jax.data import pipeline as data_lib
  _, params, evaluator, _ = setup
  path = tmp_path / "validation.jsonl"
  path.write_text("".join(json.dumps({"input": f"abc{i}", "output": f"cba{i}"}) + "\n"
                          for i in range(3)))
  gin.bind_parameter("mrt5_jax.tasks.spelling_correction_files.validation", str(path))
  dataset = data_lib.DatasetConfig(
      mixture_or_task_name="mrt5.character.spelling_correction_contextual",
      task_feature_lengths={"inputs": 16, "targets": 8}, split="validation", batch_size=8,
      shuffle=False, num_epochs=1)
  state = ctl.init_state(ctl.ControllerConfig())
  results = evaluator.evaluate_dataset(params, state, dataset, num_batches=20)
  assert results["soft"]["num_batches"] == 1
  assert results["soft"]["cross_entropy_per_token"] > 0


def test_most_deleted_is_data_and_prints_the_same_line(setup):
  """The eval JSON's most_deleted: a list of {byte, id, deleted, seen, rate}; the printed line
  made from it is describe_profile's."""
  import json
  from mrt5_jax.evaluation import deletion_analysis
  module, params, evaluator, batch = setup
  collected = evaluation.DeletionProfile(module.config.vocab_size)
  evaluator.evaluate_batches(params, ctl.init_state(ctl.ControllerConfig()), [batch],
                             profile=collected)
  profile = collected.as_dict()
  entries = deletion_analysis.most_deleted(profile)
  assert entries and json.loads(json.dumps(entries)) == entries
  assert set(entries[0]) == {"byte", "id", "deleted", "seen", "rate"}
  assert [e["deleted"] for e in entries] == sorted((e["deleted"] for e in entries), reverse=True)
  for e in entries:
    assert (e["deleted"], e["seen"]) == profile[e["id"]]
    assert e["byte"] == byte_label(e["id"]) and e["rate"] == e["deleted"] / e["seen"]
  assert deletion_analysis.describe_most_deleted(entries) == evaluation.describe_profile(profile)
  assert deletion_analysis.describe_most_deleted([]) == "nothing deleted"
