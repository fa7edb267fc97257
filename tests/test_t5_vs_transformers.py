"""T5 encoder + tokenizer: our Flax port against transformers' T5EncoderModel and T5Tokenizer.

Everything is built offline in tmp dirs: tiny random T5 models (v1.0 ReLU and v1.1 gated GELU)
saved with save_pretrained, next to a tiny Unigram tokenizer in T5's layout (<pad>=0, </s>=1,
<unk>=2) saved by transformers' own T5Tokenizer.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vqd_jax.interop.t5 import load_t5_encoder  # noqa: E402
from vqd_jax.text import T5EncoderConfig, T5TextEncoder, t5_config_from_hf  # noqa: E402
from vqd_jax.text.t5 import relative_position_buckets  # noqa: E402

WORDS = ("a", "photo", "of", "cat", "dog", "red", "big", "the", "on", "mat")
# Different lengths (the batch pads to the longest), an empty prompt (just </s>) and a word that
# the vocabulary spells letter by letter.
PROMPTS = ["a photo of a cat", "the big red dog on the mat", "", "zebra on a red mat"]
# The model's embedding rows; the tokenizer has fewer tokens (a real T5 has spare rows too).
VOCAB_SIZE = 64


def write_tiny_t5_tokenizer(directory):
  transformers = pytest.importorskip("transformers", reason="tokenizer needs transformers")
  pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
  pieces += [("▁" + w, -1.0 - 0.1 * i) for i, w in enumerate(WORDS)]
  pieces += [(w, -3.0) for w in WORDS] + [(c, -5.0) for c in "bcdefghijklnpqrsuvwxyz"]
  tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0)
  tokenizer.save_pretrained(str(directory))
  return tokenizer


def save_tiny_t5(directory, feed_forward_proj="relu", full=False, safe=True):
  """A random 2-layer T5 (d_model 32, d_kv 8, 4 heads, d_ff 64) plus tokenizer in ``directory``."""
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
      relative_attention_num_buckets=32, relative_attention_max_distance=20,
      feed_forward_proj=feed_forward_proj, decoder_start_token_id=0)
  cls = transformers.T5ForConditionalGeneration if full else transformers.T5EncoderModel
  model = cls(config).eval()
  with torch.no_grad():  # HF initialises the norms to ones; perturb them so they are tested.
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  if not safe:  # transformers >= 5 only writes safetensors: write the legacy torch file by hand
    os.remove(directory / "model.safetensors")
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
  write_tiny_t5_tokenizer(directory)
  return model


def hf_states(model, ids, mask):
  import torch  # pylint: disable=import-outside-toplevel
  encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
  with torch.no_grad():
    out = encoder(input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
                  attention_mask=torch.from_numpy(np.asarray(mask, np.int64)))
  return out.last_hidden_state.numpy()


def assert_close_at_tokens(states, mask, ref, atol):
  """Compares real (unmasked) positions only: HF's states at pad positions are not meaningful."""
  assert states.shape == ref.shape
  diff = np.abs(states - ref)[mask]
  assert diff.max() <= atol, f"max abs difference {diff.max():.2e} > {atol}"


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def t5_folder(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(f"t5_{request.param}")
  return directory, save_tiny_t5(directory, request.param)


# ------------------------------------------------------------------------------- pure functions


@pytest.mark.reference
@pytest.mark.parametrize("buckets,distance", [(32, 20), (32, 128), (64, 128), (16, 40)])
def test_relative_position_buckets_match_transformers(buckets, distance):
  torch = pytest.importorskip("torch", reason="reference needs PyTorch")
  modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  length = 300  # offsets -299..299: past max_distance in every case
  ref = modeling_t5.T5Attention._relative_position_bucket(
      torch.arange(length)[None, :] - torch.arange(length)[:, None], bidirectional=True,
      num_buckets=buckets, max_distance=distance).numpy()
  ours = relative_position_buckets(length, length, buckets, distance)
  np.testing.assert_array_equal(ours, ref)
  assert ours.min() == 0 and ours.max() == buckets - 1


def test_config_from_hf_dicts():
  cfg = t5_config_from_hf({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                           "d_model": 64, "d_kv": 16, "num_heads": 2, "num_decoder_layers": 9,
                           "feed_forward_proj": "gated-gelu", "decoder_start_token_id": 0})
  assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.gated, cfg.activation) == (
      64, 16, 2, True, "gelu_new")
  assert cfg.num_layers == 6 and cfg.vocab_size == 32128  # T5Config defaults (t5-small)
  assert t5_config_from_hf({}) == T5EncoderConfig()
  assert (T5EncoderConfig().gated, T5EncoderConfig().activation) == (False, "relu")
  mt5 = t5_config_from_hf({"model_type": "mt5", "feed_forward_proj": "gated-silu"})
  assert (mt5.gated, mt5.activation) == (True, "silu")
  with pytest.raises(ValueError, match="feed_forward_proj"):
    t5_config_from_hf({"feed_forward_proj": "gated-mish"})
  with pytest.raises(ValueError, match="feed_forward_proj"):
    T5EncoderConfig(feed_forward_proj="double-relu")
  with pytest.raises(ValueError, match="umt5"):
    t5_config_from_hf({"model_type": "umt5"})


# ------------------------------------------------------------------------ against transformers


@pytest.mark.reference
def test_encode_text_matches_hf_tokenizer_and_encoder(t5_folder):
  directory, model = t5_folder
  encoder = T5TextEncoder.from_pretrained(directory)
  assert (encoder.kind, encoder.width, encoder.pooled_width) == ("t5", 32, None)
  states, mask = encoder.encode_text(PROMPTS)
  ref_tok = write_tiny_t5_tokenizer(directory)(PROMPTS, padding="longest", return_tensors="np")
  ids, ref_mask = encoder.tokenizer(PROMPTS)
  np.testing.assert_array_equal(ids, ref_tok["input_ids"])
  np.testing.assert_array_equal(mask, ref_tok["attention_mask"].astype(bool))
  assert states.dtype == np.float32 and mask.dtype == bool and states.shape == (4, ids.shape[1], 32)
  assert mask[2].sum() == 1 and ids[2, 0] == 1  # "" -> just </s>
  assert_close_at_tokens(states, mask, hf_states(model, ids, ref_mask), atol=1e-4)
  assert not states[~mask].any()  # pad positions are zeroed
  # Padding never leaks into real tokens: a prompt alone gives the same states as in the batch.
  alone, alone_mask = encoder.encode_text([PROMPTS[0]])
  np.testing.assert_allclose(alone[0][alone_mask[0]], states[0][mask[0]], atol=1e-5)


@pytest.mark.reference
def test_max_length_truncates_as_the_tokenizer_does(t5_folder):
  directory, model = t5_folder
  encoder = T5TextEncoder.from_pretrained(directory, max_length=4)
  states, mask = encoder.encode_text(PROMPTS)
  ref = write_tiny_t5_tokenizer(directory)(PROMPTS, padding="longest", truncation=True,
                                           max_length=4, return_tensors="np")
  ids, _ = encoder.tokenizer(PROMPTS)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  assert ids.shape == (4, 4) and ids[0, -1] == 1  # cut prompts still end with </s>
  assert_close_at_tokens(states, mask, hf_states(model, ids, mask), atol=1e-4)


@pytest.mark.reference
def test_full_t5_folder_from_pytorch_bin(tmp_path):
  model = save_tiny_t5(tmp_path, "gated-gelu", full=True, safe=False)
  assert os.path.exists(tmp_path / "pytorch_model.bin")
  assert not os.path.exists(tmp_path / "model.safetensors")
  module, params = load_t5_encoder(tmp_path)  # decoder and lm_head keys are skipped
  assert module.config.gated and set(params) == {"shared", "encoder"}
  encoder = T5TextEncoder.from_pretrained(tmp_path)
  states, mask = encoder.encode_text(PROMPTS)
  ids, _ = encoder.tokenizer(PROMPTS)
  assert_close_at_tokens(states, mask, hf_states(model, ids, mask), atol=1e-4)


@pytest.mark.reference
def test_embed_tokens_key_stands_in_for_shared(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  model = save_tiny_t5(tmp_path, "relu")
  state = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
  state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
  safetensors_numpy.save_file(state, str(tmp_path / "model.safetensors"))
  encoder = T5TextEncoder.from_pretrained(tmp_path)
  states, mask = encoder.encode_text(PROMPTS[:2])
  ids, _ = encoder.tokenizer(PROMPTS[:2])
  assert_close_at_tokens(states, mask, hf_states(model, ids, mask), atol=1e-4)


@pytest.mark.reference
def test_bfloat16_is_close_to_float32(t5_folder):
  directory, model = t5_folder
  encoder = T5TextEncoder.from_pretrained(directory, dtype=jnp.bfloat16)
  assert encoder.module.dtype == jnp.bfloat16
  states, mask = encoder.encode_text(PROMPTS)
  ids, _ = encoder.tokenizer(PROMPTS)
  ref = hf_states(model, ids, mask)
  # bfloat16 keeps 8 significant bits: every matmul input is rounded by up to 2^-9 relative, and
  # two blocks of them leave a few percent of the states' scale (norms and softmax stay float32).
  scale = np.abs(ref[mask]).max()
  diff = np.abs(states - ref)[mask]
  assert np.isfinite(states).all() and diff.max() > 1e-4  # it did compute in bfloat16
  assert diff.max() < 0.03 * scale and diff.mean() < 0.004 * scale  # measured: 0.011, 0.0015
  # bfloat16 weights too (half the memory of a T5-XXL): as close.
  module, params = load_t5_encoder(directory, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  both = np.asarray(module.apply({"params": params}, ids, mask), np.float32)
  assert_close_at_tokens(both, mask, ref, atol=0.03 * scale)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.reference
def test_bad_prompts_and_folders_raise_clear_errors(t5_folder, tmp_path):
  directory, _ = t5_folder
  encoder = T5TextEncoder.from_pretrained(directory)
  with pytest.raises(ValueError, match="at least one prompt"):
    encoder.encode_text([])
  with pytest.raises(ValueError, match="strings"):
    encoder.encode_text(["a cat", 3])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    T5TextEncoder.from_pretrained(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_t5_encoder(tmp_path)
  config = json.loads((directory / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    load_t5_encoder(tmp_path)
  os.symlink(directory / "model.safetensors", tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    T5TextEncoder.from_pretrained(tmp_path)


@pytest.mark.reference
def test_weights_that_do_not_match_the_config_are_named(t5_folder, tmp_path):
  directory, _ = t5_folder
  os.symlink(directory / "model.safetensors", tmp_path / "model.safetensors")
  config = json.loads((directory / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
  with pytest.raises(ValueError, match="block_2"):
    load_t5_encoder(tmp_path)
  other = "relu" if config["feed_forward_proj"] != "relu" else "gated-gelu"
  (tmp_path / "config.json").write_text(json.dumps({**config, "feed_forward_proj": other}))
  with pytest.raises(ValueError, match="DenseReluDense"):
    load_t5_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "d_kv": 16}))
  with pytest.raises(ValueError, match="shape mismatch"):
    load_t5_encoder(tmp_path)
