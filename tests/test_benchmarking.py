import numpy as np

from mrt5_jax import benchmarking
from mrt5_jax.config import preset


def test_flop_model_matches_hand_count():
  cfg = preset("tiny", d_model=4, d_ff=6, num_heads=1, head_dim=2, num_encoder_layers=3,
               num_decoder_layers=1, delete_gate_layer=1)
  per_layer = lambda n: 4 * n * 4 * 2 * 2 + 2 * n * n * 2 * 2 + 3 * n * 4 * 6 * 2
  assert benchmarking.layer_flops(10, cfg) == per_layer(10)
  assert benchmarking.encoder_flops(cfg, 10) == 3 * per_layer(10)
  assert benchmarking.encoder_flops(cfg, 10, kept=5) == per_layer(10) + 2 * per_layer(5)
  assert benchmarking.ideal_speedup(cfg, 10, 5) == 3 * per_layer(10) / (
      per_layer(10) + 2 * per_layer(5))
  assert benchmarking.ideal_speedup(cfg, 10, 10, target_length=3) == 1.0


def test_benchmark_runs_end_to_end_on_a_short_input(monkeypatch):
  monkeypatch.setattr(benchmarking, "CPU_BENCH_SIZE",
                      dict(d_model=32, d_ff=64, num_heads=2, head_dim=16,
                           num_encoder_layers=4, num_decoder_layers=1))
  lines = []
  result = benchmarking.run_inference_benchmark("cpu", rates=(0.5,), length=256,
                                                target_length=16, batch=2, repeats=1,
                                                log=lines.append)
  (rate,) = result["rates"]
  assert rate["compacted_length"] == 128
  assert 0.5 <= rate["measured_deletion_rate"] < 0.6
  assert np.isfinite(rate["encoder_speedup"]) and rate["encoder_ideal_speedup"] > 1
  assert any("rate 0.50" in line for line in lines)
