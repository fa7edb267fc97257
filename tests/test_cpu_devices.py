"""The host-device setup of the command lines (``vqd_jax.cpu_devices``).

Its effect on a fresh process (two devices, rows split over them, same samples) is checked in
``test_pipeline_export.py::test_rows_split_over_host_cpu_devices_sample_like_one_device``.
"""

import pytest

from vqd_jax import cpu_devices


def test_flags_add_devices_and_single_threaded_eigen():
  assert cpu_devices.with_host_device_flags("", 2) == (
      "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false")
  assert cpu_devices.with_host_device_flags("--xla_dump_to=/tmp/x", 4) == (
      "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4 "
      "--xla_cpu_multi_thread_eigen=false")


@pytest.mark.parametrize("flags, count", [
    ("--xla_force_host_platform_device_count=8", 2),  # the user's (or a test's) count wins
    ("", 1),  # one device: XLA's default, nothing to add
])
def test_flags_left_alone(flags, count):
  assert cpu_devices.with_host_device_flags(flags, count) == flags


def test_explicit_eigen_choice_is_kept():
  flags = cpu_devices.with_host_device_flags("--xla_cpu_multi_thread_eigen=true", 2)
  assert flags.count("xla_cpu_multi_thread_eigen") == 1 and "eigen=true" in flags
  assert "--xla_force_host_platform_device_count=2" in flags


def test_device_count_from_environment(monkeypatch):
  monkeypatch.setenv(cpu_devices.ENV_VAR, "3")
  assert cpu_devices.default_device_count() == 3
  for bad, message in (("two", "not an integer"), ("0", "must be >= 1")):
    monkeypatch.setenv(cpu_devices.ENV_VAR, bad)
    with pytest.raises(ValueError, match=f"VQD_CPU_DEVICES.*{message}"):
      cpu_devices.default_device_count()


def test_default_is_one_device_per_core_up_to_eight(monkeypatch):
  monkeypatch.delenv(cpu_devices.ENV_VAR, raising=False)
  for cores, expected in ((1, 1), (2, 2), (8, 8), (16, 1)):
    monkeypatch.setattr(cpu_devices.os, "sched_getaffinity", lambda _, n=cores: set(range(n)),
                        raising=False)
    assert cpu_devices.default_device_count() == expected


def test_training_commands_default_to_one_threaded_device(monkeypatch):
  monkeypatch.delenv(cpu_devices.ENV_VAR, raising=False)
  monkeypatch.setattr(cpu_devices.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
  assert cpu_devices.default_device_count(training=True) == 1
  assert cpu_devices.default_device_count() == 2
  monkeypatch.setenv(cpu_devices.ENV_VAR, "2")  # the environment still wins
  assert cpu_devices.default_device_count(training=True) == 2


def test_configure_does_nothing_once_jax_is_imported(monkeypatch):
  import jax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv(cpu_devices.ENV_VAR, "2")
  assert cpu_devices.configure() is None
  import os  # pylint: disable=import-outside-toplevel
  assert os.environ["XLA_FLAGS"] == ""
