"""q_posterior and the schedule buffers against diffusers' VQDiffusionScheduler (PyTorch, CPU)."""

import numpy as np
import pytest

from vqd_jax.diffusion import MaskAndReplace

torch = pytest.importorskip("torch", reason="reference tests compare with PyTorch diffusers")
scheduling = pytest.importorskip("diffusers.schedulers.scheduling_vq_diffusion",
                                 reason="reference tests need diffusers")

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module", params=[7, 4096], ids=["K7", "K4096"])
def pair(request):
  k = request.param
  return k, scheduling.VQDiffusionScheduler(num_vec_classes=k + 1), MaskAndReplace(k, 100)


def test_schedule_buffers_are_bit_identical(pair):
  _, scheduler, process = pair
  diagonal = lambda x: np.asarray(x)[np.arange(100), np.arange(100)]
  np.testing.assert_array_equal(scheduler.log_at.numpy(), diagonal(process.log_step_keep))
  np.testing.assert_array_equal(scheduler.log_bt.numpy(), diagonal(process.log_step_replace))
  np.testing.assert_array_equal(scheduler.log_ct.numpy(), diagonal(process.log_step_mask))
  # diffusers keeps the x0 sentinel last; we keep it first.
  for theirs, ours in ((scheduler.log_cumprod_at, process.log_cum_keep),
                       (scheduler.log_cumprod_bt, process.log_cum_replace),
                       (scheduler.log_cumprod_ct, process.log_cum_mask)):
    np.testing.assert_array_equal(np.roll(theirs.numpy(), 1), np.asarray(ours))


@pytest.mark.parametrize("t", [1, 2, 50, 98, 99])
def test_q_posterior_matches_diffusers(pair, t):
  k, scheduler, process = pair
  rng = np.random.default_rng(t)
  batch, tokens = 2, 24
  log_p = torch.log_softmax(torch.tensor(rng.normal(size=(batch, tokens, k)) * 3.0), -1).float()
  x_t = rng.integers(0, k, size=(batch, tokens))
  x_t[rng.random((batch, tokens)) < 0.5] = k  # half masked
  theirs = scheduler.q_posterior(log_p.permute(0, 2, 1), torch.tensor(x_t), t)
  theirs = theirs.permute(0, 2, 1).numpy()
  ours = np.asarray(process.q_posterior(log_p.numpy(), x_t.astype(np.int32), t))
  assert ours.shape == theirs.shape == (batch, tokens, k + 1)
  shown = theirs > -60
  assert np.all(ours[~shown] <= -55)  # what diffusers calls negligible is negligible here too
  np.testing.assert_allclose(ours[shown], theirs[shown], atol=1e-4, rtol=0)
