"""The shortening comparison's plan, bindings and statistics (against hand-computed values)."""
import json
import math
import os

import pytest

from mrt5_jax.jobs import stages
from mrt5_jax.model import config as config_lib
from mrt5_jax.studies import shortening_comparison as study


def test_plan_gives_cp_matched_partners_and_byt5_once_per_seed():
  runs = study.plan_runs([0.5], [0, 1], cp_rate=4)
  names = [run.name for run in runs if run.seed == 0]
  assert names == ["s0.byt5", "s0.mrt5@0.5", "s0.random@0.5", "s0.fixed@0.5", "s0.bp@0.5",
                   "s0.mrt5@0.75", "s0.random@0.75", "s0.fixed@0.75", "s0.bp@0.75",
                   "s0.cp@0.75"]
  assert len(runs) == 20
  # a target equal to CP's reduction is not run twice
  assert len(study.plan_runs([0.75], [3], cp_rate=4)) == 6


def test_a_subset_of_architectures_still_runs_byt5_and_cp_brings_its_target():
  names = [run.name for run in study.plan_runs([0.5], [0], 4, architectures=["mrt5", "cp"])]
  assert names == ["s0.byt5", "s0.mrt5@0.5", "s0.mrt5@0.75", "s0.cp@0.75"]
  names = [run.name for run in study.plan_runs([0.5], [0], 4, architectures=["random"])]
  assert names == ["s0.byt5", "s0.random@0.5"]  # no CP, so no CP target
  with pytest.raises(ValueError, match="unknown architectures.*'mamba'"):
    study.plan_runs([0.5], [0], 4, architectures=["mrt5", "mamba"])


def test_every_architecture_shortens_at_the_same_layer_with_its_rate():
  expected = {"byt5": ("none", 0.0), "mrt5": ("scaled_sigmoid", None),
              "random": ("random", 0.3), "fixed": ("fixed", 0.3), "bp": ("boundary", 0.7),
              "cp": ("conv", 5)}
  import gin
  for architecture, (kind, value) in expected.items():
    gin.clear_config()
    gin.parse_config(["MrT5Config.size = 'tiny'", "MrT5Config.delete_gate_layer = 1",
                      "TARGET_DELETION_RATE = 0.0"]
                     + list(study.architecture_bindings(architecture, 0.3, cp_rate=5)),
                     skip_unknown=True)
    config = config_lib.MrT5Config()
    assert config.deletion_type == kind
    assert config.delete_gate_layer == 1
    if architecture == "random":
      assert config.shortening.random_deletion_probability == value
    if architecture == "fixed":
      assert config.shortening.fixed_deletion_amount == value
    if architecture == "bp":
      assert (config.shortening.prior == pytest.approx(value)
              and config.shortening.capacity_fraction == 1.0)
    if architecture == "cp":
      assert config.shortening.rate == value
  gin.clear_config()
  with pytest.raises(ValueError, match="unknown architecture"):
    study.architecture_bindings("mamba", 0.5, 4)


def test_stages_continue_the_one_pretrained_byt5_with_per_seed_data_order(tmp_path):
  runs = study.plan_runs([0.5], [7], cp_rate=4)
  plan = study.plan_stages(str(tmp_path), runs, byt5_checkpoint=None, pretrain_steps=5,
                           continue_steps=3, cp_rate=4, speed_repeats=1)
  assert plan[0].name == "byt5_pretrained" and plan[0].kind == "train"
  assert [s.kind for s in plan[1:]] == ["train", "evaluate"] * len(runs)
  init = f"INIT_CHECKPOINT = '{tmp_path / 'byt5_pretrained'}'"
  for stage in plan[1:]:
    if stage.kind == "train":
      assert init in stage.bindings and "train/DatasetConfig.seed = 7" in stage.bindings
      assert "TRAIN_STEPS = 3" in stage.bindings
  # every model, ByT5 included, is timed against the seed's continued ByT5
  reference = f"evaluate.speed_reference_dir = '{tmp_path / 's7.byt5'}'"
  for stage in plan[1:]:
    if stage.kind == "evaluate":
      assert reference in stage.bindings and "evaluate.speed_batches = 1" in stage.bindings
  given = study.plan_stages(str(tmp_path), runs, byt5_checkpoint="/ckpt/byt5", pretrain_steps=5,
                            continue_steps=3, cp_rate=4, speed_repeats=1)
  assert given[0].name == "s7.byt5" and "INIT_CHECKPOINT = '/ckpt/byt5'" in given[0].bindings


def _row(architecture, target, seed, ce, reduction, speed=None):
  return {"architecture": architecture, "target": target, "seed": seed, "reduction": reduction,
          "soft_cross_entropy": ce - 0.01, "hard_cross_entropy": ce, "encoder_speedup": speed,
          "encoder_ideal_speedup": speed, "exact_ideal_speedup": speed,
          "languages": {"en": {"hard_cross_entropy": ce + 0.1}, "th": {
              "hard_cross_entropy": ce - 0.1}}}


ROWS = [_row("byt5", None, 0, 1.00, 0.0, 1.0), _row("byt5", None, 1, 1.10, 0.0, 1.0),
        _row("mrt5", 0.5, 0, 1.02, 0.49, 1.8), _row("mrt5", 0.5, 1, 1.16, 0.51, 1.6),
        _row("random", 0.5, 0, 1.20, 0.50, 1.7), _row("random", 0.5, 1, 1.18, 0.50, 1.9)]


def test_summary_is_the_mean_and_sample_sd_over_seeds_paired_with_byt5():
  summary = {(s["architecture"], s["target"]): s for s in study.summarise(ROWS)}
  mrt5 = summary[("mrt5", 0.5)]
  assert mrt5["hard_cross_entropy"] == pytest.approx(1.09)
  assert mrt5["hard_cross_entropy_sd"] == pytest.approx(math.sqrt(2 * 0.07 ** 2))
  assert mrt5["reduction"] == pytest.approx(0.50) and mrt5["encoder_speedup"] == pytest.approx(1.7)
  # paired: (1.02 - 1.00, 1.16 - 1.10) = (0.02, 0.06)
  assert mrt5["vs_byt5"] == pytest.approx(0.04)
  assert mrt5["vs_byt5_sd"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
  assert mrt5["languages"]["th"]["hard_cross_entropy"] == pytest.approx(0.99)
  assert summary[("byt5", None)]["vs_byt5"] == pytest.approx(0.0)


def test_paired_differences_count_the_seeds_where_mrt5_is_lower():
  differences = {d["against"]: d for d in study.paired_differences(ROWS)}
  random = differences["random"]  # (1.02 - 1.20, 1.16 - 1.18) = (-0.18, -0.02)
  assert random["mrt5_minus_other"] == pytest.approx(-0.10)
  assert random["sd"] == pytest.approx(math.sqrt(2 * 0.08 ** 2))
  assert (random["seeds"], random["mrt5_lower_in"]) == (2, 2)
  assert differences["byt5"]["mrt5_minus_other"] == pytest.approx(0.04)
  assert differences["byt5"]["mrt5_lower_in"] == 0
  assert set(differences) == {"byt5", "random"}  # only architectures that ran
  line = study.difference_lines([random])[0]
  assert line.startswith("target 0.50: MrT5 - random deletion: hard CE -0.1000")


def test_tables_and_plot(tmp_path):
  summary = study.summarise(ROWS)
  table = study.markdown_table(summary).splitlines()
  assert table[2].startswith("| ByT5 | - | 0.000 | ")
  assert "| MrT5 | 0.50 | 0.500 ± 0.014 | 1.0800 ± 0.0990 | 1.0900 ± 0.0990 | +0.0400 ± 0.0283 | " \
         "1.70 ± 0.14x | 1.70 ± 0.14x | 2 |" in table
  languages = study.language_table(summary).splitlines()
  assert languages[0] == "| architecture | target | en | th |"
  path = study.write_plot(summary, str(tmp_path / "plot.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
  jobs = stages.Jobs(train=lambda: pytest.fail("trained"), evaluate=lambda: pytest.fail("ran"))
  for kwargs, message in (({"targets": [1.2]}, "targets"), ({"seeds": [0, 0]}, "seeds"),
                          ({"continue_steps": 0}, "continue_steps"), ({"cp_rate": 1}, "cp_rate")):
    with pytest.raises(ValueError, match=message):
      study.run_comparison(jobs, work_dir=str(tmp_path), **kwargs)
  assert not os.listdir(tmp_path)
