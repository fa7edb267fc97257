"""Export of vqd_jax models to the diffusers layout, reloading, and inpainting with the pipeline.

A tiny random "trained run" is built from its pieces (transformer, VQ autoencoder, word tokenizer +
text encoder, null embedding, process) without training. It is exported, read back by
``VQDiffusionPipeline.from_pretrained`` (which must sample exactly like the run's own sampler) and,
in the reference test, by diffusers' ``Transformer2DModel`` / ``VQModel`` / scheduler loaders.
"""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cli_coverage import covers
from jax_test_env import FAST_COMPILE_FLAGS
from vqd_jax import convert
from vqd_jax import diffusion
from vqd_jax import text as text_lib
from vqd_jax.interop import diffusers_pipeline as layout
from vqd_jax.interop.export import export_pipeline
from vqd_jax.inference import VQDiffusionPipeline
from vqd_jax.text import SPECIAL_TOKENS, TextEncoder, WordTokenizer
from vqd_jax.transformer import Text2ImageTransformer
from vqd_jax.vqvae import VQAutoencoder

K, T, SIDE, TEXT_LEN, WIDTH = 12, 8, 4, 6, 16
FIELDS = dict(num_classes=K, height=SIDE, width=SIDE, num_layers=1, num_heads=2, head_dim=8,
              cross_attention_dim=WIDTH, num_embeds_ada_norm=T, mlp_ratio=4, dropout=0.0)
PROMPTS = ["red cat", "blue dog"]


def _random_params(module, seed, scale, *inputs):
  """Random normal params shaped like ``module``'s (no LayerNorm at identity, no zero bias).

  Built from ``jax.eval_shape`` with numpy: compiling the modules' own initialisers takes far
  longer on CPU than the whole test.
  """
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def run():
  """The pieces of a from-scratch run, as ``export_pipeline`` keyword arguments."""
  transformer = Text2ImageTransformer(**FIELDS)
  x = jnp.zeros((1, SIDE * SIDE), jnp.int32)
  states = jnp.zeros((1, TEXT_LEN, WIDTH))
  t_params = _random_params(transformer, 0, 0.3, x, jnp.zeros((1,), jnp.int32), states)
  vq = VQAutoencoder(block_out_channels=(8, 16), layers_per_block=1, down_attention=(False, True),
                     latent_channels=8, vq_embed_dim=4, num_vq_embeddings=K, norm_num_groups=4)
  vq_params = _random_params(vq, 1, 0.3, jnp.zeros((1, 8, 8, 3)))
  tokenizer = WordTokenizer(list(SPECIAL_TOKENS) + ["red", "blue", "cat", "dog"], TEXT_LEN)
  text = TextEncoder(vocab_size=tokenizer.vocab_size, max_length=TEXT_LEN, width=WIDTH,
                     num_layers=1, num_heads=2)
  text_params = _random_params(text, 2, 0.3, jnp.zeros((1, TEXT_LEN), jnp.int32))
  return dict(transformer_fields=FIELDS, transformer_params=t_params,
              vq_model=vq, vq_params=vq_params,
              process=diffusion.MaskAndReplace(K, T), text_kind="vqd_jax", text_encoder=text,
              text_params=text_params, tokenizer=tokenizer,
              null_embedding=np.random.default_rng(3).normal(size=(TEXT_LEN, WIDTH)).astype(np.float32))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  out = tmp_path_factory.mktemp("exported")
  notes = export_pipeline(out, **run)
  return out, notes, VQDiffusionPipeline.from_pretrained(out)


def _run_sampler(run, key, guidance, truncation):
  """The run's own sampler (as ``DiffusionTask.generate_tokens`` composes it), from the pieces."""
  ids, mask = run["tokenizer"](PROMPTS)
  states = run["text_encoder"].apply({"params": run["text_params"]}, ids, mask)
  null = jnp.broadcast_to(run["null_embedding"], states.shape)
  states = jnp.concatenate([null, states])
  masks = jnp.concatenate([jnp.ones_like(mask), mask])
  model = Text2ImageTransformer(**FIELDS)

  def denoise(x_t, t):
    return model.apply({"params": run["transformer_params"]}, x_t, t, states, masks)

  return diffusion.sample(denoise, key, run["process"], batch_size=len(PROMPTS),
                          num_tokens=SIDE * SIDE, num_steps=T, guidance_scale=guidance,
                          truncation_rate=truncation)


def test_export_reloads_exactly_and_samples_like_the_run(run, exported):
  out, notes, pipe = exported
  assert any("vqd_jax-specific" in note for note in notes)
  with open(os.path.join(out, "model_index.json"), encoding="utf-8") as f:
    index = json.load(f)
  assert index["text_encoder"] == [None, None] and index["vqd_jax_text_encoder"][1] == "TextEncoder"
  for name, ours in (("transformer", run["transformer_params"]), ("vqvae", run["vq_params"]),
                     ("text_encoder", run["text_params"])):
    jax.tree.map(np.testing.assert_array_equal, pipe.params[name], ours)
  np.testing.assert_array_equal(pipe.params["null_embedding"], run["null_embedding"])
  assert (pipe.text_kind, pipe.num_codes, pipe.num_timesteps) == ("vqd_jax", K, T)
  tokens = pipe.generate_tokens(PROMPTS, seed=3, num_inference_steps=T, guidance_scale=3.0,
                                truncation_rate=0.9)
  expected = jax.jit(lambda key: _run_sampler(run, key, 3.0, 0.9))(jax.random.key(3))
  np.testing.assert_array_equal(tokens, np.asarray(expected))


def test_paper_schedule_round_trips_through_the_scheduler_config(run, tmp_path):
  process = diffusion.MaskAndReplace(K, T, "paper")
  with open(tmp_path / "scheduler_config.json", "w", encoding="utf-8") as f:
    json.dump(layout.scheduler_config(process), f)
  with open(tmp_path / "scheduler_config.json", encoding="utf-8") as f:
    assert layout.schedule_from_scheduler_config(json.load(f)) == ("paper", T)
  assert layout.schedule_from_scheduler_config({"num_train_timesteps": 100}) == ("released", 100)
  with pytest.raises(ValueError, match="match no vqd_jax schedule"):
    layout.schedule_from_scheduler_config({"alpha_cum_start": 0.5})


def test_inpainting_keeps_unmasked_tokens_and_regenerates_touched_ones(exported):
  _, _, pipe = exported
  image = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
  encoded = np.asarray(pipe.encode_image(image))
  pixel_mask = np.zeros((8, 8), bool)
  pixel_mask[5, 2] = True  # inside token (row 2, col 1) of the 2x2-pixel patches
  pixel_mask[0:2, 6:8] = True  # exactly token (0, 3)
  regenerate = pipe.token_mask(pixel_mask, 2)
  expected = np.zeros((SIDE, SIDE), bool)
  expected[2, 1] = expected[0, 3] = True
  np.testing.assert_array_equal(regenerate, np.broadcast_to(expected.reshape(-1), (2, 16)))
  tokens = pipe.generate_tokens(PROMPTS, seed=1, guidance_scale=3.0, init_image=image,
                                inpaint_mask=pixel_mask)
  np.testing.assert_array_equal(tokens[:, ~expected.reshape(-1)],
                                np.broadcast_to(encoded, (2, 16))[:, ~expected.reshape(-1)])
  assert tokens.min() >= 0 and tokens.max() < K
  with pytest.raises(ValueError, match="needs init_image"):
    pipe(PROMPTS, inpaint_mask=pixel_mask)
  assert pipe.sampler_config(8, start_t=3).num_steps == 4  # same step density from t = 3
  with pytest.raises(ValueError, match="num_inference_steps"):
    pipe.sampler_config(T + 1)


@covers("convert export --workdir", "convert export --out", "convert check path")
def test_convert_cli_exports_a_run_and_checks_the_folder(run, monkeypatch, tmp_path, capsys):
  from vqd_jax.inference import FrozenAutoencoder, TokenGenerator  # pylint: disable=import-outside-toplevel
  fake_run = types.SimpleNamespace(
      generator=TokenGenerator(Text2ImageTransformer(**FIELDS), run["process"]),
      autoencoder=FrozenAutoencoder(run["vq_model"], run["vq_params"]),
      conditioner=text_lib.Conditioner(run["tokenizer"], run["text_encoder"]), step=42,
      config=ml_collections.ConfigDict({"sampling": {"num_steps": 4, "guidance_scale": 2.0}}),
      params={"transformer": run["transformer_params"], "text_encoder": run["text_params"],
              "null_embedding": run["null_embedding"]})
  calls = []

  def load_diffusion_run(workdir, step=None, use_ema=True):
    calls.append((workdir, step, use_ema))
    return fake_run

  monkeypatch.setattr("vqd_jax.inference.pipeline.load_diffusion_run", load_diffusion_run)
  out = tmp_path / "out"
  assert convert.main(["export", "--workdir", "runs/x", "--out", str(out)]) == 0
  assert calls == [("runs/x", None, True)]
  assert "vqd_jax-specific" in capsys.readouterr().out
  assert convert.main(["check", str(out)]) == 0
  report = capsys.readouterr().out
  assert "1 layers x 2 heads x 8" in report and "vqd_jax TextEncoder" in report
  assert "learned (6, 16)" in report
  for sub in ("export", "check"):
    with pytest.raises(SystemExit) as exit_info:
      convert.main([sub, "--help"])
    assert exit_info.value.code == 0


@pytest.mark.reference
def test_diffusers_loads_the_exported_components(run, exported):
  torch = pytest.importorskip("torch", reason="loads the export with PyTorch diffusers")
  diffusers = pytest.importorskip("diffusers", reason="loads the export with diffusers")
  deprecated = pytest.importorskip("diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion",
                                   reason="diffusers' VQ-Diffusion null-embedding class")
  out, _, pipe = exported
  transformer = diffusers.Transformer2DModel.from_pretrained(out, subfolder="transformer").eval()
  rng = np.random.default_rng(0)
  x_t = rng.integers(0, K + 1, size=(2, SIDE * SIDE))
  states = rng.normal(size=(2, TEXT_LEN, WIDTH)).astype(np.float32)
  with torch.no_grad():
    theirs = transformer(torch.from_numpy(x_t), encoder_hidden_states=torch.from_numpy(states),
                         timestep=torch.tensor(5)).sample.permute(0, 2, 1).numpy()
  np.testing.assert_allclose(np.asarray(pipe.denoise_logits(x_t, states, 5)), theirs, atol=1e-4,
                             rtol=0)
  vqvae = diffusers.VQModel.from_pretrained(out, subfolder="vqvae").eval()
  tokens = rng.integers(0, K, size=(2, SIDE * SIDE))
  with torch.no_grad():
    codes = vqvae.quantize.get_codebook_entry(torch.from_numpy(tokens), shape=(2, SIDE, SIDE, 4))
    images = (vqvae.decode(codes, force_not_quantize=True).sample / 2 + 0.5).clamp(0, 1)
  np.testing.assert_allclose(np.asarray(pipe.decode(tokens)), images.permute(0, 2, 3, 1).numpy(),
                             atol=1e-3, rtol=0)
  null = deprecated.LearnedClassifierFreeSamplingEmbeddings.from_pretrained(
      out, subfolder="learned_classifier_free_sampling_embeddings")
  np.testing.assert_array_equal(null.embeddings.detach().numpy(), np.asarray(run["null_embedding"]))
  scheduler = diffusers.VQDiffusionScheduler.from_pretrained(out, subfolder="scheduler")
  assert (scheduler.config.num_vec_classes, scheduler.config.num_train_timesteps) == (K + 1, T)


@covers("sample --pretrained", "sample --init-image", "sample --mask",
        "sample --num-samples", "sample --out")
def test_sample_cli_inpaints_with_a_pretrained_folder(exported, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vqd_jax import sample  # pylint: disable=import-outside-toplevel
  out, _, pipe = exported
  image = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
  mask = np.zeros((8, 8), np.uint8)
  mask[:2, :2] = 255  # token (0, 0) only
  Image.fromarray(image).save(tmp_path / "init.png")
  Image.fromarray(mask).save(tmp_path / "mask.png")
  samples = tmp_path / "samples"
  assert sample.main(["--pretrained", str(out), "--prompt", "red cat", "--num-samples", "2",
                      "--steps", "2", "--guidance", "1", "--init-image", str(tmp_path / "init.png"),
                      "--mask", str(tmp_path / "mask.png"), "--out", str(samples)]) == 0
  with open(samples / "samples.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["file"] for r in records] == ["00000.png", "00001.png"]
  assert records[0]["num_steps"] == 2 and records[0]["pretrained"] == str(out)
  # Brute force: the written image must be the decode of the init image's codes with only token
  # (0, 0) changed, for one of the K values it can take.
  candidates = np.repeat(np.asarray(pipe.encode_image(image)), K, axis=0)
  candidates[:, 0] = np.arange(K)
  decoded = np.round(np.asarray(pipe.decode(candidates)) * 255).astype(int)
  for r in records:
    written = np.asarray(Image.open(samples / r["file"]).convert("RGB")).astype(int)
    assert np.abs(decoded - written).reshape(K, -1).max(axis=1).min() <= 1


def test_row_chunks_equal_the_whole_batch_with_padding():
  from vqd_jax.row_blocks import in_row_chunks  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, s = rng.normal(size=(5, 3)), rng.normal(size=(5, 2, 3))
  fn = lambda x, s, none: jnp.tanh(x)[:, None, :] * s + x.sum(-1)[:, None, None]  # row-wise
  expected = fn(x, s, None)
  for chunk in (None, 1, 2, 3, 5, 8):
    np.testing.assert_allclose(np.asarray(in_row_chunks(fn, chunk, x, s, None)), expected,
                               rtol=1e-6, atol=1e-6)


def test_rows_split_over_host_cpu_devices_sample_like_one_device(exported):
  """With one XLA device per core (as the command lines set up), the transformer's rows are split
  over the devices; tokens and log-probabilities must be those of the single-device pipeline, and a
  run trained there (previews sample under the training mesh) must sample like one device."""
  folder = exported[0]
  # No device count from the environment: the worker sets its devices up as the commands do.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VQD_CPU_DEVICES")}
  env["XLA_FLAGS"] = FAST_COMPILE_FLAGS
  worker = os.path.join(os.path.dirname(__file__), "row_parallel_worker.py")
  proc = subprocess.run([sys.executable, worker, str(folder)], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  result = json.loads(lines[-1][len("RESULT "):])
  assert result["configured"] == 2 and result["devices"] == 2 and result["mesh_size"] == 2
  assert "--xla_cpu_multi_thread_eigen=false" in result["xla_flags"]
  assert result["tokens_equal"] == [True, True]
  assert result["logits_max_abs_diff"] <= 1e-5
  assert result["rows_shape"] == [5, 3] and result["rows_max_abs_diff"] <= 1e-6
  # A tiny run trained on the 2 devices wrote its preview grid and samples like one device.
  assert result["previews"] == ["samples_0000002.png"]
  assert result["run_tokens_equal"]
  # Its checkpoint, written by 2 devices, restores in this 1-device process (sampling scripts).
  from vqd_jax.inference import load_diffusion_run  # pylint: disable=import-outside-toplevel
  run = load_diffusion_run(os.path.join(folder, "run", "dm"))
  assert run.step == 2 and jax.device_count() == 1
  pipe = VQDiffusionPipeline.from_run(os.path.join(folder, "run", "dm"))
  images = pipe.generate(pipe.params, ["a large red circle"], jax.random.key(0),
                         diffusion.SamplerConfig(num_steps=2))
  size = run.config.data.image_size
  assert images.shape == (1, size, size, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("extension", [dict(patch_size=4), dict(patch_size=4, local_encoder=True)])
def test_export_refuses_autoencoders_diffusers_cannot_express(extension):
  from vqd_jax.interop.export import vq_config_to_diffusers  # pylint: disable=import-outside-toplevel
  model = VQAutoencoder(block_out_channels=(8,), down_attention=(False,), latent_channels=8,
                        vq_embed_dim=4, num_vq_embeddings=K, norm_num_groups=4, **extension)
  with pytest.raises(ValueError, match="cannot express.*patch_size=4"):
    vq_config_to_diffusers(model, 32)
  assert vq_config_to_diffusers(VQAutoencoder(block_out_channels=(8,), norm_num_groups=4), 32)[
      "block_out_channels"] == [8]


@covers("convert export --no-ema", "convert export --workdir", "convert export --out")
def test_no_ema_exports_the_raw_parameters_and_the_default_the_ema(tiny_run, tmp_path):
  # The truth: the arrays of the checkpoint itself, read by orbax without our loaders.
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  step_dirs = sorted(os.listdir(os.path.join(tiny_run, "checkpoints")), key=int)
  saved = ocp.PyTreeCheckpointer().restore(
      os.path.join(tiny_run, "checkpoints", step_dirs[-1], "state"))
  raw = np.asarray(saved["params"]["null_embedding"])
  ema = np.asarray(saved["ema_params"]["null_embedding"])
  assert np.abs(raw - ema).max() > 1e-6  # four steps move the EMA less than the parameters
  for flags, want in (([], ema), (["--no-ema"], raw)):
    out = tmp_path / ("raw" if flags else "ema")
    assert convert.main(["export", "--workdir", tiny_run, "--out", str(out), *flags]) == 0
    exported = load_file(str(out / "learned_classifier_free_sampling_embeddings" /
                             "diffusion_pytorch_model.safetensors"))["embeddings"]
    np.testing.assert_array_equal(exported, want)
