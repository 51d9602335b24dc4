"""Deletion control as shipped: the recipe holds its target, carries over to hard deletion
(issue 9's bounds) and its gate learns what the task drops (issue 21's), measured through
the same harness as the tables of docs/deletion_control.md."""
import pytest

from mrt5_jax.studies import deletion_control


# The paper's diagnostic as issue 21 states it: 32-byte inputs (vowels are about 18% of
# the bytes), target 0.15, the task learned before the regularizer starts; 2,000 steps,
# since the attention-score regularizer of runs/local.gin slows the learning of the task.
VOWEL_STEPS = 2000
VOWEL_DIAGNOSTIC = ["SEQUENCE_LENGTH = 32", "LEARNING_RATE = 2e-3",
                    "ControllerConfig.regularizer_delay = 700", "train.log_every = 50"]


@pytest.mark.slow
def test_shipped_recipe_holds_the_target_and_its_gate_deletes_the_vowels(tmp_path):
  """Vowel removal from scratch, target 0.15, the shipped recipe (runs/local.gin with the
  diagnostic's bindings, 2,000 steps): eval deletion within +-0.05, hard CE <= 1.25 x
  soft CE + 0.02, no collapse (issue 9's bounds), and the gate deletes what the task
  drops: >= 80% of the deleted positions are vowels and >= half of the vowels go (issue
  21's bounds). docs/deletion_control.md has seeds 0-9: with the attention-score
  regularizer (beta 0.5) and the proportional gain k_p 1.0 that runs/local.gin binds for
  training from scratch, the recipe meets these bounds on all ten in 2,000 steps, and
  contextual vowel removal's claim at 0.1 and 0.2 on all ten; with k_p 0.2 it missed
  vowel seed 9 (a gate stuck until step 1,750, then a burst)."""
  (row,) = deletion_control.run_study(
      ["vowel_removal"], [deletion_control.RECIPES["shipped"]], [0.15], work_dir=str(tmp_path),
      steps=VOWEL_STEPS, extra_bindings=VOWEL_DIAGNOSTIC, droppable_batches=2, log=print)
  assert abs(row.eval_deletion_rate - 0.15) <= 0.05, row
  assert row.hard_cross_entropy <= 1.25 * row.soft_cross_entropy + 0.02, row
  assert row.hard_within_bound
  assert row.collapse_share <= 0.1, row
  assert row.hard_accuracy > 0.9, row
  assert len(row.rate_trace) == VOWEL_STEPS // 50
  assert row.droppable_share >= 0.8, row
  assert row.droppable_deleted >= 0.5, row


def test_table_and_unknown_task():
  row = deletion_control.StudyRow(
      task="vowel_removal", recipe="shipped", target=0.5, steps=10, eval_deletion_rate=0.49,
      soft_cross_entropy=0.1, hard_cross_entropy=0.2, hard_accuracy=0.9, wall_seconds=3.0,
      collapse_share=0.0, final_alpha=0.01, rate_trace=[0.5], droppable_share=0.884,
      droppable_deleted=0.731, deleted_vowels_dropped=0.884, deleted_recovered=0.938)
  assert not row.hard_within_bound  # 0.2 > 1.25 * 0.1 + 0.02
  table = deletion_control.markdown_table([row])
  assert ("| vowel_removal | shipped | 0.50 | 0.490 | 0.1000 | 0.2000 | 0.900 | no | 88% | 73% | 88% | "
          "94% |"
          in table)
  with pytest.raises(ValueError, match="unknown task"):
    deletion_control.run_study(["parsing"], [], [0.5], work_dir="/tmp/unused")
