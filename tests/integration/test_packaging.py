"""The install: editable (PEP 660) and regular installs both provide mrt5_jax.tasks
and mrt5_jax.configs, also with `wheel` present (TensorFlow brings it, and the pip of
Python 3.11 used to fall back to a legacy `setup.py develop` that lost them)."""
import os
import shutil
import subprocess
import sys

import pytest
from tests.fixtures import REPO_ROOT

ROOT = REPO_ROOT
FIND = ("import importlib.util as u, sys; "
        "print(*(u.find_spec(n).origin for n in sys.argv[1:]), sep='\\n')")
SUBPACKAGES = ("mrt5_jax.tasks", "mrt5_jax.configs")


def _venv(path):
  subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
  python = os.path.join(str(path), "bin", "python")
  # gin-config: mrt5_jax/__init__ imports it; wheel: the trap this test is about.
  subprocess.run([python, "-m", "pip", "install", "-q", "wheel", "gin-config"], check=True)
  return python


@pytest.mark.slow
def test_editable_and_regular_installs_provide_the_subpackages(tmp_path):
  source = tmp_path / "src"
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      ".venv", ".git", "*.egg-info", "build", "__pycache__", ".pytest_cache"))
  python = _venv(tmp_path / "editable")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(source)],
                 check=True)
  out = subprocess.run([python, "-c", FIND, *SUBPACKAGES], cwd=str(tmp_path), check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == [str(source / "tasks" / "__init__.py"), str(source / "configs" / "__init__.py")]
  python = _venv(tmp_path / "regular")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(source)], check=True)
  out = subprocess.run([python, "-c", FIND, *SUBPACKAGES], cwd=str(tmp_path), check=True,
                       capture_output=True, text=True).stdout.split()
  site = os.path.dirname(os.path.dirname(os.path.dirname(out[0])))
  assert out[0] == os.path.join(site, "mrt5_jax", "tasks", "__init__.py")
  assert os.path.isfile(os.path.join(site, "mrt5_jax", "configs", "runs", "local.gin"))
  assert os.path.isfile(os.path.join(site, "mrt5_jax", "configs", "t5x", "mrt5_tiny_cpu.gin"))
  assert os.listdir(os.path.join(site, "mrt5_jax", "tasks", "data"))
  assert not os.path.exists(os.path.join(site, "tasks"))
  assert not os.path.exists(os.path.join(site, "configs"))
