"""Behaviour of Text2ImageTransformer on the tiny preset (the diffusers comparison is separate)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.transformer import Text2ImageTransformer, count_params, transformer_preset

FIELDS = transformer_preset("tiny")
K, N, D_TEXT = FIELDS["num_classes"], FIELDS["height"] * FIELDS["width"], FIELDS["cross_attention_dim"]
B, L = 3, 6
LOGICAL_AXES = {"embed", "heads", "kv", "mlp", "vocab", "text_embed", "timestep", "length", "norm",
                None}


def _inputs(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x_t = jax.random.randint(k1, (B, N), 0, K + 1)
  t = jax.random.randint(k2, (B,), 0, FIELDS["num_embeds_ada_norm"])
  text = jax.random.normal(k3, (B, L, D_TEXT))
  return x_t, t, text


def random_params(model, seed=42, scale=0.2):
  """Boxed variables from ``eval_shape`` (no init compile, which is slow on CPU) and random params.

  Every parameter gets nonzero random values: zero biases would let some checks pass trivially.
  """
  variables = jax.eval_shape(model.init, jax.random.key(0), *_inputs())
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype),
                                  nn.meta.unbox(variables["params"]))
  return variables, params


@pytest.fixture(scope="module")
def model_and_params():
  model = Text2ImageTransformer(**FIELDS)
  variables, params = random_params(model)
  return model, variables, params


def test_shapes_and_normalisation(model_and_params):
  model, _, params = model_and_params
  log_p = model.apply({"params": params}, *_inputs())
  assert log_p.shape == (B, N, K) and log_p.dtype == jnp.float32
  np.testing.assert_allclose(jax.nn.logsumexp(log_p, axis=-1), 0.0, atol=1e-5)
  assert bool(jnp.all(log_p <= 0))


def test_every_param_has_logical_axis_names(model_and_params):
  _, variables, _ = model_and_params
  boxed = jax.tree_util.tree_leaves(variables["params"],
                                    is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) for x in boxed)
  for x in boxed:
    assert len(x.names) == x.value.ndim and set(x.names) <= LOGICAL_AXES, x.names


def test_per_sample_timesteps_equal_rows_run_alone(model_and_params):
  model, _, params = model_and_params
  x_t, _, text = _inputs()
  t = jnp.array([0, 37, 99])
  batched = model.apply({"params": params}, x_t, t, text)
  for i in range(B):
    alone = model.apply({"params": params}, x_t[i:i + 1], t[i:i + 1], text[i:i + 1])
    np.testing.assert_allclose(batched[i], alone[0], atol=1e-5)
  # ... and the timestep matters (otherwise the check above would be vacuous).
  other = model.apply({"params": params}, x_t, jnp.array([5, 5, 5]), text)
  assert float(jnp.abs(other - batched).max()) > 1e-3


def test_padded_text_keys_have_no_influence(model_and_params):
  model, _, params = model_and_params
  x_t, t, text = _inputs()
  lengths = jnp.array([2, 6, 4])
  mask = jnp.arange(L)[None, :] < lengths[:, None]
  garbage = jnp.where(mask[..., None], text, 100.0 * jax.random.normal(jax.random.key(3), text.shape))
  ref = model.apply({"params": params}, x_t, t, text, mask)
  np.testing.assert_allclose(model.apply({"params": params}, x_t, t, garbage, mask), ref, atol=1e-5)
  # Same as attending over only the real tokens of each row.
  for i, n in enumerate(lengths.tolist()):
    alone = model.apply({"params": params}, x_t[i:i + 1], t[i:i + 1], text[i:i + 1, :n])
    np.testing.assert_allclose(ref[i], alone[0], atol=1e-5)
  unmasked = model.apply({"params": params}, x_t, t, garbage)
  assert float(jnp.abs(unmasked - ref).max()) > 1e-3


def test_bias_of_minus_1e9_equals_removing_the_key(model_and_params):
  model, _, params = model_and_params
  x_t, t, text = _inputs()
  removed = 2
  bias = jnp.zeros((1, 1, N, L)).at[..., removed].set(-1e9)
  with_bias = model.apply({"params": params}, x_t, t, text, cross_attention_bias=bias)
  without_key = model.apply({"params": params}, x_t, t, jnp.delete(text, removed, axis=1))
  np.testing.assert_allclose(with_bias, without_key, atol=1e-5)
  # A per-head, per-batch bias shape is accepted too, and a bias does change the output.
  small = 0.5 * jax.random.normal(jax.random.key(5), (B, FIELDS["num_heads"], N, L))
  changed = model.apply({"params": params}, x_t, t, text, cross_attention_bias=small)
  assert float(jnp.abs(changed - model.apply({"params": params}, x_t, t, text)).max()) > 1e-4


def test_row_with_all_text_masked_attends_to_nothing(model_and_params):
  model, _, params = model_and_params
  x_t, t, text = _inputs()
  mask = jnp.ones((B, L), bool).at[1].set(False)
  out = model.apply({"params": params}, x_t, t, text, mask)
  assert bool(jnp.all(jnp.isfinite(out)))
  # Attending to nothing leaves only attn2's output bias: the same as zeroing its output kernel.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "attn2" in str(path) and "to_out_0" in str(path)
      and "kernel" in str(path) else x, params)
  expected = model.apply({"params": zeroed}, x_t[1:2], t[1:2], text[1:2])
  np.testing.assert_allclose(out[1], expected[0], atol=1e-5)


def test_remat_matches_plain_forward_and_gradients():
  fields = {**FIELDS, "num_layers": 1}
  _, params = random_params(Text2ImageTransformer(**fields))
  x_t, t, text = _inputs()
  def loss(p, remat):
    return Text2ImageTransformer(**fields, remat=remat).apply({"params": p}, x_t, t, text).mean()
  # One jit for both gradients: compiling is the slow part on CPU.
  g_plain, g_remat = jax.jit(lambda p: (jax.grad(loss)(p, False), jax.grad(loss)(p, True)))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_plain, g_remat)


def test_dropout_is_active_only_when_not_deterministic(model_and_params):
  _, _, params = model_and_params
  x_t, t, text = _inputs()
  dropping = Text2ImageTransformer(**{**FIELDS, "dropout": 0.5})
  plain = Text2ImageTransformer(**FIELDS).apply({"params": params}, x_t, t, text)
  np.testing.assert_allclose(dropping.apply({"params": params}, x_t, t, text), plain, atol=1e-6)
  noisy = dropping.apply({"params": params}, x_t, t, text, deterministic=False,
                         rngs={"dropout": jax.random.key(0)})
  assert float(jnp.abs(noisy - plain).max()) > 1e-3


def test_bfloat16_compute_still_returns_normalised_float32(model_and_params):
  _, _, params = model_and_params
  out = Text2ImageTransformer(**FIELDS, dtype=jnp.bfloat16).apply({"params": params}, *_inputs())
  ref = Text2ImageTransformer(**FIELDS).apply({"params": params}, *_inputs())
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-4)
  assert float(jnp.abs(jnp.exp(out) - jnp.exp(ref)).max()) < 0.05


def test_bad_inputs_raise_clear_errors(model_and_params):
  model, _, params = model_and_params
  x_t, t, text = _inputs()
  with pytest.raises(ValueError, match="x_t must be"):
    model.apply({"params": params}, x_t[:, :-1], t, text)
  with pytest.raises(ValueError, match="cross_attention_dim"):
    model.apply({"params": params}, x_t, t, text[..., :-1])
  with pytest.raises(ValueError, match="t must be"):
    model.apply({"params": params}, x_t, t[:2], text)
  with pytest.raises(ValueError, match="cross_attention_bias"):
    model.apply({"params": params}, x_t, t, text, cross_attention_bias=jnp.zeros((1, 1, N, L + 1)))


def _closed_form_count(num_classes, height, width, num_layers, num_heads, head_dim,
                       cross_attention_dim, num_embeds_ada_norm, mlp_ratio, **_):
  """Parameters counted by hand from the diffusers layout (vq-diffusion-reference.md §4.4)."""
  d, c, hidden = num_heads * head_dim, cross_attention_dim, mlp_ratio * num_heads * head_dim
  ada_norm = num_embeds_ada_norm * d + d * 2 * d + 2 * d
  self_attn = 4 * (d * d + d)
  cross_attn = 2 * (d * d + d) + 2 * (c * d + d)
  mlp = d * hidden + hidden + hidden * d + d
  block = 2 * ada_norm + self_attn + cross_attn + 2 * d + mlp
  embeddings = (num_classes + 1 + height + width) * d
  head = 2 * d + d * num_classes + num_classes
  return embeddings + num_layers * block + head


@pytest.mark.parametrize("name", ["tiny", "S", "B", "ithq"])
def test_param_counts_match_the_checkpoint_layout(name):
  fields = transformer_preset(name)
  assert count_params(fields) == _closed_form_count(**fields)


def test_ithq_and_b_sizes_match_the_published_models():
  # ITHQ: 1359M parameters, consistent with the 5.44 GB fp32 hub checkpoint; B: 388.8M from its config.
  assert abs(count_params(transformer_preset("ithq")) / 1359e6 - 1) < 1e-3
  assert abs(count_params(transformer_preset("B")) / 388.8e6 - 1) < 1e-3


def test_preset_rejects_unknown_names():
  with pytest.raises(ValueError, match="Unknown transformer preset"):
    transformer_preset("XL")
  with pytest.raises(ValueError, match="Unknown Text2ImageTransformer fields"):
    transformer_preset("tiny", num_layer=3)


def test_sincos_position_init_is_the_2d_sincos_embedding():
  # Closed form: row r of the summed table is [sin(r w_i), cos(r w_i), sin(c w_i), cos(c w_i)]
  # with w_i = 10000^(-i/(D/4)), scaled to RMS 0.02 per half; "normal" keeps the official init.
  fields = dict(FIELDS, position_init="sincos")
  model = Text2ImageTransformer(**fields)
  params = nn.meta.unbox(model.init(jax.random.key(0), *_inputs())["params"])
  emb = params["latent_image_embedding"]
  d = FIELDS["num_heads"] * FIELDS["head_dim"]
  q = d // 4
  w = 10_000.0 ** (-np.arange(q) / q)
  scale = 0.02 * np.sqrt(2.0)
  for name, half, n in (("height_emb", 0, FIELDS["height"]), ("width_emb", 1, FIELDS["width"])):
    table = np.asarray(emb[name]["embedding"])
    expected = np.zeros((n, d))
    pos = np.arange(n)[:, None] * w[None]
    expected[:, half * 2 * q: half * 2 * q + q] = scale * np.sin(pos)
    expected[:, half * 2 * q + q: half * 2 * q + 2 * q] = scale * np.cos(pos)
    np.testing.assert_allclose(table, expected, atol=1e-7)
  normal = nn.meta.unbox(Text2ImageTransformer(**FIELDS).init(jax.random.key(0), *_inputs())[
      "params"])["latent_image_embedding"]["height_emb"]["embedding"]
  assert 0.01 < float(jnp.std(normal)) < 0.03 and float(jnp.abs(normal[0, 0])) > 0
  with pytest.raises(ValueError, match="position_init"):
    Text2ImageTransformer(**dict(FIELDS, position_init="rope")).init(jax.random.key(0), *_inputs())


def test_blocked_attention_equals_the_materialised_softmax():
  # Independent truth: float64 numpy softmax(QK^T / sqrt(d)) V over all keys at once.
  from vqd_jax.layers import attention  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 512, 3, 8)) for _ in range(3))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
  as32 = lambda x: jnp.asarray(x, jnp.float32)
  blocked = attention.blocked_attention(as32(q), as32(k), as32(v), key_block=128, query_block=256)
  np.testing.assert_allclose(np.asarray(blocked), expected, atol=2e-5)
  # The dispatcher takes the blocked path here (CPU, 512 keys, no mask) and the plain one with a
  # mask; both agree with the truth.
  assert attention._use_blocked(q, k, None, None) == (jax.default_backend() == "cpu")  # pylint: disable=protected-access
  plain = attention.dot_product_attention(as32(q), as32(k), as32(v),
                                          key_mask=jnp.ones((2, 512), bool))
  np.testing.assert_allclose(np.asarray(plain), expected, atol=2e-5)
  with pytest.raises(ValueError, match="Nq % 256"):
    attention.blocked_attention(as32(q[:, :100]), as32(k), as32(v))
