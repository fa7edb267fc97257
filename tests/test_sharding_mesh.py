"""Mesh construction from config and the logical-axis rule table."""

import jax
import pytest

from vqd_jax import sharding


def test_minus_one_fills_remaining_devices():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  assert dict(zip(mesh.axis_names, mesh.devices.shape)) == {
      "data": jax.device_count(), "fsdp": 1, "tensor": 1}


def test_product_mismatch_names_the_device_count():
  n = jax.device_count()
  with pytest.raises(ValueError, match=f"{n} are available"):
    sharding.make_mesh({"data": n + 1, "fsdp": 1, "tensor": 1})


def test_unknown_axis_and_two_wildcards_are_rejected():
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    sharding.make_mesh({"model": 1})
  with pytest.raises(ValueError, match="At most one"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def test_rules_from_config_accepts_lists():
  rules = sharding.rules_from_config([["batch", ["data", "fsdp"]], ["embed", None]])
  assert rules == (("batch", ("data", "fsdp")), ("embed", None))
  assert sharding.rules_from_config(None) == sharding.DEFAULT_RULES
