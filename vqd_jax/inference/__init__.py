"""Inference: loading a trained run or a pretrained folder, generating tokens, the pipeline API.

Imports nothing from ``vqd_jax.training``, ``vqd_jax.data`` or the command lines.

* ``load_autoencoder`` / ``FrozenAutoencoder``: a trained VQ autoencoder, frozen.
* ``load_diffusion_run`` / ``DiffusionRun``: a trained diffusion run, ready to sample.
* ``TokenGenerator.generate_tokens``: conditioning -> tokens, the one sampling path.
* ``VQDiffusionPipeline``: prompts -> images for a run or a diffusers checkpoint.
* ``load_ar_run`` / ``ARPipeline``: the same for an autoregressive run (``configs/ar.py``).
* ``CTFPipeline``: CTF's two runs (coarse labels, then the codes; ``configs/ctf.py``).
"""

from vqd_jax.inference.ar_pipeline import ARPipeline
from vqd_jax.inference.autoencoder import FrozenAutoencoder
from vqd_jax.inference.ctf_pipeline import CTFPipeline
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.inference.loading import (ARRun, DiffusionRun, load_ar_run, load_autoencoder,
                                      load_diffusion_run)
from vqd_jax.inference.pipeline import VQDiffusionPipeline

__all__ = ["ARPipeline", "ARRun", "CTFPipeline", "DiffusionRun", "FrozenAutoencoder",
           "TokenGenerator", "VQDiffusionPipeline", "load_ar_run", "load_autoencoder",
           "load_diffusion_run"]
