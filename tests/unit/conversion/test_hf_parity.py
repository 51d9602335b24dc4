"""Our network against Hugging Face's T5ForConditionalGeneration (ByT5 shape)."""
import jax
import numpy as np
import pytest

from mrt5_jax.conversion.mapping import hf_state_dict_to_jax
from mrt5_jax.model.network import Transformer
from tests.fixtures import as_tuple, byte_batch, model_config as tiny_config


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

jax.config.update("jax_default_matmul_precision", "highest")


def byt5_shaped_hf_model(cfg, seed=0):
  hf_config = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.copy_(torch.randn_like(param) * 0.5)
  return model


@pytest.mark.parametrize("length", [24, 300])
def test_logits_match_hugging_face_t5(length):
  cfg = tiny_config(deletion_type="none")
  enc, dec_in, tgt = as_tuple(byte_batch(length=length, pad_from=(None, length - 7, 5)))
  model = byt5_shaped_hf_model(cfg)
  state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = hf_state_dict_to_jax(state_dict, cfg)
  ours = np.asarray(Transformer(cfg).apply({"params": params}, enc, dec_in, tgt,
                                           enable_dropout=False))
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(enc).long(),
                   attention_mask=torch.from_numpy(enc > 0).long(),
                   decoder_input_ids=torch.from_numpy(dec_in).long(),
                   decoder_attention_mask=torch.from_numpy(tgt > 0).long()).logits.numpy()
  real = tgt > 0
  assert np.abs(theirs[real]).max() > 1.0
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
