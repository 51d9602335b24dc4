"""A TFDS data source that only reads prepared data and explains what is missing.

seqio's ``TfdsDataSource`` would try to download and build a missing
dataset (for mC4: a multi-terabyte Apache Beam job) or fail deep inside TFDS.
This source checks, when a split is requested, that the prepared dataset is
in the data dir and otherwise raises ``FileNotFoundError`` naming the
dataset, the split and the command that prepares it.

Data dir, first one set wins: ``set_tfds_data_dir(path)`` (seqio's global
override, also what t5x's ``--tfds_data_dir`` sets), the gin binding
``mrt5_jax.tasks.tfds_data_dir.path``, ``$TFDS_DATA_DIR``,
``~/tensorflow_datasets``.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Mapping, Optional, Tuple

import gin
import seqio
import tensorflow as tf


# How each entry point takes the data dir (the mrt5-* commands accept only
# --gin_file and --gin.NAME=VALUE flags; --tfds_data_dir is t5x's flag).
DATA_DIR_HINT = ("mrt5-train/mrt5-eval/mrt5-inspect "
                 "--gin.mrt5_jax.tasks.tfds_data_dir.path=DIR (or the environment "
                 "variable TFDS_DATA_DIR=DIR); t5x.train/t5x.eval --tfds_data_dir=DIR; "
                 "in Python mrt5_jax.tasks.set_tfds_data_dir(DIR).")


def set_tfds_data_dir(path: Optional[str]) -> None:
  """Reads every TFDS dataset from ``path`` (None: back to the defaults)."""
  seqio.utils.set_tfds_data_dir_override(os.fspath(path) if path else None)


@gin.configurable(module="mrt5_jax.tasks")
def tfds_data_dir(path: Optional[str] = None) -> str:
  """The TFDS data dir in effect (see the module docstring for the order)."""
  override = getattr(seqio.utils, "_TFDS_DATA_DIR_OVERRIDE", None)
  if override:
    return override
  if path:
    return os.fspath(path)
  return os.environ.get(
      "TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"),
                                    "tensorflow_datasets"))


def dataset_dir(data_dir: str, tfds_name: str) -> str:
  """``<data_dir>/<name>/<config>/<version>`` of ``name/config:version``."""
  if ":" not in tfds_name:
    raise ValueError(f"TFDS name needs a version (name:1.2.3): {tfds_name!r}")
  name, version = tfds_name.split(":", 1)
  return os.path.join(data_dir, *name.split("/"), version)


def _prepared_versions(data_dir: str, tfds_name: str) -> Tuple[str, ...]:
  parent = os.path.dirname(dataset_dir(data_dir, tfds_name))
  if not tf.io.gfile.isdir(parent):
    return ()
  return tuple(sorted(
      v.rstrip("/") for v in tf.io.gfile.listdir(parent)
      if tf.io.gfile.exists(os.path.join(parent, v.rstrip("/"),
                                         "dataset_info.json"))))


def check_prepared(tfds_name: str, tfds_split: str, data_dir: str,
                   prepare_hint: str, task_split: str = "") -> None:
  """Raises unless ``tfds_split`` of ``tfds_name`` is prepared in ``data_dir``.

  A sliced split (``train[:80%]``) needs its whole split (``train``).

  Raises:
    FileNotFoundError: the dataset is not in ``data_dir``.
    ValueError: the dataset is there but lacks ``tfds_split``.
  """
  where = f"split '{tfds_split}'" + (
      f" (task split '{task_split}')" if task_split else "")
  info_path = os.path.join(dataset_dir(data_dir, tfds_name),
                           "dataset_info.json")
  if not tf.io.gfile.exists(info_path):
    found = _prepared_versions(data_dir, tfds_name)
    found_text = (f" Versions prepared there: {', '.join(found)}." if found
                  else "")
    raise FileNotFoundError(
        f"TFDS dataset '{tfds_name}', {where}, is not prepared in data dir "
        f"'{data_dir}' (no {info_path}).{found_text} "
        f"{prepare_hint.format(data_dir=data_dir)} Then point mrt5-jax at the "
        f"data dir: {DATA_DIR_HINT}")
  with tf.io.gfile.GFile(info_path) as f:
    splits = [s.get("name") for s in json.load(f).get("splits", [])]
  if tfds_split.split("[", 1)[0] not in splits:
    raise ValueError(
        f"TFDS dataset '{tfds_name}' in '{data_dir}' has no {where}; prepared "
        f"splits: {', '.join(sorted(splits)) or 'none'}. "
        f"{prepare_hint.format(data_dir=data_dir)}")


class PreparedTfdsDataSource(seqio.TfdsDataSource):
  """seqio TFDS source over prepared data only; name and data dir resolve late.

  ``tfds_name_fn`` and ``data_dir_fn`` are called whenever data is needed, so
  gin bindings parsed after the task was registered still apply.
  """

  def __init__(self, tfds_name_fn: Callable[[], str],
               splits: Mapping[str, str],
               prepare_hint: str,
               data_dir_fn: Callable[[], str] = tfds_data_dir,
               caching_permitted: bool = True):
    self._tfds_name_fn = tfds_name_fn
    self._data_dir_fn = data_dir_fn
    self._split_map = dict(splits)
    self._prepare_hint = prepare_hint
    self._loaders: Dict[Tuple[str, str], seqio.utils.LazyTfdsLoader] = {}
    super().__init__(tfds_name=tfds_name_fn(), splits=self._split_map,
                     caching_permitted=caching_permitted, read_only=True)

  @property
  def tfds_dataset(self) -> seqio.utils.LazyTfdsLoader:
    key = (self._tfds_name_fn(), self._data_dir_fn())
    if key not in self._loaders:
      # With seqio's global override set, the loader applies it itself (and
      # warns when an explicit data_dir is also given).
      overridden = getattr(seqio.utils, "_TFDS_DATA_DIR_OVERRIDE", None)
      self._loaders[key] = seqio.utils.LazyTfdsLoader(
          key[0], data_dir=None if overridden else key[1],
          split_map=self._split_map, read_only=True)
    return self._loaders[key]

  def check_prepared(self, split: str) -> None:
    if split not in self._split_map:
      raise ValueError(f"Unknown split '{split}' of TFDS dataset "
                       f"'{self._tfds_name_fn()}'; splits: "
                       f"{', '.join(self._split_map)}")
    check_prepared(self._tfds_name_fn(), self._split_map[split],
                   self._data_dir_fn(), self._prepare_hint, task_split=split)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info=None, **kwargs):
    self.check_prepared(split)
    return super().get_dataset(split, shuffle=shuffle, seed=seed,
                               shard_info=shard_info, **kwargs)

  def num_input_examples(self, split: str) -> Optional[int]:
    self.check_prepared(split)
    return super().num_input_examples(split)

  def list_shards(self, split: str):
    self.check_prepared(split)
    return [info.filename for info in self.tfds_dataset.files(split)]
