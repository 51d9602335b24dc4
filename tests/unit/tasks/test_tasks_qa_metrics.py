"""QA exact match / F1: both normalisations on hand-computed examples, non-Latin scripts included."""
import pytest

from mrt5_jax.tasks import metrics
from mrt5_jax.tasks import qa_metrics

multilingual = qa_metrics.multilingual_metrics


def squad(gold, prediction):
  return qa_metrics.squad_metrics([gold], [prediction])


def multi(gold, prediction, language=None):
  return multilingual(language)([gold], [prediction])


@pytest.mark.parametrize("text, normalised", [
    ("The  Eiffel-Tower!", "eiffeltower"),       # punctuation removed, not spaced
    ("  Paris\n", "paris"),
    ("a Madrid", "madrid"),                       # 'a' is dropped in every language
    ("Theatre of the Absurd", "theatre of absurd"),
    ("«Москва»", "«москва»"),                      # Cyrillic lowercased, « » kept
    ("القاهرة؟", "القاهرة؟"),                       # Arabic question mark kept
    ("北京。", "北京。"),                             # CJK full stop kept
    ("ΑΘΗΝΑ", "αθηνα"),
])
def test_squad_normalisation(text, normalised):
  assert qa_metrics.squad_normalize(text) == normalised


@pytest.mark.parametrize("text, language, tokens", [
    ("The  Eiffel-Tower!", "en", ["eiffeltower"]),
    ("The  Eiffel-Tower!", "fr", ["the", "eiffeltower"]),  # articles only for English
    ("a Madrid", "es", ["a", "madrid"]),
    ("«Москва»", "ru", ["москва"]),
    ("القاهرة، مصر؟", "ar", ["القاهرة", "مصر"]),
    ("北京市。", "zh", ["北", "京", "市"]),
    ("กรุงเทพ", "th", ["ก", "ร", "\u0e38", "ง", "เ", "ท", "พ"]),
    ("दिल्ली।", "hi", ["दिल्ली"]),                   # danda is punctuation
    ("서울은", "ko", ["서울은"]),                       # Hangul uses spaces: kept whole
    ("Hà Nội", "vi", ["hà", "nội"]),
    ("東京タワー", "ja", ["東", "京", "タ", "ワ", "ー"]),
])
def test_multilingual_tokens(text, language, tokens):
  assert qa_metrics.multilingual_tokens(text, language) == tokens


def test_english_token_f1_by_hand():
  # pred {big, red, fox} vs gold {red, fox, jumped}: 2 shared, P = R = 2/3.
  result = squad("a red fox jumped", "the big red fox")
  assert result["exact_match"] == 0.0
  assert result["f1"] == pytest.approx(100 * 2 / 3)
  # Tokens are a bag: pred "fox fox" vs gold "fox" share 1, P 1/2, R 1 -> F1 2/3.
  assert squad("fox", "fox fox")["f1"] == pytest.approx(100 * 2 / 3)


def test_arabic():
  # The Arabic question mark is not ASCII punctuation: SQuAD sees two different tokens.
  assert squad("القاهرة", "القاهرة؟") == {"exact_match": 0.0, "f1": 0.0}
  assert multi("القاهرة", "القاهرة؟", "ar") == {
      "exact_match_multilingual": 100.0, "f1_multilingual": 100.0}
  # "مدينة القاهرة" for "القاهرة": 1 shared of 2 predicted -> F1 2/3 in both.
  assert squad("القاهرة", "مدينة القاهرة")["f1"] == pytest.approx(100 * 2 / 3)
  assert multi("القاهرة", "مدينة القاهرة", "ar")["f1_multilingual"] == pytest.approx(
      100 * 2 / 3)


def test_chinese():
  # One space-free token each under SQuAD: no partial credit.
  assert squad("北京", "北京市") == {"exact_match": 0.0, "f1": 0.0}
  # Per character: 2 shared, P 2/3, R 1 -> F1 0.8.
  assert multi("北京", "北京市", "zh")["f1_multilingual"] == pytest.approx(80.0)
  assert multi("北京", "北京市", "zh")["exact_match_multilingual"] == 0.0
  assert multi("北京", "北京 。", "zh")["exact_match_multilingual"] == 100.0


def test_thai():
  # gold กรุงเทพ = 7 code points, prediction กรุงเทพมหานคร = 13, all 7 shared:
  # P 7/13, R 1 -> F1 = 2 * 7/13 / (20/13) = 0.7.
  assert squad("กรุงเทพ", "กรุงเทพมหานคร") == {"exact_match": 0.0, "f1": 0.0}
  assert multi("กรุงเทพ", "กรุงเทพมหานคร", "th")["f1_multilingual"] == pytest.approx(
      70.0)


def test_russian():
  # Lowercasing folds Cyrillic; guillemets are not ASCII punctuation.
  assert squad("Москва", "МОСКВА")["exact_match"] == 100.0
  assert squad("Москва", "«Москва»")["exact_match"] == 0.0
  assert multi("Москва", "«Москва»", "ru")["exact_match_multilingual"] == 100.0
  # "город Москва" for "Москва": P 1/2, R 1 -> F1 2/3.
  assert squad("Москва", "город Москва")["f1"] == pytest.approx(100 * 2 / 3)


def test_composed_and_decomposed_accents():
  composed, decomposed = "caf\u00e9", "cafe\u0301"
  assert squad(composed, decomposed)["exact_match"] == 0.0
  assert multi(composed, decomposed, "fr")["exact_match_multilingual"] == 100.0


def test_best_gold_answer_and_mean_over_examples():
  result = qa_metrics.squad_metrics(
      [["Denver Broncos", "Broncos"], "Carolina Panthers"],
      ["Broncos", "the Panthers"])
  # Example 1: exact match with the second gold. Example 2: P 1, R 1/2 -> 2/3.
  assert result["exact_match"] == 50.0
  assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_empty_prediction_scores_zero_and_bad_input_raises():
  assert squad("Paris", "") == {"exact_match": 0.0, "f1": 0.0}
  with pytest.raises(ValueError, match="no gold answer"):
    qa_metrics.squad_metrics([[]], ["Paris"])
  with pytest.raises(ValueError, match="1 targets but 2 predictions"):
    qa_metrics.squad_metrics([["a"]], ["a", "b"])
  with pytest.raises(ValueError, match="no predictions"):
    multilingual("en")([], [])


def test_classification_accuracy():
  assert metrics.accuracy(["0", "1", "2", "0"], ["0", "2", "2", "1"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["0", "1"], ["0"])
