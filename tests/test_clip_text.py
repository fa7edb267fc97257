"""CLIP text encoder + tokenizer: our Flax port against HF transformers' CLIPTextModel/CLIPTokenizer.

Everything is built offline in tmp dirs: a tiny random CLIPTextModel and a tiny byte-level BPE
vocabulary in the hub's CLIP layout (vocab.json + merges.txt + tokenizer_config.json).
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vqd_jax.interop.clip import load_clip_text_encoder  # noqa: E402
from vqd_jax.text.clip import (CLIPTextConfig, CLIPTextEncoder, clip_config_from_hf,  # noqa: E402
                               encode_prompts)
from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper  # noqa: E402

WORDS = ("a", "photo", "of", "cat", "dog", "red")
LONG_PROMPT = "a photo of a red dog, " * 30  # ~180 text tokens: far beyond 75.


def _byte_symbols():
  """GPT-2/CLIP byte -> printable symbol table, in CLIP's vocabulary order ('!' first, id 0)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  rest = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def write_tiny_clip_tokenizer(directory, pad_token="!"):
  """A 500-odd token CLIP BPE: all bytes (plain and word-final) plus whole-word merges for WORDS."""
  symbols = _byte_symbols()
  vocab = symbols + [s + "</w>" for s in symbols]
  merges = []
  for word in WORDS:
    pieces = list(word)
    pieces[-1] += "</w>"
    merged = pieces[0]
    for piece in pieces[1:]:
      if f"{merged} {piece}" not in merges:
        merges.append(f"{merged} {piece}")
        vocab.append(merged + piece)
      merged += piece
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
  if pad_token is not None:
    config["pad_token"] = pad_token
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  return vocab


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("clip_tokenizer")
  write_tiny_clip_tokenizer(directory)
  return directory


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
  transformers = pytest.importorskip("transformers", reason="reference tokenizer needs transformers")
  return transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _tiny_hf_model(tmp_path, hidden_act, vocab_size, bos_id, eos_id):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act, bos_token_id=bos_id,
      eos_token_id=eos_id, pad_token_id=0)
  model = transformers.CLIPTextModel(config).eval()
  with torch.no_grad():  # HF initialises LayerNorms to identity; perturb them so they are tested.
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path))
  return model


def _hf_states(model, ids, mask=None):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    out = model(torch.from_numpy(np.asarray(ids, np.int64)),
                attention_mask=None if mask is None else torch.from_numpy(np.asarray(mask, np.int64)))
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


# ----------------------------------------------------------------------------------- tokenizer


@pytest.mark.reference
def test_tokenizer_matches_hf_padding_for_short_prompts(tokenizer_dir, hf_tokenizer):
  prompts = ["a photo of a cat", "A  RED dog!", "", "zebra 42 & co."]
  wrapper = CLIPTokenizerWrapper.from_pretrained(tokenizer_dir)
  ids, mask = wrapper(prompts)
  ref = hf_tokenizer(prompts, padding="max_length", max_length=77)
  assert ids.dtype == np.int32 and ids.shape == (4, 77) and mask.dtype == bool
  np.testing.assert_array_equal(ids, np.asarray(ref["input_ids"]))
  np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"], bool))
  assert wrapper.pad_id == 0  # "!" is the first byte symbol, as in the real CLIP vocabulary.
  assert ids[2, 2:].max() == 0 and ids[2, 1] == wrapper.eos_id  # "" -> [SOT, EOT, pad...]


@pytest.mark.reference
def test_long_prompt_keeps_eot_in_last_slot(tokenizer_dir, hf_tokenizer):
  wrapper = CLIPTokenizerWrapper.from_pretrained(tokenizer_dir)
  ids, mask = wrapper([LONG_PROMPT, "a cat"])
  full = hf_tokenizer(LONG_PROMPT)["input_ids"]  # untruncated, with SOT/EOT
  assert len(full) > 77
  # Official clip.tokenize(truncate=True): first 77 ids, then the last replaced by EOT.
  np.testing.assert_array_equal(ids[0], np.asarray(full[:76] + [wrapper.eos_id]))
  assert mask[0].all() and mask[1].sum() == 4
  # HF's own truncation (which re-adds the special tokens) agrees.
  hf_cut = hf_tokenizer(LONG_PROMPT, truncation=True, max_length=77)["input_ids"]
  np.testing.assert_array_equal(ids[0], hf_cut)


@pytest.mark.reference
def test_pad_id_follows_the_checkpoint_tokenizer(tmp_path):
  pytest.importorskip("transformers", reason="tokenizer needs transformers")
  write_tiny_clip_tokenizer(tmp_path, pad_token=None)  # HF's CLIPTokenizer then pads with <|endoftext|>
  wrapper = CLIPTokenizerWrapper.from_pretrained(tmp_path, max_length=10)
  ids, mask = wrapper("a cat")
  assert wrapper.pad_id == wrapper.eos_id != 0
  words = wrapper.tokenizer("a cat", add_special_tokens=False)["input_ids"]
  assert len(words) == 2
  np.testing.assert_array_equal(ids[0], [wrapper.bos_id, *words] + [wrapper.eos_id] * 7)
  np.testing.assert_array_equal(mask[0], [True] * 4 + [False] * 6)


def test_tokenizer_missing_files_error_names_them(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="merges.txt"):
    CLIPTokenizerWrapper.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------- encoder


def test_states_are_causal_and_unit_norm():
  """Pure JAX: token i's state depends only on tokens <= i; normalised states have norm 1."""
  cfg = CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=12)
  module = CLIPTextEncoder(cfg)
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)
  params = jax.tree_util.tree_map(
      lambda x: x + 0.1, module.init(jax.random.key(0), ids)["params"])  # nonzero biases
  raw = encode_prompts(module, params, ids, normalize=False)
  changed = encode_prompts(module, params, ids.at[:, 7].set((ids[:, 7] + 1) % 50), normalize=False)
  np.testing.assert_array_equal(raw[:, :7], changed[:, :7])
  assert np.abs(raw[:, 7:] - changed[:, 7:]).max() > 1e-3
  unit = encode_prompts(module, params, ids)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=-1, keepdims=True), atol=1e-6)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    encode_prompts(module, params, jnp.zeros((1, 13), jnp.int32))


def test_config_from_full_clip_model_dict_uses_text_config():
  cfg = clip_config_from_hf({"text_config": {"hidden_size": 64, "num_attention_heads": 4,
                                             "hidden_act": "gelu"}, "vision_config": {}})
  assert (cfg.hidden_size, cfg.num_attention_heads, cfg.hidden_act) == (64, 4, "gelu")
  assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.max_position_embeddings) == (49408, 12, 77)
  with pytest.raises(ValueError, match="hidden_act"):
    clip_config_from_hf({"hidden_act": "mish"})


@pytest.mark.reference
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_encoder_matches_hf_last_hidden_state(tmp_path, tokenizer_dir, hidden_act):
  wrapper = CLIPTokenizerWrapper.from_pretrained(tokenizer_dir)
  model = _tiny_hf_model(tmp_path, hidden_act, wrapper.vocab_size, wrapper.bos_id, wrapper.eos_id)
  module, params = load_clip_text_encoder(tmp_path)
  assert module.config.hidden_act == hidden_act
  ids, mask = wrapper(["a photo of a cat", "", LONG_PROMPT])
  ref, pooled = _hf_states(model, ids)
  np.testing.assert_allclose(encode_prompts(module, params, ids, normalize=False), ref, atol=1e-4)
  ref_unit = ref / np.linalg.norm(ref, axis=-1, keepdims=True)  # VQ-Diffusion's normalisation
  np.testing.assert_allclose(encode_prompts(module, params, ids), ref_unit, atol=1e-4)
  # HF pools the state at the first EOT: for the cut prompt that is the last slot, so EOT survived.
  raw = np.asarray(encode_prompts(module, params, ids, normalize=False))
  np.testing.assert_allclose(raw[2, -1], pooled[2], atol=1e-4)
  # A key-padding mask means the same as HF's attention_mask.
  masked_ref, _ = _hf_states(model, ids, mask)
  np.testing.assert_allclose(encode_prompts(module, params, ids, mask, normalize=False), masked_ref,
                             atol=1e-4)
  assert np.abs(masked_ref[0, -1] - ref[0, -1]).max() > 1e-4  # the mask does change pad states


class _NotATensor:
  pass


@pytest.mark.reference
def test_loads_hub_layout_pytorch_bin_through_weights_only(tmp_path, tokenizer_dir):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  wrapper = CLIPTokenizerWrapper.from_pretrained(tokenizer_dir)
  model = _tiny_hf_model(tmp_path, "quick_gelu", wrapper.vocab_size, wrapper.bos_id, wrapper.eos_id)
  os.remove(tmp_path / "model.safetensors")
  # The hub's openai/clip checkpoints: "text_model." prefix plus the position_ids buffer.
  state = {"text_model." + k: v for k, v in model.state_dict().items()}
  state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
  torch.save(state, tmp_path / "pytorch_model.bin")
  module, params = load_clip_text_encoder(tmp_path)
  ids, _ = wrapper(["a red cat", "dog of a photo"])
  np.testing.assert_allclose(encode_prompts(module, params, ids, normalize=False),
                             _hf_states(model, ids)[0], atol=1e-4)
  # A pickle that is more than tensors is refused rather than executed.
  torch.save({"x": _NotATensor()}, tmp_path / "pytorch_model.bin")
  with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
    load_clip_text_encoder(tmp_path)


@pytest.mark.reference
def test_missing_or_mismatched_checkpoint_errors(tmp_path, tokenizer_dir):
  wrapper = CLIPTokenizerWrapper.from_pretrained(tokenizer_dir)
  _tiny_hf_model(tmp_path, "gelu", wrapper.vocab_size, wrapper.bos_id, wrapper.eos_id)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
  with pytest.raises(ValueError, match="layers_2"):
    load_clip_text_encoder(tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    load_clip_text_encoder(tmp_path)
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_clip_text_encoder(tmp_path)
