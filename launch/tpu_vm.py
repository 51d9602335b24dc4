"""Run mrt5-jax with t5x on a Cloud TPU VM slice.

Every step is one or more ``gcloud compute tpus tpu-vm`` commands; ``--dry-run``
prints them exactly as they would run and runs nothing. Flags may come before
or after the step::

  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b create \\
      --accelerator-type=v4-64 --runtime-version=tpu-ubuntu2204-base
  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b setup
  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b train \\
      --gin-file=t5x/mrt5_small_span_corruption.gin --model-dir=gs://BUCKET/mrt5_small
  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b tail --job=train
  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b eval \\
      --gin-file=t5x/mrt5_small_eval.gin \\
      --checkpoint-path=gs://BUCKET/mrt5_small/checkpoint_5000 --output-dir=gs://BUCKET/eval
  python launch/tpu_vm.py --name=mrt5 --zone=us-central2-b delete

``setup`` copies this checkout to every worker and builds the tested t5x
environment there (launch/t5x-constraints.txt through launch/t5x_env.py, with
``jax[tpu]`` at the pinned jax version; Python 3.11 from the deadsnakes PPA
when the image lacks it) in ``$HOME/mrt5-venv``; jobs run its python. t5x runs
the same program on every worker of the slice (``--worker=all``); the model
directory must therefore be on GCS. gin bindings: ``--gin.NAME=VALUE`` or
``--gin=NAME=VALUE``, strings without quotes (as ``mrt5-train``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from launch import t5x_command  # pylint: disable=g-import-not-at-top
from launch import t5x_env  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_PROJECT = "$HOME/mrt5-jax"
REMOTE_VENV = "$HOME/mrt5-venv"
REMOTE_PYTHON = f"{REMOTE_VENV}/bin/python"
SOURCE_ARCHIVE = "mrt5-jax.tar.gz"


class Slice:
  """gcloud command lines for one TPU VM slice."""

  def __init__(self, name: str, zone: str, project: Optional[str] = None,
               gcloud: str = "gcloud"):
    if not name or not zone:
      raise ValueError("--name and --zone are required")
    self.name, self.zone, self.project, self.gcloud = name, zone, project, gcloud

  def _base(self, verb: str) -> list[str]:
    argv = [self.gcloud, "compute", "tpus", "tpu-vm", verb]
    return argv

  def _where(self) -> list[str]:
    argv = [f"--zone={self.zone}"]
    if self.project:
      argv.append(f"--project={self.project}")
    return argv

  def create(self, accelerator_type: str, runtime_version: str,
             spot: bool = False) -> list[str]:
    if not accelerator_type or not runtime_version:
      raise ValueError("create needs --accelerator-type and --runtime-version")
    argv = self._base("create") + [self.name] + self._where() + [
        f"--accelerator-type={accelerator_type}", f"--version={runtime_version}"]
    if spot:
      argv.append("--spot")
    return argv

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    return self._base("ssh") + [self.name] + self._where() + [
        f"--worker={worker}", f"--command={command}"]

  def scp(self, local_path: str, remote_path: str, worker: str = "all") -> list[str]:
    return self._base("scp") + [local_path, f"{self.name}:{remote_path}"] + self._where() + [
        f"--worker={worker}"]

  def delete(self) -> list[str]:
    return self._base("delete") + [self.name] + self._where() + ["--quiet"]


def copy_project_commands(slice_: Slice, source: Optional[str], repo_url: Optional[str],
                          ref: str, archive_dir: str) -> list[list[str]]:
  """Commands that put this project (at ``ref``) into $HOME/mrt5-jax on every worker.

  ``source`` (a local git checkout) is archived at ``ref`` and copied to the
  workers; ``repo_url`` is cloned on the workers instead.
  """
  if bool(source) == bool(repo_url):
    raise ValueError("give exactly one of --source (local checkout) and --repo-url")
  unpack = f'set -e; rm -rf "{REMOTE_PROJECT}"; '
  if repo_url:
    return [slice_.ssh(
        unpack + f'git clone {shlex.quote(repo_url)} "{REMOTE_PROJECT}"; '
        f'git -C "{REMOTE_PROJECT}" checkout {shlex.quote(ref)}')]
  archive = os.path.join(archive_dir, SOURCE_ARCHIVE)
  return [
      ["git", "-C", source, "archive", "--format=tar.gz", "-o", archive, ref],
      slice_.scp(archive, SOURCE_ARCHIVE),
      slice_.ssh(unpack + f'mkdir -p "{REMOTE_PROJECT}"; '
                 f'tar -xzf "$HOME/{SOURCE_ARCHIVE}" -C "{REMOTE_PROJECT}"'),
  ]


def install_python_command(python_name: str) -> str:
  """Remote shell: ``python_name`` (e.g. python3.11) from the deadsnakes PPA unless present."""
  apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get"
  return (f"command -v {python_name} >/dev/null 2>&1 || {{ {apt} update -q && "
          f"{apt} install -y -q software-properties-common && "
          f"sudo add-apt-repository -y ppa:deadsnakes/ppa && {apt} update -q && "
          f"{apt} install -y -q {python_name} {python_name}-venv; }}")


def build_environment_command(extras: str = "") -> str:
  """Remote shell: the tested t5x environment (jax[tpu]) in $HOME/mrt5-venv, with the project.

  Runs the copied checkout's launch/t5x_env.py, so the workers get exactly
  the set that launch/t5x-constraints.txt pins.
  """
  tested = t5x_env.read_constraints()
  python = tested.python_name
  extra = f" --extras={shlex.quote(extras)}" if extras else ""
  return (f"set -e; {install_python_command(python)}; "
          f'{python} "{REMOTE_PROJECT}/launch/t5x_env.py" --venv "{REMOTE_VENV}" '
          f'--python "$(command -v {python})" --tpu{extra}')


def start_job_command(job: str, t5x_args: Sequence[str]) -> str:
  """Remote shell command: run t5x with the venv's python in the background; log and pid in $HOME."""
  log, pid = f'"$HOME/mrt5-{job}.log"', f'"$HOME/mrt5-{job}.pid"'
  command = f'"{REMOTE_PYTHON}" {t5x_command.shell_join(t5x_args[1:])}'
  return (f'cd "{REMOTE_PROJECT}" && (nohup {command} > {log} 2>&1 '
          f'< /dev/null & echo $! > {pid})')


def tail_command(job: str, lines: int, follow: bool) -> str:
  flag = " -f" if follow else ""
  return f'tail -n {int(lines)}{flag} "$HOME/mrt5-{job}.log"'


def stop_command(job: str) -> str:
  pid = f'"$HOME/mrt5-{job}.pid"'
  return f'if [ -f {pid} ]; then kill "$(cat {pid})" || true; rm -f {pid}; fi'


def _t5x_job(args, tool: str) -> list[str]:
  dirs = {"model_dir": args.model_dir} if tool == "train" else {
      "checkpoint_path": args.checkpoint_path, "output_dir": args.output_dir}
  for key, value in dirs.items():
    if value and not value.startswith("gs://"):
      raise ValueError(f"--{key.replace('_', '-')} must be a gs:// path on a multi-host slice "
                       f"(every worker reads and writes it), got {value!r}")
  bindings = t5x_command.dir_bindings(tool, **dirs) + t5x_command.parse_bindings(args.gin)
  return t5x_command.t5x_argv(tool, args.gin_file, ["configs"], bindings,
                              tfds_data_dir=args.tfds_data_dir)


def commands_for(args) -> list[list[str]]:
  """Every command line the chosen subcommand runs, in order."""
  slice_ = Slice(args.name, args.zone, args.project, args.gcloud)
  if args.step == "create":
    return [slice_.create(args.accelerator_type, args.runtime_version, args.spot)]
  if args.step == "setup":
    return copy_project_commands(
        slice_, args.source or (None if args.repo_url else REPO_ROOT), args.repo_url, args.ref,
        args.archive_dir) + [slice_.ssh(build_environment_command(args.extras))]
  if args.step in ("train", "eval", "infer"):
    return [slice_.ssh(start_job_command(args.step, _t5x_job(args, args.step)))]
  if args.step == "tail":
    return [slice_.ssh(tail_command(args.job, args.lines, not args.no_follow),
                       worker=args.worker)]
  if args.step == "stop":
    return [slice_.ssh(stop_command(args.job))]
  if args.step == "delete":
    return [slice_.delete()]
  raise ValueError(f"unknown step {args.step!r}")


def _job_flags(parser: argparse.ArgumentParser, tool: str) -> None:
  parser.add_argument("--gin-file", action="append", required=True,
                      help="gin file relative to configs/ (repeatable), e.g. "
                      "t5x/mrt5_small_span_corruption.gin")
  if tool == "train":
    parser.add_argument("--model-dir", required=True, help="gs:// model directory")
  else:
    parser.add_argument("--checkpoint-path", required=True, help="gs://…/checkpoint_N")
    parser.add_argument("--output-dir", required=True, help="gs:// directory for results")
  parser.add_argument("--tfds-data-dir", default=None, help="gs:// TFDS data directory (mC4)")
  parser.add_argument("--gin", action="append", default=[], metavar="KEY=VALUE",
                      help="extra gin binding (repeatable), e.g. --gin=TRAIN_STEPS=5000; "
                      "strings need no quotes")


SHARED_FLAGS = (
    ("--dry-run", dict(action="store_true", default=False, help="print the commands only")),
    ("--name", dict(default=None, help="TPU VM name (required)")),
    ("--zone", dict(default=None, help="e.g. us-central2-b (required)")),
    ("--project", dict(default=None, help="GCP project (default: gcloud's)")),
    ("--gcloud", dict(default="gcloud", help="gcloud executable")),
)


def _shared_flags(parser: argparse.ArgumentParser, top: bool) -> None:
  """Flags accepted before and after the step (defaults only on the top parser, so a
  value given before the step is not reset by the step's parser)."""
  for flag, options in SHARED_FLAGS:
    parser.add_argument(flag, **(options if top else dict(options, default=argparse.SUPPRESS)))


class _Steps:
  """``add_parser`` that gives every step the shared flags."""

  def __init__(self, subparsers):
    self._subparsers = subparsers

  def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
    parser = self._subparsers.add_parser(name, **kwargs)
    _shared_flags(parser, top=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  _shared_flags(parser, top=True)
  steps = _Steps(parser.add_subparsers(dest="step", required=True))

  create = steps.add_parser("create", help="create the TPU VM slice")
  create.add_argument("--accelerator-type", required=True, help="e.g. v4-8, v5litepod-16")
  create.add_argument("--runtime-version", required=True, help="e.g. tpu-ubuntu2204-base")
  create.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")

  setup = steps.add_parser("setup", help="copy this project to every worker and build the "
                           "tested t5x environment there")
  setup.add_argument("--source", default=None,
                     help="local checkout to copy (default: this one, unless --repo-url)")
  setup.add_argument("--repo-url", default=None, help="clone this git URL on the workers instead")
  setup.add_argument("--ref", default="HEAD", help="git ref of the project to install")
  setup.add_argument("--archive-dir", default="/tmp", help="where the local source archive goes")
  setup.add_argument("--extras", default="", help="extras of this project, e.g. 'test'")

  for tool in ("train", "eval", "infer"):
    _job_flags(steps.add_parser(tool, help=f"start t5x.{tool} on every worker"), tool)

  tail = steps.add_parser("tail", help="show a job's log")
  tail.add_argument("--job", choices=("train", "eval", "infer"), default="train")
  tail.add_argument("--worker", default="0", help="worker index (or 'all')")
  tail.add_argument("--lines", type=int, default=100)
  tail.add_argument("--no-follow", action="store_true", help="print and return")

  stop = steps.add_parser("stop", help="stop a job on every worker")
  stop.add_argument("--job", choices=("train", "eval", "infer"), default="train")

  steps.add_parser("delete", help="delete the slice")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(t5x_command.gin_flags_as_argparse(argv))
  missing = [flag for flag in ("--name", "--zone") if not getattr(args, flag[2:])]
  if missing:
    parser.error(f"the following arguments are required: {', '.join(missing)}")
  try:
    commands = commands_for(args)
  except ValueError as e:
    parser.error(str(e))
  return t5x_command.run_all(commands, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
