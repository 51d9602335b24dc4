"""The inspection job: ``inspect_deletion`` (gin-configurable) reads the gate on some inputs
and writes the HTML deletion report of a model directory's checkpoint."""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Optional, Sequence

import gin
import numpy as np

from mrt5_jax.checkpointing import loading
from mrt5_jax.data import eval_pipeline
from mrt5_jax.evaluation.deletion_analysis import encode_texts, read_samples, summarize
from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.reporting.deletion_html import render_html
from mrt5_jax.tasks import text_files


def _label_texts(texts: Sequence[str], files: Sequence[str], sample_corpus: Optional[str],
                 num_examples: int) -> list[tuple[str, str]]:
  """(label, text) pairs from strings, text files (a line each) or the shipped sample corpus."""
  if texts:
    return [("text", t) for t in texts]
  paths: list[tuple[str, str]] = []
  if files:
    for pattern in files:
      matches = sorted(glob.glob(pattern))
      if not matches:
        raise FileNotFoundError(f"no file matches {pattern!r} (inspect_deletion.files)")
      paths += [(os.path.splitext(os.path.basename(p))[0], p) for p in matches]
  else:
    for language in text_files.SAMPLE_LANGUAGES:
      (path,) = text_files.sample_corpus_files(sample_corpus, language)
      paths.append((language, path))
  pairs = []
  for label, path in paths:
    with open(path, encoding="utf-8") as f:
      lines = [line.rstrip("\n") for line in f if line.strip()]
    pairs += [(label, line) for line in lines[:num_examples]]
  return pairs


def _dataset_rows(dataset, num_examples: int) -> tuple[list[np.ndarray], list[str]]:
  """Encoder inputs (padding stripped) of the first ``num_examples`` examples per task."""
  rows, labels = [], []
  for task in eval_pipeline.leaf_tasks(dataset):
    taken = 0
    for batch, real in eval_pipeline.padded_batches(dataclasses.replace(dataset, mixture_or_task_name=task),
                                                  None):
      for tokens in batch["encoder_input_tokens"][:real]:
        if taken < num_examples:
          rows.append(tokens[tokens > 0])
          labels.append(eval_pipeline.language_of(task) or task)
          taken += 1
      if taken >= num_examples:
        break
  return rows, labels


@gin.configurable(denylist=["params"])
def inspect_deletion(*, model_dir: str = gin.REQUIRED, step: Optional[int] = None, dataset=None,
                     texts: Sequence[str] = (), files: Sequence[str] = (),
                     sample_corpus: Optional[str] = None, num_examples: int = 8,
                     max_length: int = 1024, samples_per_label: int = 3,
                     html_path: Optional[str] = None, inference=None,
                     target_rate: Optional[float] = None, params=None) -> dict[str, Any]:
  """Read the gate on some inputs and write the HTML report; returns its summary.

  Inputs, the first that is set: ``texts``, ``files`` (globs; a sample per
  line, labelled by file name), ``sample_corpus`` (a split of the shipped
  corpus, labelled by language), ``dataset`` (a ``data.DatasetConfig``; the
  encoder inputs of its tasks, labelled by language). ``num_examples`` per
  file, language or task; texts are cut to ``max_length`` bytes with EOS.
  ``html_path`` defaults to ``<model_dir>/inspect/deletion.<step>.html``.
  ``target_rate``: the line on the per-language chart (None: the pooling
  baselines' length-reduction target, or the gin binding
  ``ControllerConfig.target_deletion_rate`` of the run file, when there is one).
  The BP/CP pooling baselines pool positions instead of deleting them; their
  report says "pooled" (``verb``).
  Returns {'checkpoint', 'html_path', 'summary', 'samples': [Sample], 'samples_per_label',
  'verb', 'target_rate'}.
  """

  if num_examples < 1 or samples_per_label < 0:
    raise ValueError("num_examples must be >= 1 and samples_per_label >= 0")
  loaded = loading.load_model(model_dir, step, params=params,
                              step_flag="--gin.inspect_deletion.step={step}")
  config, params = loaded.config, loaded.params
  if texts or files or sample_corpus:
    pairs = _label_texts(texts, files, sample_corpus, num_examples)
    labels = [label for label, _ in pairs]
    rows = encode_texts([text for _, text in pairs], max_length)
    source = ("texts" if texts else f"files {list(files)}" if files
              else f"sample corpus ({sample_corpus})")
  elif dataset is not None:
    rows, labels = _dataset_rows(dataset, num_examples)
    source = f"{dataset.mixture_or_task_name} ({dataset.split})"
  else:
    raise ValueError("nothing to inspect: set inspect_deletion.texts, .files, .sample_corpus "
                     "or .dataset")
  if not rows:
    raise ValueError(f"no inputs found in {source}")
  inference = (inference or InferenceConfig()).replace(mode="bucketed")
  path = EncodePath(Transformer(config), inference)
  samples = read_samples(path, params, rows, labels)
  shortening = shortening_for(config)
  verb = shortening.verb
  if target_rate is None:
    target_rate = _target_rate(shortening)
  if shortening.length_reduction_target is not None:  # BP / CP pool to their own reduction
    details = {"checkpoint": loaded.step_dir, "inputs": source,
               "pooling": f"{shortening.title} before "
                          f"encoder layer {config.delete_gate_layer} of "
                          f"{config.num_encoder_layers}"}
    title = "Pooling report"
  else:
    details = {"checkpoint": loaded.step_dir, "inputs": source,
               "gate": f"before encoder layer {config.delete_gate_layer} of "
                       f"{config.num_encoder_layers}, threshold {config.deletion_threshold:g}"}
    title = "MrT5 deletion report"
  page = render_html(samples, title=title, details=details,
                     threshold=config.deletion_threshold, scale=config.sigmoid_mask_scale,
                     samples_per_label=samples_per_label, target=target_rate, verb=verb)
  html_path = html_path or os.path.join(model_dir, "inspect", f"deletion.{loaded.step}.html")
  os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(page)
  return {"checkpoint": loaded.step_dir, "html_path": html_path,
          "summary": summarize(samples), "samples": samples,
          "samples_per_label": samples_per_label, "verb": verb, "target_rate": target_rate}


def _target_rate(shortening) -> Optional[float]:
  """The rate the run aimed at: the pooling target, or the controller's gin binding."""
  if shortening.length_reduction_target is not None:
    return shortening.length_reduction_target
  try:
    value = gin.query_parameter("ControllerConfig.target_deletion_rate")
    if isinstance(value, gin.config.ConfigurableReference):  # a macro: its value
      value = value.scoped_configurable_fn()
    return float(value)
  except (ValueError, TypeError):  # not bound (or not a number): no target line
    return None
