"""The shortening interface: a new method is one class, one registry entry and its
settings entry."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.inference.encode_path import EncodePath
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.shortening import base, registry, settings
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
  monkeypatch.setitem(settings.SETTINGS_FOR_KIND, EveryOther.name, None)
  config = model_config("network", deletion_type=EveryOther.name)
  assert config.shortening is None and config.gate_layer == config.delete_gate_layer
  return config


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


def test_an_unknown_deletion_type_is_refused_when_the_config_is_built():
  with pytest.raises(ValueError, match="deletion_type must be one of"):
    model_config("network", deletion_type="no_such_method")
  with pytest.raises(ValueError, match="deletion_type must be one of"):
    registry.shortening_class("no_such_method")


def test_each_kind_nests_only_its_own_settings():
  for name in registry.DELETION_TYPES:
    config = model_config("network", deletion_type=name)
    expected = settings.SETTINGS_FOR_KIND.get(name)
    assert type(config.shortening) is (expected or type(None)), name
    assert MrT5Config.from_json(config.to_json()) == config
  gate = model_config("network").with_shortening(sigmoid_mask_scale=-8.0)
  assert (gate.deletion_threshold, gate.sigmoid_mask_scale) == (-4.0, -8.0)
  assert gate.replace(deletion_type="log_sigmoid").deletion_threshold == -5.0
  assert gate.replace(deletion_type="conv").shortening == settings.ConvPoolingConfig(rate=4)
  with pytest.raises(ValueError, match="takes DeleteGateConfig settings"):
    model_config("network", shortening=settings.ConvPoolingConfig())
  with pytest.raises(ValueError, match="takes no shortening settings"):
    model_config("network", deletion_type="none", shortening=dict(rate=4))
  with pytest.raises(ValueError, match="has no shortening settings"):
    model_config("network", deletion_type="none").with_shortening(rate=4)


def test_older_flat_model_configs_load_nested():
  """model_config.json files written while the settings were flat MrT5Config fields."""
  flat = {key: value for key, value in model_config("network").to_dict().items()
          if key != "shortening"}
  old_defaults = dict(sigmoid_mask_scale=-30.0, deletion_threshold=None, gate_layer_norm=True,
                      use_gumbel_noise=False, random_deletion_probability=0.5,
                      fixed_deletion_amount=0.5, bp_temperature=0.5, bp_prior=0.2,
                      bp_capacity_fraction=0.5, bp_sample_at_inference=False, cp_rate=4)
  gate = MrT5Config.from_dict({**flat, **old_defaults, "sigmoid_mask_scale": -10.0,
                               "use_gumbel_noise": True})
  assert gate.shortening == settings.DeleteGateConfig(
      sigmoid_mask_scale=-10.0, deletion_threshold=-5.0, use_gumbel_noise=True)
  bp = MrT5Config.from_dict({**flat, **old_defaults, "deletion_type": "boundary", "bp_prior": 0.3})
  assert bp.shortening == settings.BoundaryPoolingConfig(prior=0.3)
  cp = MrT5Config.from_dict({**flat, **old_defaults, "deletion_type": "conv", "cp_rate": 2})
  assert cp.shortening == settings.ConvPoolingConfig(rate=2)
  plain = MrT5Config.from_dict({**flat, **old_defaults, "deletion_type": "none"})
  assert plain.shortening is None and plain.gate_layer == plain.num_encoder_layers


def test_every_registered_kind_names_itself():
  for name, cls in registry.SHORTENINGS.items():
    assert cls.name == name
    kind = registry.shortening_for(model_config("network", deletion_type=name))
    assert kind.shortens == (name != "none")
    assert (kind.make_module() is None) == (kind.module_name is None)
