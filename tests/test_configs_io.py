"""Command-line config overrides (``--set STAGE.KEY=VALUE``) keep each field's type."""

import pytest

from vqd_jax import configs_io


def test_overrides_parse_to_the_type_of_the_default():
  config = configs_io.load_config("configs/diffusion.py:shapes", [
      "diffusion.mask_weights=[1.0, 0.0]", "model.relative_position_bias=false",
      "train.num_steps=7", "optim.lr=2e-3", "data.source=folder"])
  assert list(config.diffusion.mask_weights) == [1.0, 0.0]
  assert config.model.relative_position_bias is False
  assert config.train.num_steps == 7 and config.optim.lr == 2e-3
  assert config.data.source == "folder"


@pytest.mark.parametrize("item, message", [
    ("model.relative_position_bias=ture", "expected a boolean"),
    ("diffusion.mask_weights=1.0", "expected a list"),
    ("diffusion.mask_weights=[1.0,", "expected a Python list"),
])
def test_malformed_overrides_are_errors_that_name_the_key(item, message):
  with pytest.raises(ValueError, match=message):
    configs_io.load_config("configs/diffusion.py:shapes", [item])
