"""The error handling every gin-driven command shares (cli/common.run_gin_job)."""
import seqio

from mrt5_jax.cli import common


def test_malformed_character_task_line_is_one_line_not_a_tensorflow_traceback(tmp_path, capsys):
  """A bad JSON line raises inside tf.data; the user sees the reader's own one-line message."""
  from mrt5_jax import tasks  # noqa: F401  (registers the tasks)
  path = tmp_path / "validation.jsonl"
  path.write_text('{"input": "ab", "output": "ba"}\n{"input": broken\n')

  def job():
    ds = seqio.get_dataset("mrt5.character.spelling_correction_contextual",
                           {"inputs": 16, "targets": 8}, dataset_split="validation",
                           shuffle=False, num_epochs=1,
                           feature_converter=seqio.EncDecFeatureConverter(pack=False))
    return list(ds.as_numpy_iterator())

  argv = [f"--gin.mrt5_jax.tasks.spelling_correction_files.validation={path}"]
  code, result = common.run_gin_job("mrt5-eval", "doc", argv, job)
  err = capsys.readouterr().err
  assert code == 1 and result is None
  assert err == f"mrt5-eval: {path}:2: not a JSON line (Expecting value: line 1 column 11 (char 10))\n"


def test_other_errors_still_raise(capsys):
  import pytest

  def job():
    raise KeyError("not bad input")

  with pytest.raises(KeyError):
    common.run_gin_job("mrt5-eval", "doc", ["--gin.MODEL_DIR=/tmp/x"], job)
