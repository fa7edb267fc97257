"""A trained denoiser run is self-contained: moved away from its autoencoder's run it still
samples the same images and resumes; loading never creates anything where it looks."""

import os
import shutil

import jax
import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax.inference import VQDiffusionPipeline, load_autoencoder
from vqd_jax.inference import run_autoencoder
from vqd_jax.training import loop, vqvae_task


def _tree(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, dirs, files in os.walk(path) for f in files + dirs)


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
  """``(before, after)``: a tiny denoiser run's images and folder, then both moved apart."""
  root = tmp_path_factory.mktemp("travel")
  vq_dir, run_dir = str(root / "vq"), str(root / "dm")
  vqvae_task.save_untrained(vq_dir, configs_io.load_config("configs/vqvae.py:tiny"))
  vq_params = load_autoencoder(vq_dir).params
  config = configs_io.load_config("configs/diffusion.py:tiny", [f"vqvae_workdir={vq_dir}"])
  loop.train_and_evaluate(config, run_dir)
  images = VQDiffusionPipeline.from_run(run_dir)(["a large red circle"], num_inference_steps=4,
                                                 seed=3)
  moved = str(root / "elsewhere" / "dm")
  shutil.move(run_dir, moved)
  shutil.rmtree(vq_dir)
  return images, vq_params, moved, config, root


def test_the_copy_is_the_autoencoder(moved_run):
  _, vq_params, moved, _, _ = moved_run
  copy = run_autoencoder.load_copy(moved).params
  for a, b in zip(jax.tree.leaves(vq_params), jax.tree.leaves(copy)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_moved_run_samples_the_same_images_and_resumes(moved_run):
  images, _, moved, config, root = moved_run
  pipe = VQDiffusionPipeline.from_run(moved)
  np.testing.assert_array_equal(pipe(["a large red circle"], num_inference_steps=4, seed=3), images)
  steps = config.train.num_steps
  with config.unlocked():
    config.train.num_steps = steps + 2
  loop.train_and_evaluate(config, moved)  # the data are images: the copy encodes them
  assert VQDiffusionPipeline.from_run(moved).checkpoint_step == steps + 2
  assert not os.path.exists(root / "vq") and not os.path.exists(root / "dm")  # nothing recreated


def test_loading_creates_nothing_and_names_what_is_missing(moved_run, tmp_path):
  _, _, moved, _, _ = moved_run
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="No denoiser checkpoint"):
    VQDiffusionPipeline.from_run(str(missing))
  with pytest.raises(FileNotFoundError, match="No autoencoder checkpoint"):
    load_autoencoder(str(missing))
  assert not missing.exists()
  # A run without its copy, whose autoencoder's folder is gone, says so.
  bare = tmp_path / "bare"
  shutil.copytree(moved, bare)
  shutil.rmtree(bare / run_autoencoder.AUTOENCODER_DIR)
  before = _tree(bare)
  with pytest.raises(FileNotFoundError, match="has no copy of its autoencoder"):
    VQDiffusionPipeline.from_run(str(bare))
  assert _tree(bare) == before
  # A damaged copy is an error naming the file, not a silent fallback.
  damaged = tmp_path / "damaged"
  shutil.copytree(moved, damaged)
  path = damaged / run_autoencoder.AUTOENCODER_DIR / "params.safetensors"
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match="params.safetensors cannot be read"):
    VQDiffusionPipeline.from_run(str(damaged))


def test_token_records_of_another_autoencoder_are_refused(tmp_path):
  """Records carry their autoencoder's fingerprint; a run whose own autoencoder differs refuses
  them, naming both, while the records of its own autoencoder (moved elsewhere) train."""
  from vqd_jax import encode  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import diffusion_task  # pylint: disable=import-outside-toplevel
  vq_config = configs_io.load_config("configs/vqvae.py:tiny")
  records = {}
  for seed in (0, 1):
    vqvae_task.save_untrained(str(tmp_path / f"vq{seed}"), vq_config, seed=seed)
    vq = load_autoencoder(str(tmp_path / f"vq{seed}"))
    config = configs_io.load_config("configs/diffusion.py:tiny")
    encode.encode_dataset(vq, config.data, str(tmp_path / f"tok{seed}"), num_examples=8,
                          batch_size=8)
    records[seed] = str(tmp_path / f"tok{seed}")
  assert load_autoencoder(str(tmp_path / "vq0")).fingerprint != vq.fingerprint

  def task(tokens, workdir):
    config = configs_io.load_config("configs/diffusion.py:tiny", [
        f"vqvae_workdir={tmp_path / 'vq0'}", "data.source=tokens", f"data.path={tokens}"])
    return diffusion_task.DiffusionTask(config, str(tmp_path / workdir))

  moved = shutil.move(records[0], tmp_path / "moved" / "tok0")
  task(str(moved), "run")  # its own records, wherever they are now
  # The run's copy of the autoencoder (not the original run) is what the records are checked
  # against, so the check holds after the autoencoder's run is gone.
  shutil.rmtree(tmp_path / "vq0")
  with pytest.raises(ValueError, match=r"tok1 were written by another autoencoder \(fingerprint "
                                       rf"{vq.fingerprint}\)"):
    task(records[1], "run")
