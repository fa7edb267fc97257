"""Mask-and-replace discrete diffusion (VQ-Diffusion, Improved VQ-Diffusion) in pure JAX.

Pure library: imports nothing from ``vqd_jax.training``, ``vqd_jax.data`` or the models. Tokens are
K real codes ``0..K-1`` plus [MASK] = K; arrays are channels last (``[B, N, K+1]`` over states,
``[B, N, K]`` for the model's log p(x0 | x_t)); ``t = 0..T-1`` is the code index of paper step
t+1 and ``t = -1`` stands for x0.

* ``MaskAndReplace(num_classes=K, num_timesteps=T, schedule="released" | "paper")``: the forward
  process as an immutable pytree, with ``q_pred``, ``q_sample`` and the exact (multi-step)
  ``q_posterior``. "released" follows the public code and diffusers (K·B̄ = 1e-6); "paper" the
  paper's text (final mask 0.9, replace 0.1). A config names the one it uses.
* ``losses``: ``diffusion_loss`` (variational bound + adaptive auxiliary loss, mask weights) and the
  importance-sampling state ``LossHistory`` with ``sample_timesteps`` / ``update_history``.
* ``experts``: eDiff-I expert ensembles, ``ExpertIntervals`` (which expert owns which t) and
  ``ExpertParams`` (weights stacked on a leading expert axis).
* ``sampling``: ``sample`` - full, fast (exact skip posterior), truncation, classifier-free
  guidance, the purity-prior sampler and inpainting/editing, each one ``lax.scan``.
"""

from vqd_jax.diffusion.experts import ExpertIntervals
from vqd_jax.diffusion.experts import ExpertParams
from vqd_jax.diffusion.guidance import classifier_free_guidance
from vqd_jax.diffusion.guidance import prepare_log_x0
from vqd_jax.diffusion.guidance import truncate
from vqd_jax.diffusion.guidance import uses_guidance
from vqd_jax.diffusion.logspace import LOG_EPS
from vqd_jax.diffusion.logspace import LOG_FLOOR
from vqd_jax.diffusion.logspace import index_to_log_onehot
from vqd_jax.diffusion.logspace import log_add_exp
from vqd_jax.diffusion.logspace import log_onehot_to_index
from vqd_jax.diffusion.logspace import sample_categorical
from vqd_jax.diffusion.losses import LossHistory
from vqd_jax.diffusion.losses import LossTerms
from vqd_jax.diffusion.losses import diffusion_loss
from vqd_jax.diffusion.losses import importance_weights
from vqd_jax.diffusion.losses import multinomial_kl
from vqd_jax.diffusion.losses import sample_timesteps
from vqd_jax.diffusion.losses import sample_top_timesteps
from vqd_jax.diffusion.losses import update_history
from vqd_jax.diffusion.process import MaskAndReplace
from vqd_jax.diffusion.sampling import Denoiser
from vqd_jax.diffusion.sampling import SamplerConfig
from vqd_jax.diffusion.sampling import evaluation_times
from vqd_jax.diffusion.sampling import sample
from vqd_jax.diffusion.schedules import SCHEDULES
from vqd_jax.diffusion.schedules import cumulative_schedule

__all__ = [
    "LOG_EPS", "LOG_FLOOR", "SCHEDULES", "Denoiser", "ExpertIntervals", "ExpertParams", "LossHistory", "LossTerms", "MaskAndReplace",
    "SamplerConfig", "classifier_free_guidance", "cumulative_schedule", "diffusion_loss",
    "evaluation_times", "importance_weights", "index_to_log_onehot", "log_add_exp",
    "log_onehot_to_index", "multinomial_kl", "prepare_log_x0", "sample", "sample_categorical",
    "sample_timesteps", "sample_top_timesteps", "truncate", "update_history", "uses_guidance",
]
