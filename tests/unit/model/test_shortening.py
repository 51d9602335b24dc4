"""The shortening interface: a new method is one class and one registry entry."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.inference.encode_path import EncodePath
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening import base, registry
from mrt5_jax.training import objective as objective_lib
from tests.fixtures import as_tuple, byte_batch, model_config


class Scale(nn.Module):
  """A one-parameter module, to see the new method own ``encoder/<module_name>``."""

  @nn.compact
  def __call__(self, hidden):
    return hidden * self.param("scale", nn.initializers.ones, (1,))


class EveryOther(base.Shortening):
  """Keeps the even positions: 'deleted' marks the odd ones; hard takes every other."""
  name = "every_other"
  module_name = "every_other"
  shortens = True
  hard_differs = True

  def make_module(self):
    return Scale()

  def read(self, host, module, hidden, tokens, segment_ids, deterministic):
    odd = (jnp.arange(tokens.shape[1]) % 2 == 1)[None, :]
    gate = jnp.where(odd | (tokens == 0), self.config.sigmoid_mask_scale, 0.0)
    return base.Reading(gate=gate.astype(jnp.float32), gate_logits=gate.astype(jnp.float32))

  def soft(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    return base.full_length(module(hidden), tokens, segment_ids, reading.gate)

  def hard(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(0, length, 2, dtype=jnp.int32), (batch, (length + 1) // 2))
    valid = tokens[:, ::2] > 0
    return base.Shortened(
        hidden=module(hidden)[:, ::2], positions=positions, valid=valid, segment_ids=None,
        kept_positions=positions, num_dropped=jnp.zeros((batch,), jnp.int32),
        key_bias=jnp.zeros(valid.shape, jnp.float32))

  def target_rate(self, controller_target):
    return 0.5


@pytest.fixture
def every_other(monkeypatch):
  monkeypatch.setitem(registry.SHORTENINGS, EveryOther.name, EveryOther)
  return model_config("network", deletion_type=EveryOther.name)


def test_a_registered_shortening_runs_in_the_network_loss_and_inference(every_other):
  batch = byte_batch(batch=2, length=12, pad_from=(None, 7))
  enc, dec_in, tgt = (jnp.asarray(x) for x in as_tuple(batch))
  module = Transformer(every_other)
  assert isinstance(module.shortening, EveryOther)
  params = module.init(jax.random.PRNGKey(0), enc, dec_in, tgt, enable_dropout=False)["params"]
  assert set(params["encoder"]["every_other"]) == {"scale"} and "delete_gate" not in params["encoder"]
  _, soft = module.apply({"params": params}, enc, dec_in, tgt, enable_dropout=False,
                         return_aux=True)
  _, hard = module.apply({"params": params}, enc, dec_in, tgt, enable_dropout=False,
                         deletion="hard", return_aux=True)
  assert soft.encoded.shape[1] == 12 and hard.encoded.shape[1] == 6
  np.testing.assert_array_equal(np.asarray(hard.kept_positions[0]), [0, 2, 4, 6, 8, 10])
  np.testing.assert_array_equal(np.asarray(hard.mask[1]), [1, 1, 1, 1, 0, 0])

  controller = controller_lib.ControllerConfig()
  state = controller_lib.init_state(controller)
  _, sums = objective_lib.compute_loss(
      module, params, state, {k: jnp.asarray(v) for k, v in batch.items()}, None,
      objective=objective_lib.ObjectiveConfig(), controller=controller, enable_dropout=False)
  # 'deleted' is what the method says: the odd real positions (6 of 12, 3 of 7)
  assert float(sums["num_deleted"]) == 9.0 and float(sums["num_real"]) == 19.0
  assert float(sums["gate_loss"]) == 0.0  # the base class has no auxiliary loss

  path = EncodePath(module)
  out = path.encode(params, enc, mode="bucketed")
  assert out.encoded.shape[1] == 6


def test_an_unknown_deletion_type_is_refused_when_the_encoder_is_built():
  config = model_config("network", deletion_type="no_such_method")
  with pytest.raises(ValueError, match="deletion_type must be one of"):
    registry.shortening_for(config)


def test_every_registered_kind_names_itself():
  for name, cls in registry.SHORTENINGS.items():
    assert cls.name == name
    kind = registry.shortening_for(model_config("network", deletion_type=name))
    assert kind.shortens == (name != "none")
    assert (kind.make_module() is None) == (kind.module_name is None)
