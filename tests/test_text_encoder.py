"""TextEncoder and drop_captions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.text import TextEncoder, caption_drop_mask, drop_captions

VOCAB, MAX_LEN, WIDTH = 20, 7, 16
LOGICAL_AXES = {"embed", "heads", "kv", "mlp", "vocab", "text_embed", "timestep", "length", "norm",
                None}


@pytest.fixture(scope="module")
def encoder_and_params():
  encoder = TextEncoder(vocab_size=VOCAB, max_length=MAX_LEN, width=WIDTH, num_layers=2, num_heads=2)
  boxed = jax.eval_shape(encoder.init_params, jax.random.key(0))
  # Random values for every parameter (nonzero biases/norms), from numpy: init compiles slowly on CPU.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype),
                                  nn.meta.unbox(boxed))
  return encoder, boxed, params


def _ids():
  ids = jnp.array([[2, 5, 9, 3, 0, 0, 0], [2, 7, 8, 11, 4, 6, 3]], jnp.int32)
  return ids, ids != 0


def test_shapes_and_logical_axes(encoder_and_params):
  encoder, boxed, params = encoder_and_params
  ids, mask = _ids()
  states = encoder.apply({"params": params}, ids, mask)
  assert states.shape == (2, MAX_LEN, WIDTH) and states.dtype == jnp.float32
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape)
             and set(x.names) <= LOGICAL_AXES for x in leaves)


def test_padding_has_no_influence_on_real_tokens(encoder_and_params):
  encoder, _, params = encoder_and_params
  ids, mask = _ids()
  states = encoder.apply({"params": params}, ids, mask)
  changed = encoder.apply({"params": params}, jnp.where(mask, ids, 17), mask)
  np.testing.assert_allclose(changed[0, :4], states[0, :4], atol=1e-5)
  # Independent truth: the unpadded sequence alone gives the same states at the real positions.
  alone = encoder.apply({"params": params}, ids[:1, :4], mask[:1, :4])
  np.testing.assert_allclose(alone[0], states[0, :4], atol=1e-5)
  # Without the mask the padding does leak in.
  unmasked = encoder.apply({"params": params}, jnp.where(mask, ids, 17), None)
  assert float(jnp.abs(unmasked[0, :4] - states[0, :4]).max()) > 1e-3


def test_attention_is_bidirectional(encoder_and_params):
  encoder, _, params = encoder_and_params
  ids, mask = _ids()
  states = encoder.apply({"params": params}, ids, mask)
  later_changed = encoder.apply({"params": params}, ids.at[1, 5].set(13), mask)
  assert float(jnp.abs(later_changed[1, 0] - states[1, 0]).max()) > 1e-3


def test_too_long_ids_raise(encoder_and_params):
  encoder, _, params = encoder_and_params
  with pytest.raises(ValueError, match="length <= 7"):
    encoder.apply({"params": params}, jnp.zeros((1, MAX_LEN + 1), jnp.int32))


def test_drop_captions_replaces_exactly_the_chosen_rows():
  key = jax.random.key(4)
  batch = 64
  rng = np.random.default_rng(1)
  states = jnp.asarray(rng.standard_normal((batch, MAX_LEN, WIDTH)), jnp.float32)
  mask = jnp.asarray(np.arange(MAX_LEN)[None] < rng.integers(1, MAX_LEN, (batch, 1)))
  null = jnp.asarray(rng.standard_normal((MAX_LEN, WIDTH)), jnp.float32)
  out, out_mask = drop_captions(key, states, mask, null, 0.3)
  dropped = np.asarray(caption_drop_mask(key, batch, 0.3))
  assert 0 < dropped.sum() < batch  # both kinds of rows are exercised
  np.testing.assert_array_equal(out[dropped], np.broadcast_to(null, (dropped.sum(), MAX_LEN, WIDTH)))
  assert np.asarray(out_mask)[dropped].all()
  np.testing.assert_array_equal(out[~dropped], states[~dropped])
  np.testing.assert_array_equal(out_mask[~dropped], mask[~dropped])
  # No mask in, no mask out; rates 0 and 1 drop nothing / everything.
  assert drop_captions(key, states, None, null, 0.3)[1] is None
  np.testing.assert_array_equal(drop_captions(key, states, mask, null, 0.0)[0], states)
  np.testing.assert_array_equal(drop_captions(key, states, mask, null, 1.0)[0],
                                np.broadcast_to(null, states.shape))


def test_drop_rate_is_the_expected_fraction():
  # Binomial(20000, 0.1): standard deviation of the fraction is 0.0021; allow 5 sigma.
  fraction = float(caption_drop_mask(jax.random.key(0), 20000, 0.1).mean())
  assert abs(fraction - 0.1) < 0.011


def test_drop_captions_checks_shapes_and_rate():
  states = jnp.zeros((2, MAX_LEN, WIDTH))
  with pytest.raises(ValueError, match="null_states must be"):
    drop_captions(jax.random.key(0), states, None, jnp.zeros((MAX_LEN + 1, WIDTH)), 0.1)
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    caption_drop_mask(jax.random.key(0), 2, 1.5)
