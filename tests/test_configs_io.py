"""Config files and overrides: one ``--config.<field>=<value>`` syntax keeping each field's type,
configs found from any directory, sizes read from the transformer presets, every ``model`` block a
set of model fields, and presets without data refusing to train until they name some."""

import os

import pytest

from vqd_jax import build
from vqd_jax import configs_io
from vqd_jax import quickstart
from vqd_jax import vqvae
from vqd_jax.training import loop
from vqd_jax.transformer import Text2ImageTransformer
from vqd_jax.transformer import fields as transformer_fields
from vqd_jax.transformer.presets import PRESETS

DIFFUSION_PRESETS = ("tiny", "shapes", "shapes_long", "S", "B", "ithq", "emoji", "cifar10")
VQVAE_PRESETS = ("tiny", "shapes", "shapes_long", "ithq", "f8", "emoji", "cifar10")
NO_DATA = [("diffusion", p) for p in ("S", "B", "ithq")] + [("vqvae", p) for p in ("ithq", "f8")]


def test_overrides_parse_to_the_type_of_the_default():
  config = configs_io.load_config("configs/diffusion.py:shapes", [
      "diffusion.mask_weights=[1.0, 0.0]", "model.relative_position_bias=false",
      "train.num_steps=7", "optim.lr=2e-3", "data.source=folder", "sampling.purity_weight=0.5"])
  assert list(config.diffusion.mask_weights) == [1.0, 0.0]
  assert config.model.relative_position_bias is False
  assert config.train.num_steps == 7 and config.optim.lr == 2e-3
  assert config.data.source == "folder"
  assert config.sampling.purity_weight == 0.5


@pytest.mark.parametrize("item, message", [
    ("model.relative_position_bias=ture", "expected a boolean"),
    ("diffusion.mask_weights=1.0", "expected a list"),
    ("diffusion.mask_weights=[1.0,", "expected a Python list"),
    ("train.num_steps=1.5", "expected int"),
    ("train.num_stepz=5", "config.train has no field 'num_stepz'; its fields: .*num_steps"),
    ("modle.num_layers=2", "config has no field 'modle'"),
    ("train.num_steps", "must look like field=value"),
])
def test_malformed_overrides_are_errors_that_name_the_key(item, message):
  with pytest.raises(ValueError, match=message):
    configs_io.load_config("configs/diffusion.py:shapes", [item])


def test_override_flags_are_taken_out_of_the_arguments_in_order():
  argv = ["--workdir", "w", "--config.train.num_steps=5", "--diffusion.model.num_layers", "2",
          "--long", "--config.optim.lr=1e-3"]
  rest, found = configs_io.pop_override_flags(argv, ("config", "diffusion"))
  assert rest == ["--workdir", "w", "--long"]
  assert found == {"config": ["train.num_steps=5", "optim.lr=1e-3"],
                   "diffusion": ["model.num_layers=2"]}
  with pytest.raises(ValueError, match="needs a value"):
    configs_io.pop_override_flags(["--config.train.num_steps"])


def test_configs_resolve_from_any_directory_and_a_local_file_wins(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert configs_io.load_config("configs/vqvae.py:tiny").stage == "vqvae"
  assert os.path.isabs(configs_io.resolve("configs/diffusion.py"))
  assert configs_io.resolve_spec("configs/diffusion.py:tiny").endswith("diffusion.py:tiny")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "vqvae.py").write_text(
      "import ml_collections\n\n\ndef get_config(preset='x'):\n"
      "  return ml_collections.ConfigDict({'stage': 'mine', 'preset': preset})\n")
  assert configs_io.load_config("configs/vqvae.py:tiny").stage == "mine"
  with pytest.raises(FileNotFoundError, match="nothing.py"):
    configs_io.resolve("configs/nothing.py")


@pytest.mark.parametrize("preset", ["S", "B", "ithq"])
def test_large_presets_read_their_sizes_from_the_transformer_presets(preset):
  config = configs_io.load_config(f"configs/diffusion.py:{preset}")
  sizes = PRESETS[preset]
  for key in ("num_layers", "num_heads", "head_dim", "mlp_ratio", "dropout"):
    assert config.model[key] == sizes[key], key
  assert config.text.width == sizes["cross_attention_dim"]
  assert config.diffusion.num_timesteps == sizes["num_embeds_ada_norm"]


@pytest.mark.parametrize("preset", DIFFUSION_PRESETS)
def test_diffusion_model_blocks_hold_only_transformer_fields(preset):
  config = configs_io.load_config(f"configs/diffusion.py:{preset}")
  transformer_fields.check_config_fields(config.model.keys(), Text2ImageTransformer)
  assert "pooled_text_adaln" not in config.model and "causal" not in config.text


@pytest.mark.parametrize("preset", VQVAE_PRESETS)
def test_vqvae_model_blocks_build_the_autoencoder(preset):
  model = build.autoencoder(configs_io.load_config(f"configs/vqvae.py:{preset}"))
  assert isinstance(model, vqvae.VQAutoencoder)


def test_an_unknown_model_field_is_named_with_the_valid_ones():
  with pytest.raises(ValueError, match=r"config.model.num_layer is not a field of "
                     r"Text2ImageTransformer. Valid fields: .*num_layers"):
    transformer_fields.check_config_fields(["num_layers", "num_layer"], Text2ImageTransformer)
  with pytest.raises(ValueError, match="config.model.num_classes cannot be set.*autoencoder"):
    transformer_fields.check_config_fields(["num_classes"], Text2ImageTransformer,
                                           derived={"num_classes": "the autoencoder"})


@pytest.mark.parametrize("stage, preset", NO_DATA)
def test_presets_without_data_refuse_to_train_and_name_the_choices(stage, preset, tmp_path):
  config = configs_io.load_config(f"configs/{stage}.py:{preset}")
  assert config.data.source == ""
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as error:
    loop.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "config.data.source is not set" in message
  for flags in ("--config.data.source=tfds --config.data.name=NAME --config.data.path=DATA_DIR",
                "--config.data.source=folder --config.data.path=DIR",
                "--config.data.source=class_folder --config.data.path=DIR"):
    assert flags in message
  assert ("--config.data.source=tokens" in message) == (stage == "diffusion")
  assert not workdir.exists()  # refused before anything was written


def test_a_source_without_its_fields_names_them(tmp_path):
  config = configs_io.load_config("configs/diffusion.py:B", ["data.source=tfds", "data.path=/d"])
  with pytest.raises(ValueError, match=r"'tfds' needs data.name: set --config.data.name=NAME"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  config = configs_io.load_config("configs/vqvae.py:tiny", ["data.source=tokens"])
  with pytest.raises(ValueError, match="not a data source for the vqvae stage"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_quickstart_checks_both_stages_overrides_before_training(tmp_path, capsys):
  workdir = str(tmp_path / "qs")
  with pytest.raises(SystemExit):
    quickstart.main(["--workdir", workdir, "--vqvae.train.num_steps=3",
                     "--diffusion.train.num_stepz=5"])
  assert "config.train has no field 'num_stepz'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    quickstart.main(["--workdir", workdir, "--config.train.num_steps=5"])
  assert "--vqvae.<field>=<value> or --diffusion.<field>=<value>" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    quickstart.main(["--workdir", workdir, "--model", "ar", "--diffusion.train.num_steps=5"])
  assert "--diffusion. overrides do not apply to --model ar" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    quickstart.main(["--workdir", workdir, "--model", "ctf", "--fine.train.num_stepz=5"])
  assert "config.train has no field 'num_stepz'" in capsys.readouterr().err
  assert not os.path.exists(workdir)
