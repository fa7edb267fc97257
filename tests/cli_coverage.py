"""Which test exercises which command-line flag.

A test that asserts the *effect* of a flag (not that ``--help`` mentions it) says so with
``@covers("sample --steps", "evaluate all --seed")``; ``test_cli_flag_coverage`` enumerates every
flag of every command (argparse parsers and the trainer's absl flags) and checks the claims
against it. Names are ``"<command> [<subcommand>] --flag"``, or
``"<command> [<subcommand>] <dest>"`` for a positional argument.
"""

from __future__ import annotations

import argparse
import importlib

# Command as users type it after ``python -m`` (without ``vqd_jax.``) -> module with build_parser().
ARGPARSE_COMMANDS = {
    "sample": "vqd_jax.sample",
    "encode": "vqd_jax.encode",
    "quickstart": "vqd_jax.quickstart",
    "convert": "vqd_jax.convert",
    "evaluate": "vqd_jax.evaluate",
    "data.convert_folder": "vqd_jax.data.convert_folder",
    "bench sampler": "vqd_jax.benchmarks.sampler",
    "bench train": "vqd_jax.benchmarks.train",
    "bench memory": "vqd_jax.benchmarks.memory",
    "bench sample": "vqd_jax.benchmarks.sample_vs_diffusers",
    "bench models": "vqd_jax.benchmarks.models",
    "bench suite": "vqd_jax.benchmarks.suite",
    "bench chaos": "vqd_jax.benchmarks.chaos",
    "bench fuzz": "vqd_jax.benchmarks.fuzz",
}
ABSL_COMMANDS = {"train": "vqd_jax.train"}


def covers(*flags: str):
  """Marks a test as asserting the effect of these flags (read by test_cli_flag_coverage)."""
  def mark(test):
    test.cli_flags = flags
    return test
  return mark


def _argparse_flags(prefix: str, parser: argparse.ArgumentParser) -> set[str]:
  names = set()
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
      continue
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for sub_name, sub in action.choices.items():
        names |= _argparse_flags(f"{prefix} {sub_name}", sub)
    elif action.option_strings:
      names.add(f"{prefix} {max(action.option_strings, key=len)}")
    else:
      names.add(f"{prefix} {action.dest}")
  return names


def all_flags() -> set[str]:
  """Every flag of every command, named as ``covers`` takes them."""
  names = set()
  for command, module in ARGPARSE_COMMANDS.items():
    names |= _argparse_flags(command, importlib.import_module(module).build_parser())
  from absl import flags  # pylint: disable=import-outside-toplevel
  for command, module in ABSL_COMMANDS.items():
    importlib.import_module(module)
    for flag in flags.FLAGS.flags_by_module_dict()[module]:
      names.add(f"{command} --{flag.name}")
  return names
