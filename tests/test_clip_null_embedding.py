"""The learned classifier-free null embedding, read from files written by diffusers itself."""

import json

import numpy as np
import pytest

from vqd_jax.interop.null_embedding import NULL_EMBEDDING_COMPONENT, load_learned_null_embedding


def _diffusers_class():
  pytest.importorskip("torch", reason="diffusers reference needs PyTorch")
  module = pytest.importorskip("diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion",
                               reason="needs diffusers' VQ-Diffusion pipeline module")
  return module.LearnedClassifierFreeSamplingEmbeddings


@pytest.mark.reference
def test_learned_embedding_round_trips_from_diffusers(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  component = _diffusers_class()(learnable=True, hidden_size=8, length=5)
  expected = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    component.embeddings.copy_(expected)
  component.save_pretrained(str(tmp_path / NULL_EMBEDDING_COMPONENT))
  loaded = load_learned_null_embedding(tmp_path / NULL_EMBEDDING_COMPONENT)
  assert loaded.dtype == np.float32 and loaded.shape == (5, 8)
  np.testing.assert_array_equal(loaded, expected.numpy())
  # A pipeline root works too.
  np.testing.assert_array_equal(load_learned_null_embedding(tmp_path), expected.numpy())


@pytest.mark.reference
def test_not_learnable_gives_none(tmp_path):
  _diffusers_class()(learnable=False).save_pretrained(str(tmp_path))
  assert load_learned_null_embedding(tmp_path) is None


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match=NULL_EMBEDDING_COMPONENT):
    load_learned_null_embedding(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"learnable": True, "hidden_size": 8, "length": 5}))
  with pytest.raises(FileNotFoundError, match="safetensors"):
    load_learned_null_embedding(tmp_path)
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file({"embeddings": np.zeros((5, 4), np.float32)},
            str(tmp_path / "diffusion_pytorch_model.safetensors"))
  with pytest.raises(ValueError, match=r"\(5, 4\)"):
    load_learned_null_embedding(tmp_path)
