"""sample_in_chunks: fixed-size padded chunks, keys that depend only on the seed and position."""

import jax
import numpy as np

from vqd_jax.evaluation.chunks import sample_in_chunks


def _recording_sampler(calls):
  def sample(indices, key):
    calls.append(list(indices))
    noise = np.asarray(jax.random.uniform(key, (len(indices),)))
    return np.stack([np.asarray(indices, float), noise], axis=1)
  return sample


def test_chunks_are_padded_to_one_size_and_the_padding_is_dropped():
  calls = []
  out = sample_in_chunks(_recording_sampler(calls), count=7, batch_size=3, seed=0)
  assert calls == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
  np.testing.assert_array_equal(out[:, 0], np.arange(7))


def test_a_sample_depends_on_the_seed_and_its_position_not_on_the_count():
  short = sample_in_chunks(_recording_sampler([]), count=4, batch_size=2, seed=3)
  longer = sample_in_chunks(_recording_sampler([]), count=9, batch_size=2, seed=3)
  other_seed = sample_in_chunks(_recording_sampler([]), count=4, batch_size=2, seed=4)
  np.testing.assert_array_equal(short, longer[:4])
  assert not np.allclose(short[:, 1], other_seed[:, 1])
  assert len(set(np.round(longer[::2, 1], 6))) == 5  # every chunk has its own key
