"""Checkpoint integrity: records, damage detection, fall back past damaged steps, save failures."""
import errno
import json
import os
import shutil
import zlib

import jax
import numpy as np
import pytest

from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from tests.fixtures import DAMAGE_KINDS, LogRecords as Records, damage_checkpoint


def train_state(step: int) -> dict:
  """A train-state-shaped pytree whose values depend on ``step``."""
  rng = np.random.RandomState(step)
  params = {"encoder": {"kernel": rng.standard_normal((256, 384)).astype(np.float32)},
            "decoder": {"kernel": rng.standard_normal((384, 128)).astype(np.float32)}}
  return {"params": params,
          "opt_state": jax.tree_util.tree_map(lambda x: (x * 0.5).astype(np.float32), params),
          "flax_mutables": {"controller": {"alpha": np.asarray(0.1 * step, np.float32)}},
          "step": np.asarray(step, np.int32)}


def write_run(model_dir, steps=(1, 2), async_save=False) -> None:
  with writer.manager(str(model_dir), async_save=async_save) as mngr:
    for step in steps:
      writer.save(mngr, step, jax.device_put(train_state(step)), {"batches_consumed": step})
    mngr.wait_until_finished()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A model dir with committed steps 1 and 2 (copy it before damaging)."""
  model_dir = tmp_path_factory.mktemp("pristine")
  write_run(model_dir)
  return model_dir


@pytest.fixture
def run_dir(pristine, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(pristine, copy)
  return copy


def restore_from(model_dir, on_damaged):
  target = train_state(0)
  with writer.manager(str(model_dir)) as mngr:
    return writer.restore_newest(mngr, target, on_damaged=on_damaged)


def assert_state_equal(restored, expected):
  flat_r, flat_e = jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(expected)
  assert len(flat_r) == len(flat_e)
  for a, b in zip(flat_r, flat_e):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("async_save", [False, True])
def test_every_committed_step_carries_a_record_of_its_files(tmp_path, async_save):
  write_run(tmp_path, steps=(1, 2, 3), async_save=async_save)
  for step in (1, 2, 3):
    step_dir = os.path.join(config_files.checkpoint_dir(str(tmp_path)), str(step))
    with open(os.path.join(step_dir, integrity.RECORD)) as f:
      record = json.load(f)
    on_disk = {os.path.relpath(os.path.join(root, name), step_dir)
               for root, _, names in os.walk(step_dir) for name in names}
    assert set(record["files"]) == on_disk - {integrity.RECORD, *integrity.UNRECORDED}
    assert any(name.startswith("state/") for name in record["files"])
    assert "data_iterator/metadata" in record["files"]
    for relative, entry in record["files"].items():
      with open(os.path.join(step_dir, relative), "rb") as f:
        contents = f.read()
      assert entry["size"] == len(contents)
      assert entry["crc32"] == f"{zlib.crc32(contents):08x}"
    assert integrity.verify(step_dir, step) is True
  assert not [name for name in os.listdir(config_files.checkpoint_dir(str(tmp_path)))
              if not name.isdigit()]


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_newest_step_is_set_aside_and_the_previous_one_restored(run_dir, kind):
  step_dir = os.path.join(config_files.checkpoint_dir(str(run_dir)), "2")
  damaged_file = damage_checkpoint(step_dir, kind)
  with pytest.raises(integrity.DamagedCheckpointError) as caught:
    integrity.verify(step_dir, 2)
  assert caught.value.step == 2 and caught.value.file == os.path.join(step_dir, damaged_file)

  with Records() as log:
    step, state, data_state = restore_from(run_dir, "fall_back")
  assert step == 1 and data_state == {"batches_consumed": 1}
  assert_state_equal(state, train_state(1))
  [line] = log.warnings()
  assert "step 2 is damaged" in line and damaged_file in line and "resuming from step 1" in line
  aside = os.path.join(str(run_dir), writer.DAMAGED_DIR, "2")
  assert os.path.isdir(aside) and not os.path.exists(step_dir)
  assert os.path.exists(os.path.join(aside, damaged_file)) == (kind != "delete_file")
  assert writer.all_steps(str(run_dir)) == [1]


@pytest.mark.parametrize("kind", ["truncate_data", "truncate_sharding"])
def test_error_mode_names_step_file_and_newest_intact_and_moves_nothing(run_dir, kind):
  step_dir = os.path.join(config_files.checkpoint_dir(str(run_dir)), "2")
  damaged_file = damage_checkpoint(step_dir, kind)
  with pytest.raises(integrity.DamagedCheckpointError) as caught:
    restore_from(run_dir, "error")
  message = str(caught.value)
  assert "checkpoint step 2 is damaged" in message and damaged_file in message
  assert caught.value.newest_intact == 1 and "The newest intact step is 1" in message
  assert "on_damaged_checkpoint=fall_back" in message
  assert writer.all_steps(str(run_dir)) == [1, 2]
  assert not os.path.exists(os.path.join(str(run_dir), writer.DAMAGED_DIR))


def test_every_step_damaged_is_an_error_and_nothing_moves(run_dir):
  for step in (1, 2):
    damage_checkpoint(os.path.join(config_files.checkpoint_dir(str(run_dir)), str(step)),
                      "truncate_data")
  with pytest.raises(integrity.DamagedCheckpointError, match="No intact checkpoint is left"):
    restore_from(run_dir, "fall_back")
  assert writer.all_steps(str(run_dir)) == [1, 2]


@pytest.mark.parametrize("with_record", [True, False])
def test_intact_step_that_does_not_fit_the_target_is_not_called_damaged(run_dir, with_record):
  if not with_record:
    for step in (1, 2):
      os.remove(os.path.join(config_files.checkpoint_dir(str(run_dir)), str(step),
                             integrity.RECORD))
  target = train_state(0)
  target["params"]["encoder"]["kernel"] = np.zeros((8, 8), np.float32)
  with writer.manager(str(run_dir)) as mngr:
    with pytest.raises(ValueError, match="not compatible with the stored shape") as caught:
      writer.restore_newest(mngr, target)
  assert not isinstance(caught.value, integrity.DamagedCheckpointError)
  assert writer.all_steps(str(run_dir)) == [1, 2]


def test_step_without_record_is_accepted_with_a_warning_or_set_aside_when_unreadable(run_dir):
  ckpt = config_files.checkpoint_dir(str(run_dir))
  for step in (1, 2):
    os.remove(os.path.join(ckpt, str(step), integrity.RECORD))
  with Records() as log:
    step, state, _ = restore_from(run_dir, "fall_back")
  assert step == 2
  assert_state_equal(state, train_state(2))
  assert any("step 2 has no integrity record" in line for line in log.warnings())

  damage_checkpoint(os.path.join(ckpt, "2"), "truncate_data")  # found only by reading it
  with Records() as log:
    step, state, _ = restore_from(run_dir, "fall_back")
  assert step == 1
  assert_state_equal(state, train_state(1))
  assert any("step 2 is damaged" in line and "cannot be read" in line and "resuming from step 1"
             in line for line in log.warnings())


@pytest.mark.parametrize("kind", ["truncate_data", "flip_bytes", "truncate_metadata"])
def test_readers_name_the_damaged_step_and_file_and_the_newest_intact_step(run_dir, kind):
  step_dir = os.path.join(config_files.checkpoint_dir(str(run_dir)), "2")
  damaged_file = damage_checkpoint(step_dir, kind)
  with pytest.raises(integrity.DamagedCheckpointError) as caught:
    readers.restore_params(str(run_dir))
  assert caught.value.step == 2 and damaged_file in str(caught.value)
  assert caught.value.newest_intact == 1
  advised = caught.value.suggesting("--step {step}")
  assert str(advised).endswith("The newest intact step is 1: rerun with --step 1")
  params = readers.restore_params(str(run_dir), step=1)
  assert_state_equal(params, train_state(1)["params"])
  assert writer.all_steps(str(run_dir)) == [1, 2]  # readers never move anything


# ----------------------------------------------------------------------------- save failures


FAILURES = [(errno.ENOSPC, OSError), (errno.EACCES, PermissionError),
            (errno.ENOENT, FileNotFoundError)]


@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize("code,kind", FAILURES)
def test_failed_save_raises_one_error_naming_step_and_cause(run_dir, monkeypatch, code, kind,
                                                            async_save):
  def failing(step_dir, step):
    raise kind(code, os.strerror(code), os.path.join(step_dir, "state"))
  monkeypatch.setattr(integrity, "write_record", failing)
  mngr = writer.manager(str(run_dir), async_save=async_save)
  with pytest.raises(integrity.CheckpointSaveError) as caught:
    writer.save(mngr, 3, jax.device_put(train_state(3)))
    mngr.wait_until_finished()
  message = str(caught.value)
  assert caught.value.step == 3
  assert "could not save checkpoint step 3" in message
  assert f"{os.strerror(code)} [{errno.errorcode[code]}]" in message
  assert "the newest is step 2" in message
  with pytest.raises(integrity.CheckpointSaveError):  # the run cannot go on saving
    writer.save(mngr, 4, train_state(4))
  mngr.close()  # does not raise a second time
  monkeypatch.undo()
  assert writer.all_steps(str(run_dir)) == [1, 2]
  step, state, _ = restore_from(run_dir, "error")
  assert step == 2
  assert_state_equal(state, train_state(2))


def test_vanished_checkpoint_directory_fails_the_save_cleanly(run_dir):
  mngr = writer.manager(str(run_dir), async_save=False)
  ckpt = config_files.checkpoint_dir(str(run_dir))
  shutil.move(ckpt, str(run_dir) + "_moved")
  with open(ckpt, "w") as f:  # the directory is gone and its path is taken
    f.write("not a directory")
  with pytest.raises(integrity.CheckpointSaveError) as caught:
    writer.save(mngr, 3, train_state(3))
  assert "could not save checkpoint step 3" in str(caught.value)
  mngr.close()


def test_describe_failure_reads_tensorstore_os_errors():
  error = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local '
                     'file "/m/checkpoints/3.orbax-checkpoint-tmp/state/": Failed writing: '
                     '"/m/checkpoints/3.orbax-checkpoint-tmp/state/d/ab12": Failed to write 10 '
                     "bytes to file 7: No space left on device [os_error_code='28']")
  wrapped = RuntimeError("finalize failed")
  wrapped.__cause__ = error
  assert writer.describe_failure(wrapped) == (
      "No space left on device [ENOSPC] while writing "
      "/m/checkpoints/3.orbax-checkpoint-tmp/state/d/ab12")
  assert writer.describe_failure(ValueError("odd\nsecond line")) == "odd"


def test_verify_command_reports_each_step(run_dir, capsys):
  ckpt = config_files.checkpoint_dir(str(run_dir))
  steps = [os.path.join(ckpt, "1"), os.path.join(ckpt, "2")]
  assert integrity.main(steps) == 0
  assert capsys.readouterr().out.count("files match the record") == 2
  damaged = damage_checkpoint(steps[1], "truncate_sharding")
  assert integrity.main(steps) == 1
  out = capsys.readouterr().out.splitlines()
  assert "ok" in out[0] and "DAMAGED" in out[1] and damaged in out[1]


def test_unknown_on_damaged_checkpoint_is_refused(tmp_path):
  from tests.fixtures import diagnostic_dataset, train_run
  with pytest.raises(ValueError, match="on_damaged_checkpoint must be one of"):
    train_run(tmp_path, 2, dataset=diagnostic_dataset(), on_damaged_checkpoint="ignore")
  assert not os.path.exists(tmp_path / "checkpoints")
