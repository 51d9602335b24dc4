"""Per-task reports: rows per language agree with independent scoring and hand FLOP counts."""
import dataclasses

import jax
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from mrt5_jax.maths import controller as ctl
from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.evaluation import evaluator as evaluation
from mrt5_jax.training import objective as obj
from mrt5_jax.parallel import partitioning
from mrt5_jax.data import eval_pipeline
from mrt5_jax.evaluation import task_report
from mrt5_jax.evaluation import timing
from mrt5_jax.evaluation.speed import SpeedMeter
from mrt5_jax.inference.encode_path import EncodePath
from mrt5_jax.inference.runner import InferenceRunner

INPUTS = 64
LENGTHS = {"inputs": INPUTS, "targets": tasks.span_corruption_lengths(INPUTS)[1]}
MIXTURE = "test.report.sample2"
LANGUAGES = ("en", "th")


def _dataset(name, batch_size=4):
  return data_lib.DatasetConfig(mixture_or_task_name=name, task_feature_lengths=LENGTHS,
                                split="validation", batch_size=batch_size, shuffle=False,
                                num_epochs=1)


def _examples(name):
  ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split="validation",
                         shuffle=False, num_epochs=1,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return next(ds.batch(1000).as_numpy_iterator())


def test_language_of():
  assert eval_pipeline.language_of("mrt5.xnli.th") == "th"
  assert eval_pipeline.language_of("mrt5.span_corruption.sample.zh") == "zh"
  assert eval_pipeline.language_of("mrt5.tydiqa.train") == ""
  assert eval_pipeline.language_of("mrt5.character.word_search") == ""


def test_padded_batches_cover_the_split_once_with_empty_padding_rows():
  name = "mrt5.span_corruption.sample.th"
  expected = _examples(name)["encoder_input_tokens"]
  batches = list(eval_pipeline.padded_batches(_dataset(name, batch_size=4), None))
  assert sum(real for _, real in batches) == len(expected) > 4
  tokens = np.concatenate([b["encoder_input_tokens"][:real] for b, real in batches])
  np.testing.assert_array_equal(tokens, expected)
  last, real = batches[-1]
  assert all(b["encoder_input_tokens"].shape == (4, INPUTS) for b, _ in batches)
  for key, value in last.items():
    assert not value[real:].any(), key
  assert len(list(eval_pipeline.padded_batches(_dataset(name, batch_size=4), 1))) == 1


def test_speed_report_by_hand():
  speed = timing.Speed(examples=4, batches=2, encoder_full=0.4, encoder_hard=0.2,
                            forward_full=0.8, forward_hard=0.5, encoder_ratios=[1.0, 3.0, 2.5],
                            forward_ratios=[1.5, 1.7, 1.2], encoder_flops_full=6.0,
                            encoder_flops_hard=4.0, forward_flops_full=9.0,
                            forward_flops_hard=6.0, compacted_lengths=[32, 16, 32])
  report = speed.report()
  assert report["encoder_full_ms_per_example"] == pytest.approx(100.0)
  assert report["encoder_hard_ms_per_example"] == pytest.approx(50.0)
  assert report["encoder_speedup"] == 2.5 and report["forward_speedup"] == 1.5
  assert report["encoder_ideal_speedup"] == 1.5 and report["forward_ideal_speedup"] == 1.5
  assert report["compacted_lengths"] == [16, 32]
  assert timing.Speed().report() == {}


def _hand_encoder_flops(config, length, kept):
  def layer(n):
    inner = config.num_heads * config.head_dim
    return 8 * n * config.d_model * inner + 4 * n * n * inner + 6 * n * config.d_model * config.d_ff
  gate = config.delete_gate_layer
  return gate * layer(length) + (config.num_encoder_layers - gate) * layer(kept)


@pytest.mark.slow
def test_rows_per_language_match_independent_scoring(tiny_model):
  module, variables = tiny_model
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  params["encoder"]["delete_gate"]["dense"]["bias"] = (
      params["encoder"]["delete_gate"]["dense"]["bias"] - 0.5)
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, [(f"mrt5.span_corruption.sample.{lang}", 1.0)
                                      for lang in LANGUAGES])
  evaluator = evaluation.Evaluator(module, partitioning.Partitioner(),
                                   obj.ObjectiveConfig(z_loss=0.0), ctl.ControllerConfig())
  state = ctl.init_state(ctl.ControllerConfig())
  report = task_report.evaluate_tasks(evaluator, params, state, _dataset(MIXTURE),
                                      num_batches=None, speed_meter=SpeedMeter(module.config, params),
                                      speed_batches=1, speed_repeats=1)
  rows = {row["language"]: row for row in report["tasks"]}
  assert set(rows) == set(LANGUAGES)
  runner = InferenceRunner(module.config, params, mode="bucketed")
  path = EncodePath(module)
  threshold = module.config.deletion_threshold
  totals = {"ll": 0.0, "tokens": 0, "examples": 0}
  for lang in LANGUAGES:
    name = f"mrt5.span_corruption.sample.{lang}"
    row = rows[lang]
    batch = _examples(name)
    tokens = batch["encoder_input_tokens"]
    targets = batch["decoder_target_tokens"]
    ll = np.asarray(runner.score(tokens, batch["decoder_input_tokens"], targets))
    assert row["task"] == name and row["examples"] == len(tokens)
    assert row["hard"]["cross_entropy_per_token"] == pytest.approx(
        -ll.sum() / (targets > 0).sum(), rel=1e-4)
    reading, _ = path.read_gate(params, tokens)
    real = tokens > 0
    deleted = (np.asarray(reading.gate) < threshold) & real
    assert 0 < deleted.sum() < real.sum()
    assert row["deletion_rate"] == pytest.approx(deleted.sum() / real.sum(), rel=1e-6)
    assert row["kept_length"] == pytest.approx((real.sum() - deleted.sum()) / len(tokens))
    speed = row["speed"]
    first = tokens[:4]
    (bucket,) = speed["compacted_lengths"]
    assert bucket == runner.encode(first).compacted_length
    # the speed meter runs the default (packed) mode: its stage two ran on `rows` rows of `run`
    kept = path.read_gate(params, first)[1]
    stage_rows, run = path.stage_two_shape(kept, INPUTS, bucket)
    assert speed["stage_two_rows"] == stage_rows and speed["batch_rows"] == len(first)
    full = _hand_encoder_flops(module.config, INPUTS, INPUTS)
    stage_one = _hand_encoder_flops(module.config, INPUTS, 0)
    stage_two = lambda n: _hand_encoder_flops(module.config, 0, n)
    assert speed["encoder_ideal_speedup"] == pytest.approx(
        len(first) * full / (len(first) * stage_one + stage_rows * stage_two(run)))
    kept_rows = np.asarray(kept)
    assert speed["exact_ideal_speedup"] == pytest.approx(
        len(first) * full / sum(_hand_encoder_flops(module.config, INPUTS, int(k))
                                for k in kept_rows))
    assert speed["longest_kept"] == int(kept_rows.max())
    assert speed["examples"] == 4 and speed["encoder_hard_ms_per_example"] > 0
    totals["ll"] += ll.sum()
    totals["tokens"] += (targets > 0).sum()
    totals["examples"] += len(tokens)
  overall = report["all"]
  assert overall["examples"] == totals["examples"]
  assert overall["hard"]["cross_entropy_per_token"] == pytest.approx(
      -totals["ll"] / totals["tokens"], rel=1e-4)
  table = task_report.format_table(report).splitlines()
  assert len(table) == 2 + len(LANGUAGES) + 1
  assert table[-1].startswith("all") and "mrt5.span_corruption.sample.th" in table[3]
  assert "deleted" in table[0] and "len reduction" not in table[0]
  pooled = task_report.format_table({**report, "deletion_type": "conv"}).splitlines()
  assert "len reduction" in pooled[0] and "slots/len" in pooled[0]
  assert "deleted" not in pooled[0] and len(pooled) == len(table)


def test_a_missing_split_is_a_clear_error():
  dataset = dataclasses.replace(_dataset("mrt5.span_corruption.sample.en"), split="test")
  with pytest.raises(ValueError, match="no split 'test'"):
    next(eval_pipeline.padded_batches(dataset, 1))
