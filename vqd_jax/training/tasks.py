"""Stage name -> task. One loop trains them all (``vqd_jax.training.loop``)."""

from __future__ import annotations

import ml_collections


def make_task(config: ml_collections.ConfigDict, workdir: str):
  """The :class:`vqd_jax.training.state.Task` for ``config.stage``."""
  # Imported lazily so a stage's dependencies load only when that stage runs.
  if config.stage == "vqvae":
    from vqd_jax.training.vqvae_task import VQVAETask  # pylint: disable=import-outside-toplevel
    return VQVAETask(config, workdir)
  if config.stage == "diffusion" and config.get("experts") is not None and config.experts.num:
    from vqd_jax.training.expert_task import ExpertDiffusionTask  # pylint: disable=import-outside-toplevel
    return ExpertDiffusionTask(config, workdir)
  if config.stage == "diffusion":
    from vqd_jax.training.diffusion_task import DiffusionTask  # pylint: disable=import-outside-toplevel
    return DiffusionTask(config, workdir)
  if config.stage == "ar":
    from vqd_jax.training.ar_task import ARTask  # pylint: disable=import-outside-toplevel
    return ARTask(config, workdir)
  if config.stage == "ctf_fine":
    from vqd_jax.training.ctf_task import FineTask  # pylint: disable=import-outside-toplevel
    return FineTask(config, workdir)
  if config.stage == "clip":
    from vqd_jax.training.clip_task import CLIPTask  # pylint: disable=import-outside-toplevel
    return CLIPTask(config, workdir)
  raise ValueError(f"config.stage must be 'vqvae', 'diffusion', 'ar', 'ctf_fine' or 'clip', got "
                   f"{config.stage!r}.")
