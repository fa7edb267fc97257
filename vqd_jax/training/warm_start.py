"""Starting a diffusion run from another run's weights (``config.init_from``).

eDiff-I's experts begin as copies of a trained single denoiser: the new run reads the base run's
latest ``params``, ``ema_params`` and loss history (the importance-sampling statistics), and copies
its text assets (word tokenizer or CLIP description) so that the text encoder sees the same
vocabulary. The optimizer starts afresh under the new run's own schedule.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax
import ml_collections

from vqd_jax import build
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.sharding import on_first_local_device

# Fields that must agree between a base run and a run started from it.
_SAME = ("model", "text", "diffusion.num_timesteps", "diffusion.schedule", "data.image_size",
         "vqvae_workdir")


def _open_base(init_from: str) -> tuple[ckpt_lib.Checkpointer, int, ml_collections.ConfigDict]:
  if not os.path.isdir(os.path.join(init_from, "checkpoints")):
    raise FileNotFoundError(
        f"config.init_from={init_from!r} holds no checkpoints/ folder: point it at the workdir "
        "of a trained diffusion run (python -m vqd_jax.train --config configs/diffusion.py:shapes "
        "--workdir BASE_DIR ...).")
  ckpt = ckpt_lib.Checkpointer(init_from, async_save=False, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    raise FileNotFoundError(f"config.init_from={init_from!r} has no finished checkpoint; train "
                            "the base run first or fix the path.")
  base = ml_collections.ConfigDict(ckpt.restore_config(step))
  return ckpt, step, base


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value.get(part) if value is not None else None
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def check_base(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises a clear error unless ``config.init_from`` is a diffusion run this config can start
  from; copies its text assets into ``workdir`` (once)."""
  ckpt, _, base = _open_base(config.init_from)
  ckpt.close()
  if base.get("stage") != "diffusion":
    raise ValueError(f"config.init_from={config.init_from!r} holds a {base.get('stage')!r} run, "
                     "not a diffusion run.")
  if base.get("experts") is not None and base.experts.num:
    raise ValueError(f"config.init_from={config.init_from!r} is already an ensemble of "
                     f"{base.experts.num} experts; start from a single-denoiser run.")
  for name in _SAME:
    if _field(base, name) != _field(config, name):
      raise ValueError(f"config.{name} differs from the base run in config.init_from "
                       f"({_field(base, name)!r} there, {_field(config, name)!r} here); set "
                       f"--config.{name} to the base's value.")
  for asset in (build.WORD_TOKENIZER_FILE, build.CLIP_TEXT_DIR):
    source, target = os.path.join(config.init_from, asset), os.path.join(workdir, asset)
    if os.path.exists(source) and not os.path.exists(target) and jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      if os.path.isdir(source):
        shutil.copytree(source, target)
      else:
        shutil.copyfile(source, target)


def restore_base(init_from: str, state: Any, base_params: Callable[[Any], Any]
                 ) -> tuple[Any, Any, dict[str, Any]]:
  """``(params, ema_params or None, loss history fields)`` of the base run's latest checkpoint.

  ``base_params`` maps this run's (abstract) params to the base's tree (experts drop their
  leading axis); the arrays come back on this process's first device.
  """
  ckpt, step, base = _open_base(init_from)
  shapes = base_params(jax.eval_shape(lambda p: p, state.params))
  abstract = {"params": on_first_local_device(shapes),
              "extra": {"loss_history": on_first_local_device(
                  {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                   for k, v in vars(state.extra["loss_history"]).items()})}}
  if base.train.ema_decay > 0:
    abstract["ema_params"] = abstract["params"]
  try:
    restored = ckpt.restore_subtree(step, abstract)
  finally:
    ckpt.close()
  return (restored["params"], restored.get("ema_params"),
          dict(restored["extra"]["loss_history"]))
