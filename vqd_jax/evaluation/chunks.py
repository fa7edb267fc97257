"""Sampling a long list of inputs in fixed-size chunks: one compiled program for every chunk."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sample_in_chunks(sample: Callable[[list[int], object], np.ndarray], count: int,
                     batch_size: int, seed: int) -> np.ndarray:
  """Calls ``sample(indices, key)`` on chunks of ``range(count)`` and stacks the results.

  Every chunk has ``batch_size`` indices (the last repeats its final index, so the sampler
  compiles once); its key is ``fold_in(key(seed), start)``, so a sample depends only on the seed
  and its position, not on how many come after it. Returns ``[count, ...]``: the padding rows
  are dropped.
  """
  import jax  # pylint: disable=import-outside-toplevel
  out = []
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    indices = list(range(start, stop)) + [stop - 1] * (batch_size - (stop - start))
    images = sample(indices, jax.random.fold_in(jax.random.key(seed), start))
    out.append(np.asarray(images)[:stop - start])
  return np.concatenate(out)
