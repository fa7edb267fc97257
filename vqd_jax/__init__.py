"""vqd_jax: VQ-Diffusion text-to-image synthesis in JAX/Flax.

The package is layered so the folder tree shows the architecture:

* pure cores that import nothing from training or data:
  ``vqd_jax.vqvae`` (VQ autoencoder), ``vqd_jax.diffusion`` (mask-and-replace discrete diffusion math
  and samplers), ``vqd_jax.transformer`` (denoising transformer) and ``vqd_jax.text`` (tokenizers and
  text encoders);
* around them: ``vqd_jax.data`` (sources and grain pipelines), ``vqd_jax.training`` (one loop, a step
  function per stage, checkpointing, logging), ``vqd_jax.evaluation`` and ``vqd_jax.interop``
  (pretrained checkpoints);
* command lines: ``python -m vqd_jax.train | sample | evaluate | bench | convert``.
"""

__version__ = "0.1.0"
