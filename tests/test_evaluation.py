"""Evaluation: soft/hard CE agree with the inference runner's independent scoring."""
import jax
import numpy as np
import pytest

from mrt5_jax import controller as ctl
from mrt5_jax import evaluation
from mrt5_jax import objective as obj
from mrt5_jax import partitioning
from mrt5_jax.hard_deletion import EncodePath, InferenceConfig, bucket_for
from mrt5_jax.inference import InferenceRunner
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
  assert evaluation.byte_label(ord("e") + 3) == "'e'" and evaluation.byte_label(1) == "EOS"


def test_no_batches_is_an_error(setup):
  _, params, evaluator, _ = setup
  with pytest.raises(ValueError, match="no batches"):
    evaluator.evaluate_batches(params, ctl.init_state(ctl.ControllerConfig()), [])
