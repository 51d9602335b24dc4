"""The deletion study's position counts, checked on a hand-read example; its recipes."""
import gin
import numpy as np

from mrt5_jax.maths import controller as ctl
from mrt5_jax.studies import deletion_control
from mrt5_jax.tasks import diagnostic
from mrt5_jax.training import objective as obj


def _tokens(text: str) -> np.ndarray:
  return np.array([[ord(c) + 3 for c in text] + [1]])  # ByteVocabulary ids, then EOS


def test_position_shares_count_what_the_gate_deletes_against_what_the_task_drops():
  # '#' b E a E B E k o EOS: the contextual rule drops E (after b) and o (after k) only.
  tokens = _tokens("#bEaEBEko")
  droppable = diagnostic.droppable_positions("contextual_vowel_removal", tokens)
  vowels = diagnostic.vowel_positions(tokens)
  np.testing.assert_array_equal(np.nonzero(droppable[0])[0], [2, 8])
  np.testing.assert_array_equal(np.nonzero(vowels[0])[0], [2, 3, 4, 6, 8])
  deleted = np.zeros_like(droppable)
  deleted[0, [0, 2, 4, 7]] = True  # '#', a dropped E, a kept E, k
  shares = deletion_control.position_shares(deleted, droppable, vowels)
  assert shares == {"droppable_share": 1 / 4, "droppable_deleted": 1 / 2,
                    "deleted_vowels_dropped": 1 / 2}


def test_a_gate_that_deletes_no_vowel_has_no_vowel_share():
  tokens = _tokens("#bEaEBEko")
  droppable = diagnostic.droppable_positions("contextual_vowel_removal", tokens)
  deleted = np.zeros_like(droppable)
  deleted[0, [0, 9]] = True  # '#' and EOS
  shares = deletion_control.position_shares(deleted, droppable,
                                            diagnostic.vowel_positions(tokens))
  assert shares == {"droppable_share": 0.0, "droppable_deleted": 0.0,
                    "deleted_vowels_dropped": None}


def test_the_shipped_recipe_is_the_run_files_own():
  """The study parses a recipe's files after ``runs/local.gin``; ``shipped`` must keep
  the run file's settings for training from scratch (beta 0.5, k_p 1.0), which a re-parse
  of ``runs/deletion_control.gin`` would reset, while the ablations take that file's."""
  for name, k_p in (("shipped", 1.0), ("controller_only", 0.2)):
    try:
      deletion_control.parse_recipe(deletion_control.RECIPES[name])
      assert obj.ObjectiveConfig().hard_delete_train_prob == (0.5 if name == "shipped" else 0.0)
      assert ctl.ControllerConfig().k_p == k_p, name
      assert obj.ObjectiveConfig().score_loss_coeff == 0.5, name
    finally:
      gin.clear_config()
