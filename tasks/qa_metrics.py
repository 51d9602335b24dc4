"""Extractive QA metrics: exact match and token F1, each the max over the gold answers.

Scores are percentages averaged over examples (as the SQuAD v1.1 script
and the MrT5 paper's ``qa_eval.py`` report them). Two normalisations:

``squad`` (``squad_metrics``; keys ``exact_match``, ``f1``): the official
SQuAD v1.1 script's, which the paper and XTREME use for TyDi QA and XQuAD
in every language. Lowercase (``str.lower``: Latin, Cyrillic and Greek
letters fold; Arabic, Thai, CJK have no case), drop ASCII punctuation
(``string.punctuation``), drop the English articles a/an/the as whole
words (in every language), collapse whitespace; tokens are the
whitespace-separated words. For other scripts this means: punctuation
outside ASCII stays (Arabic ``،`` ``؟``, CJK ``，。``, Russian ``«»``), and
text written without spaces (Chinese, Thai, Japanese) is one token per
space-free run, so F1 there is nearly all-or-nothing.

``multilingual`` (``multilingual_metrics(language)``; keys
``exact_match_multilingual``, ``f1_multilingual``): NFC first (composed and
decomposed accents compare equal), lowercase, drop every Unicode
punctuation character (categories P*) and ASCII punctuation, drop a/an/the
only for English, and split scripts written without spaces (CJK
ideographs, kana, Thai, Lao, Khmer, Myanmar) into one token per code point,
as MLQA's evaluation does for Chinese, so F1 gives partial credit there.
Exact match compares the token sequences.
"""
from __future__ import annotations

import collections
import re
import string
import unicodedata
from typing import Callable, List, Mapping, Optional, Sequence, Union

Answers = Union[str, Sequence[str]]

_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Code point ranges of scripts written without spaces between words.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0E7F),    # Thai
    (0x0E80, 0x0EFF),    # Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x31F0, 0x31FF),    # Katakana phonetic extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def squad_normalize(text: str) -> str:
  """SQuAD v1.1: lowercase, no ASCII punctuation, no a/an/the, single spaces."""
  text = "".join(c for c in text.lower() if c not in _ASCII_PUNCTUATION)
  return " ".join(_ENGLISH_ARTICLES.sub(" ", text).split())


def squad_tokens(text: str) -> List[str]:
  return squad_normalize(text).split()


def _is_punctuation(char: str) -> bool:
  return (char in _ASCII_PUNCTUATION or
          unicodedata.category(char).startswith("P"))


def _written_without_spaces(char: str) -> bool:
  point = ord(char)
  return any(low <= point <= high for low, high in _NO_SPACE_RANGES)


def multilingual_tokens(text: str, language: Optional[str] = None) -> List[str]:
  """Tokens of the ``multilingual`` normalisation (see the module docstring)."""
  text = unicodedata.normalize("NFC", text).lower()
  text = "".join(c for c in text if not _is_punctuation(c))
  if language == "en":
    text = _ENGLISH_ARTICLES.sub(" ", text)
  tokens = []
  for word in text.split():
    run = ""
    for char in word:
      if _written_without_spaces(char):
        if run:
          tokens.append(run)
          run = ""
        tokens.append(char)
      else:
        run += char
    if run:
      tokens.append(run)
  return tokens


def token_f1(prediction_tokens: Sequence[str],
             gold_tokens: Sequence[str]) -> float:
  """Harmonic mean of token precision and recall (bags of tokens); 0 if none shared."""
  common = collections.Counter(prediction_tokens) & collections.Counter(
      gold_tokens)
  shared = sum(common.values())
  if shared == 0:
    return 0.0
  precision = shared / len(prediction_tokens)
  recall = shared / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _as_list(answers: Answers) -> List[str]:
  answers = [answers] if isinstance(answers, str) else list(answers)
  if not answers:
    raise ValueError("an example has no gold answer")
  return answers


def _mean_best(targets: Sequence[Answers], predictions: Sequence[str],
               tokenize: Callable[[str], List[str]]):
  """(mean best EM, mean best F1) in percent over examples."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} "
                     "predictions")
  if not len(targets):
    raise ValueError("no predictions to score")
  exact, f1 = 0.0, 0.0
  for answers, prediction in zip(targets, predictions):
    predicted = tokenize(prediction)
    golds = [tokenize(a) for a in _as_list(answers)]
    exact += max(float(predicted == gold) for gold in golds)
    f1 += max(token_f1(predicted, gold) for gold in golds)
  n = len(targets)
  return 100.0 * exact / n, 100.0 * f1 / n


def squad_metrics(targets: Sequence[Answers],
                  predictions: Sequence[str]) -> Mapping[str, float]:
  """``exact_match`` and ``f1`` (percent) with the SQuAD v1.1 normalisation.

  Args:
    targets: per example, the gold answers (a list, or one string).
    predictions: per example, the predicted answer.
  """
  exact, f1 = _mean_best(targets, predictions, squad_tokens)
  return {"exact_match": exact, "f1": f1}


def multilingual_metrics(language: Optional[str] = None) -> Callable:
  """A seqio metric fn: ``exact_match_multilingual``, ``f1_multilingual`` (percent).

  ``language`` (ISO code) only decides whether English articles are dropped.
  """

  def multilingual_qa_metrics(targets: Sequence[Answers],
                              predictions: Sequence[str]) -> Mapping[str, float]:
    exact, f1 = _mean_best(targets, predictions,
                           lambda text: multilingual_tokens(text, language))
    return {"exact_match_multilingual": exact, "f1_multilingual": f1}

  return multilingual_qa_metrics
