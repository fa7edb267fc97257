"""VQDiffusionPipeline (JAX) against diffusers' VQDiffusionPipeline on a tiny random checkpoint.

A random diffusers pipeline (VQModel, Transformer2DModel, CLIPTextModel + a tiny offline CLIP BPE,
VQDiffusionScheduler with T = 10, learned null embedding) is saved with ``save_pretrained`` and
loaded by ``vqd_jax.inference.VQDiffusionPipeline.from_pretrained``; every stage is compared with
the PyTorch original, and a full sampling run with the same Gumbel noise in both must produce the
same tokens and images.
"""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch", reason="reference tests run the PyTorch diffusers pipeline")
diffusers = pytest.importorskip("diffusers", reason="reference tests compare against diffusers")
pytest.importorskip("transformers", reason="the diffusers pipeline needs transformers' CLIP")

from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (  # noqa: E402
    LearnedClassifierFreeSamplingEmbeddings)
from diffusers.schedulers import scheduling_vq_diffusion  # noqa: E402

from vqd_jax.benchmarks.random_diffusers import RandomPipelineSizes, save_random_pipeline  # noqa: E402
from vqd_jax.diffusion import prepare_log_x0  # noqa: E402
from vqd_jax.inference import VQDiffusionPipeline  # noqa: E402

pytestmark = pytest.mark.reference

K, T = 15, 10
SIZES = RandomPipelineSizes(num_codes=K, token_side=4, num_layers=2, num_heads=2, head_dim=8,
                            num_timesteps=T, text_width=32, text_layers=2, text_heads=4,
                            vq_channels=(16, 32), vq_layers_per_block=1, vq_embed_dim=4,
                            vq_latent_channels=8, vq_norm_groups=8, perturb_norms=True)
PROMPTS = ["a photo of a cat", "a large red dog on the beach"]
NULL = "learned_classifier_free_sampling_embeddings"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  directory = tmp_path_factory.mktemp("vqd_pipeline")
  theirs = save_random_pipeline(directory, SIZES, seed=0)
  return directory, theirs


@pytest.fixture(scope="module")
def pipes(folder):
  directory, theirs = folder
  return theirs, VQDiffusionPipeline.from_pretrained(directory)


@pytest.fixture(scope="module")
def clip_null_pipes(folder, tmp_path_factory):
  """The same checkpoint with ``learnable: false``: guidance uses CLIP("") in both."""
  directory, theirs = folder
  copy = tmp_path_factory.mktemp("vqd_pipeline_clip_null") / "pipe"
  shutil.copytree(directory, copy)
  shutil.rmtree(copy / NULL)
  os.makedirs(copy / NULL)
  with open(copy / NULL / "config.json", "w", encoding="utf-8") as f:
    json.dump({"_class_name": "LearnedClassifierFreeSamplingEmbeddings", "learnable": False}, f)
  parts = {name: getattr(theirs, name) for name in
           ("vqvae", "text_encoder", "tokenizer", "transformer", "scheduler")}
  theirs = diffusers.VQDiffusionPipeline(
      **parts, learned_classifier_free_sampling_embeddings=LearnedClassifierFreeSamplingEmbeddings(
          learnable=False))
  theirs.set_progress_bar_config(disable=True)
  return theirs, VQDiffusionPipeline.from_pretrained(copy)


def test_text_states_and_null_states_match(pipes, clip_null_pipes):
  theirs, ours = pipes
  with torch.no_grad():
    expected = theirs._encode_prompt(PROMPTS, 1, True).numpy()  # [null; prompts]
  np.testing.assert_allclose(np.asarray(ours.encode_prompt(PROMPTS)), expected[2:], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(ours.null_states(2)), expected[:2])  # learned, raw
  theirs_clip, ours_clip = clip_null_pipes
  with torch.no_grad():
    expected = theirs_clip._encode_prompt(PROMPTS, 1, True).numpy()
  np.testing.assert_allclose(np.asarray(ours_clip.null_states(2)), expected[:2], atol=1e-4, rtol=0)
  assert np.allclose(np.linalg.norm(expected[:2], axis=-1), 1.0, atol=1e-5)  # CLIP("") normalised


def test_transformer_log_probs_match(pipes):
  theirs, ours = pipes
  rng = np.random.default_rng(0)
  x_t = rng.integers(0, K + 1, size=(2, 16))
  states = ours.encode_prompt(PROMPTS)
  for t in (0, T - 1):
    with torch.no_grad():
      expected = theirs.transformer(torch.from_numpy(x_t), encoder_hidden_states=torch.from_numpy(
          np.asarray(states)), timestep=torch.tensor(t)).sample.permute(0, 2, 1).numpy()
    got = np.asarray(ours.denoise_logits(x_t, states, t))
    assert got.shape == (2, 16, K)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_decode_and_encode_match(pipes):
  theirs, ours = pipes
  tokens = np.random.default_rng(1).integers(0, K, size=(2, 16))
  with torch.no_grad():
    codes = theirs.vqvae.quantize.get_codebook_entry(torch.from_numpy(tokens), shape=(2, 4, 4, 4))
    images = (theirs.vqvae.decode(codes, force_not_quantize=True).sample / 2 + 0.5).clamp(0, 1)
  got = np.asarray(ours.decode(tokens))
  assert got.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(got, images.permute(0, 2, 3, 1).numpy(), atol=1e-3, rtol=0)
  pixels = np.random.default_rng(2).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
  with torch.no_grad():
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    _, _, (_, _, indices) = theirs.vqvae.quantize(theirs.vqvae.encode(x).latents)
  np.testing.assert_array_equal(np.asarray(ours.encode_image(pixels)), indices.reshape(2, 16).numpy())


def _shared_noise(monkeypatch, seed, shape):
  """Makes diffusers' Gumbel draws use the uniforms our sampler draws for ``jax.random.key(seed)``.

  ``vqd_jax.diffusion.sample`` splits its key into (init, loop), the loop key into one key per
  step, and draws ``uniform(step_key, [B, N, K+1])`` for each Gumbel-max step. diffusers draws
  ``[B, K+1, N]`` (``[B, K, N]`` at t = 0, where [MASK] is not a class).
  """
  _, loop_key = jax.random.split(jax.random.key(seed))
  keys = jax.random.split(loop_key, T)
  uniforms = np.asarray(jax.jit(jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32)))(keys))
  calls = []

  def gumbel_noised(logits, generator):
    u = torch.from_numpy(uniforms[len(calls)]).permute(0, 2, 1)[:, :logits.shape[1]]
    calls.append(logits.shape)
    return logits - torch.log(-torch.log(u + 1e-30) + 1e-30)

  monkeypatch.setattr(scheduling_vq_diffusion, "gumbel_noised", gumbel_noised)
  return calls


@pytest.mark.parametrize("variant,guidance,truncation", [
    ("learned", 5.0, 1.0), ("clip_null", 3.0, 0.8)])
def test_sampling_matches_step_by_step_and_end_to_end(pipes, clip_null_pipes, monkeypatch, variant,
                                                      guidance, truncation):
  theirs, ours = pipes if variant == "learned" else clip_null_pipes
  seed = 7
  calls = _shared_noise(monkeypatch, seed, (len(PROMPTS), 16, K + 1))
  steps = []
  step = theirs.scheduler.step

  def recording_step(model_output, timestep, sample, generator=None):
    out = step(model_output, timestep, sample, generator)
    steps.append((model_output.permute(0, 2, 1).numpy(), int(timestep), sample.numpy(),
                  out.prev_sample.numpy()))
    return out

  monkeypatch.setattr(theirs.scheduler, "step", recording_step)
  with torch.no_grad():
    images = theirs(PROMPTS, num_inference_steps=T, guidance_scale=guidance,
                    truncation_rate=truncation, output_type="np").images
  assert len(calls) == len(steps) == T

  # Step by step on diffusers' own trajectory: model output after guidance/truncation, and the
  # posterior it is sampled from.
  states = ours.encode_prompt(PROMPTS)
  guided = guidance > 1
  if guided:
    states = jnp.concatenate([ours.null_states(len(PROMPTS)), states])
  @jax.jit
  def ours_step(x_t, t):
    logits = ours.denoise_logits(jnp.concatenate([x_t, x_t]) if guided else x_t, states, t)
    log_x0 = prepare_log_x0(logits, guidance_scale=guidance, truncation_rate=truncation)
    return log_x0, ours.process.q_posterior(log_x0, x_t, jnp.maximum(t, 1))

  for model_output, t, x_t, _ in steps:
    log_x0, posterior = ours_step(jnp.asarray(x_t, jnp.int32), t)
    np.testing.assert_allclose(np.asarray(log_x0), model_output, atol=1e-4, rtol=0)
    if t > 0:
      expected = theirs.scheduler.q_posterior(torch.from_numpy(model_output).permute(0, 2, 1),
                                              torch.from_numpy(x_t), t).permute(0, 2, 1).numpy()
      got = np.asarray(posterior)
      shown = expected > -60
      np.testing.assert_allclose(got[shown], expected[shown], atol=1e-4, rtol=0)
      assert np.all(got[~shown] <= -55)

  # End to end with the same noise: same tokens, same images.
  kwargs = dict(seed=seed, num_inference_steps=T, guidance_scale=guidance,
                truncation_rate=truncation)
  tokens = ours.generate_tokens(PROMPTS, **kwargs)
  np.testing.assert_array_equal(tokens, steps[-1][3])
  np.testing.assert_allclose(np.asarray(ours.decode(tokens)), images, atol=1e-3, rtol=0)
  uint8 = ours(PROMPTS, **kwargs)
  assert uint8.dtype == np.uint8 and uint8.shape == (2, 8, 8, 3)
  assert np.abs(uint8.astype(int) - np.round(images * 255).astype(int)).max() <= 1


def test_missing_component_or_file_is_a_clear_error(folder, tmp_path):
  directory, _ = folder
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  shutil.rmtree(broken / "vqvae")
  with pytest.raises(FileNotFoundError, match="'vqvae'"):
    VQDiffusionPipeline.from_pretrained(broken)
  shutil.copytree(directory / "vqvae", broken / "vqvae")
  os.remove(broken / "transformer" / "diffusion_pytorch_model.safetensors")
  with pytest.raises(FileNotFoundError, match="No weights in .*transformer"):
    VQDiffusionPipeline.from_pretrained(broken)
  os.remove(broken / "model_index.json")
  with pytest.raises(FileNotFoundError, match="model_index.json"):
    VQDiffusionPipeline.from_pretrained(broken)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    VQDiffusionPipeline.from_pretrained(tmp_path / "nowhere")


def test_save_pretrained_writes_the_same_checkpoint(folder, pipes, tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  directory, theirs = folder
  _, ours = pipes
  assert ours.save_pretrained(tmp_path) == []  # a CLIP checkpoint: diffusers can load all of it
  for component, weights in (("transformer", "diffusion_pytorch_model"),
                             ("vqvae", "diffusion_pytorch_model"), ("text_encoder", "model"),
                             (NULL, "diffusion_pytorch_model")):
    original = load_file(directory / component / f"{weights}.safetensors")
    written = load_file(tmp_path / component / f"{weights}.safetensors")
    if component == "text_encoder":  # transformers 5 saves without the hub's "text_model." prefix
      original = {k if k.startswith("text_model.") else f"text_model.{k}": v
                  for k, v in original.items()}
      original.pop("text_model.embeddings.position_ids", None)
    assert set(written) == set(original), component
    for key, value in original.items():
      np.testing.assert_array_equal(written[key], value, err_msg=f"{component}: {key}")
  reloaded = transformers.CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
  ids = torch.tensor(theirs.tokenizer(PROMPTS, padding="max_length", max_length=77).input_ids)
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(ids).last_hidden_state.numpy(),
                                  theirs.text_encoder(ids).last_hidden_state.numpy())
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
  assert tokenizer(PROMPTS).input_ids == theirs.tokenizer(PROMPTS).input_ids
  assert tokenizer.pad_token_id == 0
  with open(tmp_path / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
    assert {k: v for k, v in json.load(f).items() if not k.startswith("_")} == {
        k: v for k, v in theirs.scheduler.config.items() if not k.startswith("_")}
