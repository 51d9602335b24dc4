"""Run mrt5-jax with t5x on a Cloud TPU VM slice.

Every step is one or more ``gcloud compute tpus tpu-vm`` commands; ``--dry-run``
prints them exactly as they would run and runs nothing::

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

t5x runs the same program on every worker of the slice (``--worker=all``); the
model directory must therefore be on GCS.
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The t5x commit this project was tested with (google-research/t5x HEAD, 2026-04).
T5X_COMMIT = "cc342d419ec3e3e9c4bf1df33c82330cafdc1e16"
T5X_REPO = "https://github.com/google-research/t5x"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
REMOTE_PROJECT = "$HOME/mrt5-jax"
REMOTE_T5X = "$HOME/t5x"
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


def install_t5x_command(t5x_ref: str) -> str:
  """Remote shell command: t5x (with jax[tpu]) from its source repository."""
  ref = shlex.quote(t5x_ref)
  return (f'set -e; python3 -m pip install --upgrade pip; rm -rf "{REMOTE_T5X}"; '
          f'git clone {T5X_REPO} "{REMOTE_T5X}"; git -C "{REMOTE_T5X}" checkout {ref}; '
          f'python3 -m pip install -e "{REMOTE_T5X}[tpu,gcp]" -f {LIBTPU_RELEASES}')


def install_project_commands(slice_: Slice, source: Optional[str],
                             repo_url: Optional[str], ref: str,
                             archive_dir: str) -> list[list[str]]:
  """Commands that put this project on every worker and pip-install it.

  ``source`` (a local git checkout) is archived at ``ref`` and copied to the
  workers; ``repo_url`` is cloned on the workers instead.
  """
  if bool(source) == bool(repo_url):
    raise ValueError("give exactly one of --source (local checkout) and --repo-url")
  unpack = f'set -e; rm -rf "{REMOTE_PROJECT}"; '
  install = f'python3 -m pip install -e "{REMOTE_PROJECT}"'
  if repo_url:
    return [slice_.ssh(
        unpack + f'git clone {shlex.quote(repo_url)} "{REMOTE_PROJECT}"; '
        f'git -C "{REMOTE_PROJECT}" checkout {shlex.quote(ref)}; ' + install)]
  archive = os.path.join(archive_dir, SOURCE_ARCHIVE)
  return [
      ["git", "-C", source, "archive", "--format=tar.gz", "-o", archive, ref],
      slice_.scp(archive, SOURCE_ARCHIVE),
      slice_.ssh(unpack + f'mkdir -p "{REMOTE_PROJECT}"; '
                 f'tar -xzf "$HOME/{SOURCE_ARCHIVE}" -C "{REMOTE_PROJECT}"; ' + install),
  ]


def start_job_command(job: str, t5x_args: Sequence[str]) -> str:
  """Remote shell command: run t5x in the background, log and pid in $HOME."""
  log, pid = f'"$HOME/mrt5-{job}.log"', f'"$HOME/mrt5-{job}.pid"'
  return (f'cd "{REMOTE_PROJECT}" && (nohup {t5x_command.shell_join(t5x_args)} > {log} 2>&1 '
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
    return [slice_.ssh(install_t5x_command(args.t5x_ref))] + install_project_commands(
        slice_, args.source or (None if args.repo_url else REPO_ROOT), args.repo_url, args.ref,
        args.archive_dir)
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
                      help="extra gin binding (repeatable), e.g. --gin=TRAIN_STEPS=5000")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
  parser.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
  parser.add_argument("--gcloud", default="gcloud", help="gcloud executable")
  steps = parser.add_subparsers(dest="step", required=True)

  create = steps.add_parser("create", help="create the TPU VM slice")
  create.add_argument("--accelerator-type", required=True, help="e.g. v4-8, v5litepod-16")
  create.add_argument("--runtime-version", required=True, help="e.g. tpu-ubuntu2204-base")
  create.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")

  setup = steps.add_parser("setup", help="install t5x and this project on every worker")
  setup.add_argument("--t5x-ref", default=T5X_COMMIT, help="t5x commit or branch")
  setup.add_argument("--source", default=None,
                     help="local checkout to copy (default: this one, unless --repo-url)")
  setup.add_argument("--repo-url", default=None, help="clone this git URL on the workers instead")
  setup.add_argument("--ref", default="HEAD", help="git ref of the project to install")
  setup.add_argument("--archive-dir", default="/tmp", help="where the local source archive goes")

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
  args = parser.parse_args(argv)
  try:
    commands = commands_for(args)
  except ValueError as e:
    parser.error(str(e))
  return t5x_command.run_all(commands, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
