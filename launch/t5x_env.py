"""Build the tested t5x environment (launch/t5x-constraints.txt) in a virtual environment.

  python launch/t5x_env.py --venv ~/t5x-venv                  # from PyPI and GitHub
  python launch/t5x_env.py --venv ~/t5x-venv --dry-run        # print the steps only
  python launch/t5x_env.py --venv ~/t5x-venv --source t5x=/src/t5x \\
      --source airio=/src/airio --source jestimator=/src/jestimator   # local checkouts
  python launch/t5x_env.py --venv ~/t5x-venv --tpu            # jax[tpu] (Cloud TPU VM)
  ~/t5x-venv/bin/python launch/t5x_env.py --check             # does this env match the file?

The steps: check the Python version the file names; create the venv; install
every package pinned in the constraints file from PyPI (``-c`` the file; on a
TPU VM ``jax[tpu]`` at the pinned jax version with libtpu's find-links page);
install t5x, airio and jestimator ``--no-deps`` at the commits of the file's
``source:`` lines (their own setup files pull several dependencies from git
heads, which would move the tested set); install this project (editable,
``-c`` the file); check the result. A ``--source`` directory is copied into
``<venv>/src/`` before it is installed (pip builds in place). Where it is a
git checkout (has ``.git``) its HEAD must be the pinned commit; where it is
not (or git cannot read it) that cannot be checked, and a note says so.
Standard library only, so it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from typing import Mapping, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
CONSTRAINTS = os.path.join(HERE, "t5x-constraints.txt")
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# Installed in this order: airio and jestimator before t5x, which imports both.
SOURCE_NAMES = ("airio", "jestimator", "t5x")
CHECK_IMPORTS = ("t5x", "t5x.train", "t5x.eval", "t5x.infer", "seqio", "airio", "jestimator",
                 "clu", "fiddle", "grain", "tensorboard")

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
_PYTHON = re.compile(r"^#\s*python:\s*(\d+)\.(\d+)\s*$")
_SOURCE = re.compile(r"^#\s*source:\s*(\S+)\s+(\S+)\s+([0-9a-f]{40})\s*$")


@dataclasses.dataclass(frozen=True)
class Source:
  """One repository installed from source: its name, git URL and commit."""
  name: str
  url: str
  commit: str

  @property
  def pip_spec(self) -> str:
    return f"git+{self.url}@{self.commit}"


@dataclasses.dataclass(frozen=True)
class TestedSet:
  """The contents of the constraints file."""
  path: str
  python: tuple[int, int]
  pins: dict          # normalised package name -> version, in file order
  sources: dict       # name -> Source

  @property
  def python_name(self) -> str:
    return "python{}.{}".format(*self.python)


def normalise_name(name: str) -> str:
  """PEP 503 normalisation: ``ml_collections`` == ``ml-collections``."""
  return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: str = CONSTRAINTS) -> TestedSet:
  """Parse the pins, the ``# python: X.Y`` line and the ``# source:`` lines of ``path``."""
  python, pins, sources = None, {}, {}
  with open(path) as f:
    for number, raw in enumerate(f, 1):
      line = raw.strip()
      if not line:
        continue
      if line.startswith("#"):
        if _PYTHON.match(line):
          python = tuple(int(g) for g in _PYTHON.match(line).groups())
        elif _SOURCE.match(line):
          name, url, commit = _SOURCE.match(line).groups()
          sources[name] = Source(name, url, commit)
        elif line.lstrip("# ").startswith(("python:", "source:")):
          raise ValueError(f"{path}:{number}: cannot read {line!r} (expected "
                           "'# python: 3.11' or '# source: NAME URL <40-hex commit>')")
        continue
      match = _PIN.match(line)
      if not match:
        raise ValueError(f"{path}:{number}: {line!r} is not a pin NAME==VERSION")
      pins[normalise_name(match.group(1))] = match.group(2)
  missing = [name for name in SOURCE_NAMES if name not in sources]
  if python is None or missing:
    raise ValueError(f"{path} needs a '# python: X.Y' line and '# source:' lines for "
                     f"{list(SOURCE_NAMES)}; missing: {(['python'] if python is None else []) + missing}")
  if "jax" not in pins:
    raise ValueError(f"{path} pins no jax version")
  return TestedSet(path, python, pins, sources)


def requirements(tested: TestedSet, tpu: bool = False) -> list[str]:
  """``NAME==VERSION`` of every pin; jax as ``jax[tpu]`` on a TPU VM."""
  return [f"{'jax[tpu]' if tpu and name == 'jax' else name}=={version}"
          for name, version in tested.pins.items()]


def check_python(tested: TestedSet) -> int:
  """0 when this interpreter is new enough for the tested set, else 1 with the reason."""
  if sys.version_info[:2] >= tested.python:
    return 0
  need = "{}.{}".format(*tested.python)
  print(f"t5x_env: the t5x environment needs Python >= {need} (jax {tested.pins['jax']}, flax "
        f"and orbax-checkpoint require it); {sys.executable} is "
        f"{sys.version.split()[0]}: pass --python={tested.python_name}", file=sys.stderr)
  return 1


def source_commit_note(name: str, path: str, pinned: str) -> Optional[str]:
  """Check a ``--source`` checkout's commit against the pin.

  Returns None when ``path`` is a git checkout at ``pinned`` with no changes to
  tracked files, else a note for the user (no ``.git``, git unavailable,
  local changes).

  Raises:
    ValueError: the checkout is at another commit.
  """
  if not os.path.exists(os.path.join(path, ".git")):
    return (f"--source {name}: {path} has no .git, so its commit cannot be checked; it is "
            f"taken to be at the pinned commit {pinned}")
  try:
    head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                           check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as error:
    detail = getattr(error, "stderr", "") or str(error)
    return (f"--source {name}: git could not read the commit of {path} ({detail.strip()}); it is "
            f"taken to be at the pinned commit {pinned}")
  if head != pinned:
    raise ValueError(f"--source {name}: {path} is at commit {head}, but the constraints file "
                     f"pins {pinned}: run git -C {shlex.quote(path)} checkout {pinned}")
  if dirty:
    return (f"--source {name}: {path} is at the pinned commit but has uncommitted changes to "
            "tracked files, which are installed as they are")
  return None


def build_steps(venv: str, *, python: str = sys.executable, tested: Optional[TestedSet] = None,
                local_sources: Optional[Mapping[str, str]] = None, tpu: bool = False,
                project: Optional[str] = REPO_ROOT, extras: Sequence[str] = ()
                ) -> list[list[str]]:
  """Every command that builds the environment, in order (argv lists)."""
  tested = tested or read_constraints()
  local_sources = dict(local_sources or {})
  unknown = sorted(set(local_sources) - set(SOURCE_NAMES))
  if unknown:
    raise ValueError(f"--source names one of {list(SOURCE_NAMES)}, got {unknown}")
  vpython = os.path.join(venv, "bin", "python")
  pip = [vpython, "-m", "pip", "install"]
  steps = [[python, os.path.abspath(__file__), "--check-python", "--constraints", tested.path],
           [python, "-m", "venv", venv],
           pip + ["--upgrade", "pip", "setuptools", "wheel"],
           pip + ["-c", tested.path] + (["-f", LIBTPU_RELEASES] if tpu else [])
           + requirements(tested, tpu)]
  specs = []
  for name, path in local_sources.items():
    note = source_commit_note(name, os.path.abspath(path), tested.sources[name].commit)
    if note:
      print(f"t5x_env: {note}", file=sys.stderr)
  if local_sources:
    steps.append(["mkdir", "-p", os.path.join(venv, "src")])
  for name in SOURCE_NAMES:
    if name in local_sources:
      copy = os.path.join(venv, "src", name)
      steps += [["rm", "-rf", copy], ["cp", "-a", os.path.abspath(local_sources[name]), copy]]
      specs.append(copy)
    else:
      specs.append(tested.sources[name].pip_spec)
  steps.append(pip + ["--no-deps"] + specs)
  if project:
    target = os.path.abspath(project) + (f"[{','.join(extras)}]" if extras else "")
    steps.append(pip + ["-c", tested.path, "-e", target])
  steps.append([vpython, os.path.abspath(__file__), "--check", "--constraints", tested.path])
  return steps


def installed_mismatches(tested: TestedSet) -> list[str]:
  """Pins that this interpreter's installed packages do not match (one line each)."""
  from importlib import metadata
  problems = []
  for name, version in tested.pins.items():
    try:
      found = metadata.version(name)
    except metadata.PackageNotFoundError:
      problems.append(f"{name}: not installed (tested {version})")
      continue
    if found.split("+")[0] != version:
      problems.append(f"{name}: {found} installed, tested {version}")
  return problems


def check(tested: TestedSet) -> int:
  """Imports t5x and its companions and compares the installed versions with the pins."""
  import importlib
  for module in CHECK_IMPORTS:
    try:
      importlib.import_module(module)
    except Exception as error:  # a broken install shows up as any kind of import error
      print(f"t5x environment check: import {module} failed: {error!r}", file=sys.stderr)
      return 1
  problems = installed_mismatches(tested)
  for line in problems:
    print(f"t5x environment check: {line}", file=sys.stderr)
  if problems:
    return 1
  print(f"t5x environment OK: {sys.executable} (Python {sys.version.split()[0]}), "
        f"{len(tested.pins)} pins of {tested.path} match, t5x/airio/jestimator import")
  return 0


def run_steps(steps: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Prints each step; runs it unless ``dry_run``; stops at the first failure."""
  for argv in steps:
    print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if dry_run:
      continue
    status = subprocess.run(list(argv), check=False).returncode
    if status != 0:
      print(f"t5x_env: step failed with exit status {status}", file=sys.stderr)
      return status
  return 0


def parse_sources(items: Sequence[str]) -> dict[str, str]:
  """``["t5x=/src/t5x", ...]`` -> {"t5x": "/src/t5x"}; each directory must exist."""
  sources = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep or name not in SOURCE_NAMES:
      raise ValueError(f"--source must look like NAME=DIR with NAME in {list(SOURCE_NAMES)}, "
                       f"got {item!r}")
    if not os.path.isdir(path):
      raise ValueError(f"--source {name}: {path!r} is not a directory")
    sources[name] = path
  return sources


def add_env_flags(parser: argparse.ArgumentParser) -> None:
  """The flags that choose how the environment is built (shared with launch/local.py)."""
  parser.add_argument("--python", default=sys.executable,
                      help="interpreter that creates the venv (default: this one)")
  parser.add_argument("--tpu", action="store_true",
                      help="jax[tpu] at the pinned jax version (Cloud TPU VM)")
  parser.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                      help="install t5x, airio or jestimator from a local checkout at the "
                      "pinned commit instead of GitHub (repeatable; a git checkout's HEAD "
                      "is checked against the pin)")
  parser.add_argument("--extras", default="",
                      help="extras of this project to install too, e.g. 'test'")
  parser.add_argument("--no-project", action="store_true", help="do not install this project")
  parser.add_argument("--constraints", default=CONSTRAINTS, help="the pinned set")


def steps_from_args(args, venv: str) -> list[list[str]]:
  return build_steps(venv, python=args.python, tested=read_constraints(args.constraints),
                     local_sources=parse_sources(args.source), tpu=args.tpu,
                     project=None if args.no_project else REPO_ROOT,
                     extras=[e for e in args.extras.split(",") if e])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--venv", help="virtual environment to create (or update)")
  parser.add_argument("--dry-run", action="store_true", help="print the steps only")
  parser.add_argument("--check", action="store_true",
                      help="check the running interpreter's packages against the pins")
  parser.add_argument("--check-python", action="store_true",
                      help="check that the running interpreter is new enough")
  add_env_flags(parser)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    if args.check or args.check_python:
      tested = read_constraints(args.constraints)
      return check(tested) if args.check else check_python(tested)
    if not args.venv:
      parser.error("--venv is required (or --check)")
    steps = steps_from_args(args, os.path.abspath(os.path.expanduser(args.venv)))
  except (ValueError, OSError) as error:
    parser.error(str(error))
  return run_steps(steps, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
