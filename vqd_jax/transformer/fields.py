"""The fields of a denoiser, read off the model dataclass (one list, kept by the class itself).

``architecture_fields(Text2ImageTransformer)`` is every field that describes a trained model: all
dataclass fields except the run options (``dtype``, ``param_dtype``, ``remat``) and Flax's own
(``parent``, ``name``). Pipelines, exports and checkpoint loaders use it instead of lists of names::

  fields = architecture(pipe.transformer)          # {"num_classes": 16, "height": 4, ...}
  same_model = Text2ImageTransformer(**fields)

:func:`check_config_fields` validates a config's ``model`` block against the same dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from vqd_jax.transformer.model import Text2ImageTransformer

# How a model runs, not what it computes: never part of a saved or exported model description.
RUN_OPTIONS = ("dtype", "param_dtype", "remat")
_FLAX_FIELDS = ("parent", "name")
# Fields that change only how parameters are initialised: any value loads the same checkpoints.
INIT_ONLY = ("position_init",)


def _dataclass(model_or_cls: Any) -> type:
  cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
  if not dataclasses.is_dataclass(cls):
    raise TypeError(f"{cls.__name__} is not a dataclass (a Flax module class or instance).")
  return cls


def module_fields(model_or_cls: Any = Text2ImageTransformer) -> tuple[str, ...]:
  """Every constructor field of a Flax module (run options included, ``parent``/``name`` not)."""
  return tuple(f.name for f in dataclasses.fields(_dataclass(model_or_cls))
               if f.name not in _FLAX_FIELDS)


def architecture_fields(model_or_cls: Any = Text2ImageTransformer) -> tuple[str, ...]:
  """The fields that describe a trained model: :func:`module_fields` minus :data:`RUN_OPTIONS`."""
  return tuple(name for name in module_fields(model_or_cls) if name not in RUN_OPTIONS)


def architecture(model: Any) -> dict[str, Any]:
  """``{field: value}`` of ``model`` for every :func:`architecture_fields` name."""
  return {name: getattr(model, name) for name in architecture_fields(model)}


def architecture_defaults(model_or_cls: Any = Text2ImageTransformer) -> dict[str, Any]:
  """The dataclass defaults of the architecture fields that have one (the official layout)."""
  names = set(architecture_fields(model_or_cls))
  out = {}
  for f in dataclasses.fields(_dataclass(model_or_cls)):
    if f.name in names and f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.name in names and f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def check_config_fields(names: Iterable[str], model_or_cls: Any = Text2ImageTransformer, *,
                        where: str = "config.model",
                        derived: Mapping[str, str] | None = None) -> None:
  """Raises ValueError naming any of ``names`` that ``model_or_cls`` has no field for.

  Args:
    names: the keys of a config block (e.g. ``config.model.keys()``).
    model_or_cls: the module class (or instance) the block configures.
    where: the block's path, for the message ("" for plain keyword arguments).
    derived: fields the run sets from elsewhere, each with where it comes from
      (``{"num_classes": "the autoencoder's codebook"}``); the block may not set those.
  """
  cls = _dataclass(model_or_cls)
  valid = module_fields(cls)
  derived = dict(derived or {})
  settable = ", ".join(n for n in valid if n not in derived)
  for name in names:
    label = f"{where}.{name}" if where else repr(name)
    if name in derived:
      raise ValueError(f"{label} cannot be set: {cls.__name__}.{name} comes from {derived[name]}. "
                       f"Valid fields: {settable}.")
    if name not in valid:
      raise ValueError(f"Unknown {cls.__name__} fields {[name]}: {label} is not a field of "
                       f"{cls.__name__}. Valid fields: {settable}.")
