"""Dry runs of the launchers in launch/: the exact commands, no gcloud needed."""
import os
import shlex
import subprocess
import sys

import pytest

from tests.fixtures import REPO_ROOT

REPO = REPO_ROOT
sys.path.insert(0, REPO)

from launch import local, t5x_command, t5x_env, tpu_vm  # noqa: E402
from mrt5_jax.cli import gin_flags  # noqa: E402

WHERE = ["--name=mrt5", "--zone=us-central2-b", "--project=my-proj", "--gcloud=/no/such/gcloud"]


def _dry_run(module, argv, capsys):
  assert module.main(["--dry-run", *argv]) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _remote(argv):
  """The shell command a gcloud ssh argv runs on the workers, and the worker flag."""
  command = [a for a in argv if a.startswith("--command=")]
  worker = [a for a in argv if a.startswith("--worker=")]
  assert len(command) == 1 and len(worker) == 1, argv
  return command[0][len("--command="):], worker[0][len("--worker="):]


def test_create_passes_zone_accelerator_and_runtime(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "create", "--accelerator-type=v4-64",
                              "--runtime-version=tpu-ubuntu2204-base", "--spot"], capsys)
  assert argv == ["/no/such/gcloud", "compute", "tpus", "tpu-vm", "create", "mrt5",
                  "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-64",
                  "--version=tpu-ubuntu2204-base", "--spot"]


def test_setup_copies_the_project_and_builds_the_pinned_environment(capsys, tmp_path):
  commands = _dry_run(tpu_vm, [*WHERE, "setup", f"--archive-dir={tmp_path}"], capsys)
  archive = os.path.join(str(tmp_path), "mrt5-jax.tar.gz")
  assert commands[0] == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"]
  assert [c[4] for c in commands[1:]] == ["scp", "ssh", "ssh"]
  assert commands[1][5:7] == [archive, "mrt5:mrt5-jax.tar.gz"] and "--worker=all" in commands[1]
  unpack, worker = _remote(commands[2])
  assert worker == "all" and 'tar -xzf "$HOME/mrt5-jax.tar.gz" -C "$HOME/mrt5-jax"' in unpack
  build, worker = _remote(commands[3])
  assert worker == "all"
  # Python 3.11 (what the pinned set needs) from deadsnakes only when the image lacks it,
  # then the checkout's own t5x_env.py with jax[tpu]
  assert build.startswith("set -e; command -v python3.11 >/dev/null 2>&1 || {")
  assert "ppa:deadsnakes/ppa" in build and "install -y -q python3.11 python3.11-venv" in build
  assert build.endswith('python3.11 "$HOME/mrt5-jax/launch/t5x_env.py" --venv "$HOME/mrt5-venv" '
                        '--python "$(command -v python3.11)" --tpu')
  assert not os.path.exists(archive), "a dry run must not build the archive"


def test_setup_from_a_git_url_clones_on_the_workers(capsys):
  commands = _dry_run(tpu_vm, [*WHERE, "setup", "--repo-url=https://example.com/mrt5-jax.git",
                               "--ref=v0.1.0", "--extras=test"], capsys)
  assert len(commands) == 2
  remote, _ = _remote(commands[0])
  assert 'git clone https://example.com/mrt5-jax.git "$HOME/mrt5-jax"' in remote
  assert 'checkout v0.1.0' in remote
  assert _remote(commands[1])[0].endswith("--tpu --extras=test")


def test_environment_steps_follow_the_constraints_file():
  tested = t5x_env.read_constraints()
  assert tested.python == (3, 11)
  assert {n: tested.sources[n].commit for n in t5x_env.SOURCE_NAMES} == {
      "t5x": "cc342d419ec3e3e9c4bf1df33c82330cafdc1e16",
      "airio": "69897df7d9a427b947a9f7bb4164c7782b43e601",
      "jestimator": "326824a477feef6d92e6f44175000907a72899ca"}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow",
               "grain", "clu", "tensorboard", "fiddle", "gin-config"):
    assert name in tested.pins, name
  steps = t5x_env.build_steps("/v", python="/usr/bin/python3.11", tpu=True, extras=["test"])
  script = os.path.join(REPO, "launch", "t5x_env.py")
  assert steps[0] == ["/usr/bin/python3.11", script, "--check-python", "--constraints",
                      tested.path]
  assert steps[1] == ["/usr/bin/python3.11", "-m", "venv", "/v"]
  pins = steps[3]
  assert pins[:8] == ["/v/bin/python", "-m", "pip", "install", "-c", tested.path, "-f",
                      t5x_env.LIBTPU_RELEASES]
  assert f"jax[tpu]=={tested.pins['jax']}" in pins and f"jaxlib=={tested.pins['jaxlib']}" in pins
  assert len(pins) == 8 + len(tested.pins)
  assert steps[4] == ["/v/bin/python", "-m", "pip", "install", "--no-deps",
                      "git+https://github.com/google/airio@" + tested.sources["airio"].commit,
                      "git+https://github.com/google-research/jestimator@"
                      + tested.sources["jestimator"].commit,
                      "git+https://github.com/google-research/t5x@"
                      + tested.sources["t5x"].commit]
  assert steps[5] == ["/v/bin/python", "-m", "pip", "install", "-c", tested.path, "-e",
                      REPO + "[test]"]
  assert steps[6] == ["/v/bin/python", script, "--check", "--constraints", tested.path]
  cpu = t5x_env.build_steps("/v", python="python3", project=None)
  assert f"jax=={tested.pins['jax']}" in cpu[3] and "-f" not in cpu[3]
  assert not any("-e" in step for step in cpu)


def test_local_setup_installs_local_sources_from_copies(capsys, tmp_path):
  src = tmp_path / "t5x_src"
  src.mkdir()
  venv = tmp_path / "venv"
  assert local.main(["setup", f"--venv={venv}", f"--source=t5x={src}", "--python=python3",
                     "--dry-run"]) == 0
  steps = [shlex.split(line[2:]) for line in capsys.readouterr().out.splitlines()]
  copy = str(venv / "src" / "t5x")
  assert ["cp", "-a", str(src), copy] in steps
  (install,) = [s for s in steps if "--no-deps" in s]
  assert install[-1] == copy and install[-3].startswith("git+https://github.com/google/airio@")
  assert not venv.exists()


@pytest.mark.parametrize("text, message", [
    ("jax>=0.4\n", "not a pin"),
    ("# python: 3.11\njax==0.10.2\n", "missing: ['airio', 'jestimator', 't5x']"),
    ("# source: t5x https://x abc\n", "cannot read"),
])
def test_malformed_constraints_are_refused(tmp_path, text, message):
  path = tmp_path / "c.txt"
  path.write_text(text)
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    t5x_env.read_constraints(str(path))


def test_environment_checks_report_what_differs(capsys, tmp_path):
  import dataclasses
  from importlib import metadata
  import pytest as installed
  tested = t5x_env.TestedSet("c.txt", (99, 0), {"pytest": installed.__version__,
                                                "no-such-package-xyz": "1.0",
                                                "jax": "0.0.1"}, {})
  assert t5x_env.installed_mismatches(tested) == [
      "no-such-package-xyz: not installed (tested 1.0)",
      f"jax: {metadata.version('jax')} installed, tested 0.0.1"]
  assert t5x_env.check_python(tested) == 1
  assert "needs Python >= 99.0" in capsys.readouterr().err
  assert t5x_env.check_python(dataclasses.replace(tested, python=(3, 11))) == 0
  constraints = tmp_path / "c.txt"
  constraints.write_text(open(t5x_env.CONSTRAINTS).read() + "no-such-package-xyz==1.0\n")
  local.check_environment(sys.executable, str(constraints))  # a warning, not a failure
  err = capsys.readouterr().err
  assert "not the tested t5x set" in err
  assert "import t5x failed" in err or "no-such-package-xyz: not installed" in err


def test_train_starts_t5x_on_all_workers_with_gcs_model_dir(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "train", "--gin-file=t5x/mrt5_small_span_corruption.gin",
                              "--model-dir=gs://bucket/mrt5_small",
                              "--tfds-data-dir=gs://bucket/tfds",
                              "--gin=TRAIN_STEPS=5000", "--gin=BATCH_SIZE=1024"], capsys)
  remote, worker = _remote(argv)
  assert worker == "all"
  words = shlex.split(remote)
  start = words.index("(nohup")
  t5x_args = words[start + 1:words.index(">")]
  assert t5x_args == [
      "$HOME/mrt5-venv/bin/python", "-m", "t5x.train", "--gin_search_paths=configs",
      "--gin_file=t5x/mrt5_small_span_corruption.gin",
      "--gin.MODEL_DIR='gs://bucket/mrt5_small'", "--gin.TRAIN_STEPS=5000",
      "--gin.BATCH_SIZE=1024", "--tfds_data_dir=gs://bucket/tfds", "--alsologtostderr"]
  assert words[:3] == ["cd", "$HOME/mrt5-jax", "&&"]
  assert "$HOME/mrt5-train.log" in words and "$HOME/mrt5-train.pid)" in words


def test_eval_binds_checkpoint_and_output_dir(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "eval", "--gin-file=t5x/mrt5_small_eval.gin",
                              "--checkpoint-path=gs://b/m/checkpoint_5000",
                              "--output-dir=gs://b/eval"], capsys)
  words = shlex.split(_remote(argv)[0])
  assert "t5x.eval" in words
  assert "--gin.CHECKPOINT_PATH='gs://b/m/checkpoint_5000'" in words
  assert "--gin.EVAL_OUTPUT_DIR='gs://b/eval'" in words
  assert "$HOME/mrt5-eval.log" in words


def test_tail_stop_and_delete(capsys):
  (tail,) = _dry_run(tpu_vm, [*WHERE, "tail", "--job=eval", "--lines=20"], capsys)
  assert _remote(tail) == ('tail -n 20 -f "$HOME/mrt5-eval.log"', "0")
  (stop,) = _dry_run(tpu_vm, [*WHERE, "stop"], capsys)
  remote, worker = _remote(stop)
  assert worker == "all" and 'kill "$(cat "$HOME/mrt5-train.pid")"' in remote
  (delete,) = _dry_run(tpu_vm, [*WHERE, "delete"], capsys)
  assert delete == ["/no/such/gcloud", "compute", "tpus", "tpu-vm", "delete", "mrt5",
                    "--zone=us-central2-b", "--project=my-proj", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--gin-file=a.gin", "--model-dir=/local/dir"], "must be a gs:// path"),
    (["train", "--gin-file=a.gin", "--model-dir=gs://b/m", "--gin=NOVALUE"], "KEY=VALUE"),
    (["eval", "--gin-file=a.gin", "--checkpoint-path=gs://b/c", "--output-dir=gs://b/it's"],
     "quotes"),
    (["setup", "--repo-url=https://x/y.git", "--source=/src"], "exactly one of"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    tpu_vm.main(["--dry-run", *WHERE, *argv])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert message in captured.err and captured.out == ""


def test_local_launcher_command_line(capsys, tmp_path):
  model_dir = tmp_path / "model"
  (argv,) = _dry_run(local, ["--python=/venv/bin/python", "train",
                             "--gin-file=t5x/mrt5_tiny_cpu.gin", f"--model-dir={model_dir}",
                             "--gin=TRAIN_STEPS=60"], capsys)
  assert argv == ["/venv/bin/python", "-m", "t5x.train",
                  f"--gin_search_paths={os.path.join(REPO, 'configs')}",
                  "--gin_file=t5x/mrt5_tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
                  "--gin.TRAIN_STEPS=60", "--alsologtostderr"]
  assert not model_dir.exists()
  (argv,) = _dry_run(local, ["infer", "--gin-file=t5x/mrt5_tiny_infer.gin",
                             "--checkpoint-path=gs://b/checkpoint_60", "--output-dir=out"], capsys)
  assert argv[2] == "t5x.infer"
  assert "--gin.CHECKPOINT_PATH='gs://b/checkpoint_60'" in argv
  assert f"--gin.INFER_OUTPUT_DIR='{os.path.abspath('out')}'" in argv


def test_named_gin_files_ship_in_configs():
  for name in ("mrt5_small_span_corruption.gin", "mrt5_tiny_cpu.gin", "mrt5_tiny_eval.gin",
               "mrt5_tiny_infer.gin", "mrt5_small_eval.gin"):
    assert os.path.isfile(os.path.join(REPO, "configs", "t5x", name)), name


def test_run_all_stops_at_the_first_failure(tmp_path, capsys):
  marker = tmp_path / "second_ran"
  status = t5x_command.run_all(
      [[sys.executable, "-c", "raise SystemExit(3)"],
       [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]], dry_run=False)
  assert status == 3 and not marker.exists()
  assert "exit status 3" in capsys.readouterr().err


def test_script_runs_as_a_file_without_gcloud():
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "tpu_vm.py"), "--dry-run", *WHERE, "delete"],
      capture_output=True, text=True, check=True).stdout
  assert out.strip() == ("/no/such/gcloud compute tpus tpu-vm delete mrt5 --zone=us-central2-b "
                         "--project=my-proj --quiet")


def test_flags_work_before_and_after_the_step(capsys):
  create = ["create", "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base"]
  assert tpu_vm.main(["--dry-run", *WHERE, *create]) == 0
  before = capsys.readouterr().out
  assert tpu_vm.main([*create, "--dry-run", *WHERE]) == 0
  assert capsys.readouterr().out == before
  assert tpu_vm.main([WHERE[0], "--dry-run", *create, *WHERE[1:]]) == 0
  assert capsys.readouterr().out == before
  assert before.startswith("/no/such/gcloud compute tpus tpu-vm create mrt5 --zone=us-central2-b")
  with pytest.raises(SystemExit):
    tpu_vm.main([*create, "--dry-run", "--zone=z"])
  assert "required: --name" in capsys.readouterr().err
  train = ["train", "--gin-file=t5x/mrt5_tiny_cpu.gin", "--model-dir=/tmp/m"]
  assert local.main(["--dry-run", "--python=/p/python", *train]) == 0
  before = capsys.readouterr().out
  assert local.main([*train, "--python=/p/python", "--dry-run"]) == 0
  assert capsys.readouterr().out == before and before.startswith("/p/python -m t5x.train")
  assert local.main([*train, "--venv=/v", "--dry-run"]) == 0
  assert capsys.readouterr().out.startswith("/v/bin/python -m t5x.train")


# (flag value, what t5x gets): bare strings quoted; gin syntax untouched.
GIN_VALUES = [
    ("gs://b/byt5/checkpoint_1000000", "'gs://b/byt5/checkpoint_1000000'"),
    ("'gs://b/c'", "'gs://b/c'"),
    ('"gs://b/c"', '"gs://b/c"'),
    ("pi", "'pi'"),
    ("5000", "5000"),
    ("1e-4", "1e-4"),
    ("None", "None"),
    ("True", "True"),
    ("@optax.constant_schedule()", "@optax.constant_schedule()"),
    ("%TRAIN_STEPS", "%TRAIN_STEPS"),
    ("[1, 2]", "[1, 2]"),
    ("{'inputs': 64, 'targets': @x()}", "{'inputs': 64, 'targets': @x()}"),
]


@pytest.mark.parametrize("value, expected", GIN_VALUES)
def test_launchers_and_mrt5_train_read_gin_values_alike(value, expected, capsys):
  assert gin_flags.binding_from_flag("NAME", value) == f"NAME = {expected}"
  for flag in (f"--gin=NAME={value}", f"--gin.NAME={value}"):
    (argv,) = _dry_run(local, ["--python=p", "train", "--gin-file=a.gin", "--model-dir=gs://b/m",
                               flag], capsys)
    assert argv[-2] == f"--gin.NAME={expected}", flag
    (ssh,) = _dry_run(tpu_vm, [*WHERE, "train", "--gin-file=a.gin", "--model-dir=gs://b/m", flag],
                      capsys)
    words = shlex.split(_remote(ssh)[0])
    assert f"--gin.NAME={expected}" in words, flag


def test_source_checkout_commit_is_checked_against_the_pin(tmp_path, capsys):
  """A git checkout at another commit is refused; one at the pin passes; a plain directory
  cannot be checked, and the user is told so."""
  import subprocess
  src = tmp_path / "t5x"
  src.mkdir()
  (src / "setup.py").write_text("")
  git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "setup.py"], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
  head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                        text=True).stdout.strip()
  venv = str(tmp_path / "venv")
  tested = t5x_env.read_constraints()
  with pytest.raises(SystemExit):
    t5x_env.main([f"--venv={venv}", f"--source=t5x={src}", "--dry-run"])
  err = capsys.readouterr().err
  assert f"is at commit {head}, but the constraints file pins {tested.sources['t5x'].commit}" in err
  assert f"checkout {tested.sources['t5x'].commit}" in err

  pinned = tmp_path / "constraints.txt"
  pinned.write_text(open(tested.path).read().replace(tested.sources["t5x"].commit, head))
  assert t5x_env.main([f"--venv={venv}", f"--source=t5x={src}", "--dry-run",
                       f"--constraints={pinned}"]) == 0
  assert "t5x_env:" not in capsys.readouterr().err
  (src / "setup.py").write_text("# changed")
  assert t5x_env.main([f"--venv={venv}", f"--source=t5x={src}", "--dry-run",
                       f"--constraints={pinned}"]) == 0
  assert "uncommitted changes" in capsys.readouterr().err

  plain = tmp_path / "plain"
  plain.mkdir()
  assert t5x_env.main([f"--venv={venv}", f"--source=t5x={plain}", "--dry-run"]) == 0
  assert "has no .git, so its commit cannot be checked" in capsys.readouterr().err
