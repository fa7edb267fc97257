"""The Conditioner: encoding, the null rows, guidance's row stacking, dropout and freezing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.text import (SPECIAL_TOKENS, Conditioner, Conditioning, TextEncoder, WordTokenizer,
                          drop_captions, stack_rows)

MAX_LEN, WIDTH = 6, 16


@pytest.fixture(scope="module")
def conditioner_and_params():
  tokenizer = WordTokenizer(list(SPECIAL_TOKENS) + ["red", "blue", "cat", "dog"], MAX_LEN)
  encoder = TextEncoder(vocab_size=tokenizer.vocab_size, max_length=MAX_LEN, width=WIDTH,
                        num_layers=1, num_heads=2)
  cond = Conditioner(tokenizer, encoder)
  ids, mask = cond.tokenize(["red cat", "blue dog"])
  params = cond.init(jax.random.key(0), jax.random.key(1), ids, mask)
  return cond, params, nn.meta.unbox(params)


def test_encode_reads_the_prompt_and_never_the_padding(conditioner_and_params):
  cond, _, params = conditioner_and_params
  ids, mask = cond.tokenize(["red cat", "blue dog dog"])
  assert ids.shape == mask.shape == (2, MAX_LEN) and mask.sum(1).tolist() == [4, 5]
  out = cond.encode(params, ids, mask)
  np.testing.assert_array_equal(out.mask, mask)
  assert out.pooled is None and out.states.shape == (2, MAX_LEN, WIDTH)
  # Other ids in the padding leave every real position's state unchanged; another word does not.
  noisy_padding = np.where(np.asarray(mask), np.asarray(ids), 5)
  again = cond.encode(params, jnp.asarray(noisy_padding), mask)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(again.states)[real], np.asarray(out.states)[real],
                             atol=1e-6)
  other_word = np.asarray(ids).copy()
  other_word[0, 1] = ids[1, 1]  # "red" -> "blue"
  changed = cond.encode(params, jnp.asarray(other_word), mask)
  assert np.abs(np.asarray(changed.states)[0, 2] - np.asarray(out.states)[0, 2]).max() > 1e-3


def test_null_is_the_learned_embedding_on_every_row(conditioner_and_params):
  cond, boxed, params = conditioner_and_params
  box = boxed["null_embedding"]
  assert isinstance(box, nn.Partitioned) and box.names == ("length", "text_embed")
  assert box.value.shape == (MAX_LEN, WIDTH)
  null = cond.null(params, 3)
  assert null.states.shape == (3, MAX_LEN, WIDTH) and bool(null.mask.all())
  np.testing.assert_array_equal(null.states[2], params["null_embedding"])


def test_guidance_rows_are_null_then_prompts():
  states = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  prompts = Conditioning(states, jnp.array([[True, True, False], [True, False, False]]))
  null = Conditioning(-states, None)
  both = stack_rows(null, prompts)
  np.testing.assert_array_equal(both.states, np.concatenate([-states, states]))
  # A null without a mask attends everywhere; the prompts keep theirs.
  np.testing.assert_array_equal(both.mask, np.concatenate([np.ones((2, 3), bool), prompts.mask]))
  assert stack_rows(Conditioning(states), Conditioning(states)).mask is None


def test_drop_swaps_in_the_null_like_drop_captions(conditioner_and_params):
  cond, _, params = conditioner_and_params
  ids, mask = cond.tokenize(["red cat"] * 32)
  encoded = cond.encode(params, ids, mask)
  null = cond.null(params, 32)
  dropped = cond.drop(jax.random.key(5), encoded, null, 0.5)
  states, out_mask = drop_captions(jax.random.key(5), encoded.states, encoded.mask,
                                   params["null_embedding"], 0.5)
  np.testing.assert_array_equal(dropped.states, states)
  np.testing.assert_array_equal(dropped.mask, out_mask)
  rows = np.asarray((dropped.states == null.states).all(axis=(1, 2)))
  assert 0 < rows.sum() < 32


def test_a_frozen_encoder_gets_no_gradient(conditioner_and_params):
  cond, _, params = conditioner_and_params
  frozen = Conditioner(cond.tokenizer, cond.encoder, trainable=False)
  ids, mask = cond.tokenize(["red cat"])

  def loss(p, conditioner):
    return conditioner.encode(p, ids, mask).states.sum()

  trained = jax.grad(loss)(params, cond)["text_encoder"]
  still = jax.grad(loss)(params, frozen)["text_encoder"]
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(trained)) > 0
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(still)) == 0
  labels = frozen.trainable_labels(params)
  assert set(jax.tree.leaves(labels["text_encoder"])) == {"freeze"}
  assert jax.tree.leaves(labels["null_embedding"]) == ["train"]


def test_unknown_source_and_missing_null_are_clear_errors(conditioner_and_params):
  cond, _, params = conditioner_and_params
  with pytest.raises(ValueError, match="choose one of"):
    Conditioner(cond.tokenizer, cond.encoder, source="t5")
  with pytest.raises(ValueError, match="guidance_scale=1"):
    cond.null({"text_encoder": params["text_encoder"]}, 2)
