"""mrt5-inspect's report: the marks are exactly what hard deletion removes, characters
group whole, and the HTML opens without a network."""
import base64
import re

import jax
import numpy as np
import pytest

from mrt5_jax import deletion_report as report
from mrt5_jax.hard_deletion import EncodePath
from tests.fixtures import byte_batch


def _with_bias(params, bias):
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["encoder"]["delete_gate"]["dense"]["bias"] = (
      params["encoder"]["delete_gate"]["dense"]["bias"] * 0 + bias)
  return params


def _rows(batch):
  tokens = batch["encoder_input_tokens"]
  return [row[row > 0] for row in tokens]


def _removed_by_hard_deletion(path, params, rows):
  """Real positions absent from the hard encode's kept_positions, row by row."""
  tokens = report._pad(rows, 8)
  out = path.encode(params, tokens, mode="bucketed")
  kept = np.asarray(out.kept_positions)
  valid = np.asarray(out.mask) > 0
  removed = []
  for i, row in enumerate(rows):
    present = set(kept[i][valid[i]].tolist())
    removed.append(set(range(len(row))) - present)
  return removed


@pytest.mark.parametrize("bias", [-0.5, -1000.0])
def test_marks_are_exactly_the_positions_hard_deletion_removes(tiny_model, bias):
  module, variables = tiny_model
  params = _with_bias(variables["params"], bias)
  path = EncodePath(module)
  rows = _rows(byte_batch(batch=5, length=40, seed=3, pad_from=(None, 31, 9, 2, 17)))
  samples = report.read_samples(path, params, rows, ["a"] * len(rows), batch_size=2)
  removed = _removed_by_hard_deletion(path, params, rows)
  assert sum(len(r) for r in removed) > 0
  for sample, expected in zip(samples, removed):
    assert set(np.nonzero(sample.deleted)[0].tolist()) == expected
    assert report.deleted_positions(report.pieces(sample)) == expected
    if bias == -1000.0:  # nothing passes: hard deletion keeps one position per row
      assert len(expected) == len(sample.tokens) - 1
  page = report.sample_html(samples[0])
  marked = set()
  for start, marks in re.findall(r'data-pos="(\d+)" data-deleted="([x.]+)"', page):
    marked |= {int(start) + k for k, mark in enumerate(marks) if mark == "x"}
  assert marked == removed[0]


def _sample(text_bytes: bytes, deleted_positions, extra_ids=()):
  tokens = np.array([b + 3 for b in text_bytes] + list(extra_ids), np.int32)
  deleted = np.zeros(len(tokens), bool)
  deleted[list(deleted_positions)] = True
  return report.Sample("x", tokens, np.zeros(len(tokens), np.float32), deleted)


def test_multibyte_characters_group_whole_and_count_deleted_only_when_all_bytes_are():
  text = "aé中😀".encode()          # 1 + 2 + 3 + 4 bytes
  # 'a' kept; 'é' fully deleted; '中' one of three bytes deleted; '😀' all deleted; EOS deleted
  sample = _sample(text, [1, 2, 4, 6, 7, 8, 9, 10], extra_ids=[1])
  parts = report.pieces(sample)
  assert [p.text for p in parts] == ["a", "é", "中", "😀", "</s>"]
  assert [p.start for p in parts] == [0, 1, 3, 6, 10]
  assert [p.status for p in parts] == ["kept", "deleted", "partial", "deleted", "deleted"]
  summary = report.summarize([sample])
  entry = summary["per_label"]["x"]
  assert entry["bytes"] == 11 and entry["deleted_bytes"] == 8
  assert entry["characters"] == 5 and entry["deleted_characters"] == 3
  assert entry["partly_deleted_characters"] == 1
  assert entry["character_deletion_rate"] == pytest.approx(3 / 5)
  by_id = {e["id"]: e for e in summary["per_byte"]}
  assert by_id[ord("a") + 3]["deleted"] == 0 and by_id[1]["deleted"] == 1
  assert "中" in by_id[0xE4 + 3]["in_characters"]


def test_invalid_utf8_sentinels_and_controls_show_as_such():
  # a lone continuation byte, a cut 3-byte character at the end, a newline, sentinel 258
  sample = _sample(b"\x80x\n", [0], extra_ids=[258, 0xE4 + 3, 0xB8 + 3])
  parts = report.pieces(sample)
  assert [p.text for p in parts] == ["\\x80", "x", "\u21b5", "<S0>", "\\xe4", "\\xb8"]
  assert [p.kind for p in parts] == ["invalid", "char", "char", "special", "invalid", "invalid"]
  assert report.deleted_positions(parts) == {0}


def test_terminal_renderings_mark_the_deleted_characters():
  sample = _sample("héllo".encode(), [1, 2, 3])      # 'é' (bytes 1-2) and the first 'l'
  assert report.render_plain(sample) == "h[él]lo"
  coloured = report.render_ansi(sample)
  assert f"{report.ANSI['deleted']}é{report.ANSI_RESET}" in coloured
  assert coloured.replace(report.ANSI["deleted"], "").replace(report.ANSI_RESET, "") == "héllo"
  partial = _sample("é".encode(), [1])
  assert report.render_plain(partial) == "{é}"


def test_encode_texts_cuts_and_ends_with_eos():
  (row,) = report.encode_texts(["abcdef"], max_length=4)
  assert row.tolist() == [ord("a") + 3, ord("b") + 3, ord("c") + 3, 1]
  with pytest.raises(ValueError, match="max_length"):
    report.encode_texts(["a"], max_length=1)


def test_html_is_self_contained_with_png_plots(tiny_model):
  module, variables = tiny_model
  params = _with_bias(variables["params"], -0.5)
  rows = report.encode_texts(["The river is wide.", "Река широкая.", "河水很宽。"], 64)
  samples = report.read_samples(EncodePath(module), params, rows, ["en", "ru", "zh"])
  page = report.render_html(samples, title="t", details={"checkpoint": "c"},
                            threshold=module.config.deletion_threshold,
                            scale=module.config.sigmoid_mask_scale)
  assert not re.search(r'(src|href)="(?!data:)', page)
  assert "http://" not in page and "https://" not in page and "@import" not in page
  images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
  assert len(images) == 3
  assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
  for label in ("en", "ru", "zh"):
    assert f"<td class='l'>{label}</td>" in page


def test_a_model_without_gate_is_refused(tiny_config):
  from mrt5_jax.network import Transformer
  module = Transformer(tiny_config.replace(deletion_type="none"))
  with pytest.raises(ValueError, match="no delete gate"):
    report.read_samples(EncodePath(module), {}, [np.array([5, 1])], ["a"])
