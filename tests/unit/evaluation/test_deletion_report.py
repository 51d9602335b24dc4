"""mrt5-inspect's report: the marks are exactly what hard deletion removes, characters
group whole, and the HTML opens without a network."""
import base64
import re

import jax
import numpy as np
import pytest

from mrt5_jax.evaluation import deletion_analysis as report
from mrt5_jax.reporting import deletion_html
from mrt5_jax.inference.encode_path import EncodePath
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
  page = deletion_html.sample_html(samples[0])
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
  assert deletion_html.render_plain(sample) == "h[él]lo"
  coloured = deletion_html.render_ansi(sample)
  assert f"{deletion_html.ANSI['deleted']}é{deletion_html.ANSI_RESET}" in coloured
  assert coloured.replace(deletion_html.ANSI["deleted"], "").replace(deletion_html.ANSI_RESET, "") == "héllo"
  partial = _sample("é".encode(), [1])
  assert deletion_html.render_plain(partial) == "{é}"


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
  page = deletion_html.render_html(samples, title="t", details={"checkpoint": "c"},
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
  from mrt5_jax.model.network import Transformer
  module = Transformer(tiny_config.replace(deletion_type="none"))
  with pytest.raises(ValueError, match="no delete gate"):
    report.read_samples(EncodePath(module), {}, [np.array([5, 1])], ["a"])


def test_right_to_left_rows_isolate_markers_and_wrap_between_words():
  """ar/ur rows are laid out right to left, EOS reads '</s>' (not mirrored), no break-all."""
  arabic = _sample("النهر واسع".encode(), [0], extra_ids=[1])
  arabic.label = "ar"
  page = deletion_html.sample_html(arabic)
  assert '<div class="sample" dir="rtl">' in page
  (eos,) = re.findall(r'<span class="special"[^>]*>&lt;/s&gt;</span>', page)
  assert 'dir="ltr"' in eos
  english = _sample(b"wide", [])
  assert '<div class="sample" dir="auto">' in deletion_html.sample_html(english)
  assert deletion_html.text_direction("ur") == "rtl"
  assert "break-all" not in deletion_html._STYLE
  assert "unicode-bidi: isolate" in deletion_html._STYLE


def test_language_chart_has_an_all_bar_and_the_target_line(monkeypatch):
  import matplotlib.axes
  samples = [_sample(b"abcd", [0, 1]), _sample(b"ab", [])]
  samples[1].label = "y"
  summary = report.summarize(samples)
  labels, byte_rates, _ = deletion_html.label_rate_bars(summary)
  assert labels == ["x", "y", "all"]
  assert byte_rates == [0.5, 0.0, pytest.approx(2 / 6)]
  lines = []
  original = matplotlib.axes.Axes.axhline
  monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                      lambda self, y=0, *a, **k: lines.append(y) or original(self, y, *a, **k))
  deletion_html.plot_label_rates(summary, target=0.4)
  assert lines == [0.4]
  page = deletion_html.render_html(samples, title="t", details={}, threshold=-15.0,
                                   scale=-30.0, target=0.4)
  assert "<tr><th class='l'>target rate</th><td class='l'>0.4</td></tr>" in page
  assert "<tr><th class='l'>all</th><td>2</td><td>6</td><td>0.333</td>" in page


def test_pooling_models_say_pooled_not_deleted(tmp_path, capsys):
  """mrt5-inspect on a CP checkpoint: positions are pooled, the target is its length reduction."""
  from mrt5_jax.checkpointing import writer
  from mrt5_jax.cli import inspect as inspect_cli
  from mrt5_jax.model.config import preset
  from mrt5_jax.model.network import Transformer
  config = preset("tiny", deletion_type="conv", delete_gate_layer=1, shortening=dict(rate=4))
  tokens = np.full((1, 8), 5, np.int32)
  params = Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                    enable_dropout=False)["params"]
  model_dir = tmp_path / "cp"
  writer.save_params_checkpoint(str(model_dir), params, config, step=1)
  html_path = tmp_path / "report.html"
  assert inspect_cli.main([f"--gin.inspect_deletion.model_dir={model_dir}",
                           "--gin.inspect_deletion.texts=['a river, wide and slow']",
                           f"--gin.inspect_deletion.html_path={html_path}"]) == 0
  out = capsys.readouterr().out
  assert "legend: [pooled]  {partly pooled}  kept" in out
  assert "% pooled):" in out and "bytes poo" in out and "deleted" not in out
  page = html_path.read_text(encoding="utf-8")
  assert "Pooling rate per language" in page and "bytes pooled" in page
  assert "hard deletion removes" not in page and "bytes deleted" not in page
  assert "<tr><th class='l'>target rate</th><td class='l'>0.75</td></tr>" in page
