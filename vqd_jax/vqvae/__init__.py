"""The VQ autoencoder: images <-> discrete tokens (VQ-VAE / VQGAN), its losses and codebook upkeep.

Pure Flax modules and functions; the trainer is :mod:`vqd_jax.training.vqvae_task`.

* :class:`VQAutoencoder` - conv encoder/decoder with diffusers ``VQModel`` submodule names (so public
  checkpoints convert by renaming, see :mod:`vqd_jax.interop.vqvae`). Methods ``encode``,
  ``encode_latents``, ``decode_indices``, ``decode_latents``, ``__call__``. NHWC images in [-1, 1].
* :class:`VectorQuantizer` - nearest code, straight-through gradients, commitment/codebook losses,
  usage and EMA statistics in the ``'vq_stats'`` collection.
* :mod:`~vqd_jax.vqvae.codebook` - codebook initialisation from encoder outputs (k-means++), EMA,
  dead-code restart (:func:`maintain_codebook`) and :func:`prune_codebook`.
* Losses: :func:`reconstruction_loss`, hinge GAN with :class:`PatchDiscriminator` and the adaptive
  weight, and :class:`LPIPS` (weights: :func:`vqd_jax.interop.lpips.load_lpips_params`).
* :func:`encode_tokens` / :func:`decode_tokens` - uint8 images <-> int32 token grids.
"""

from vqd_jax.vqvae.autoencoder import Decoder
from vqd_jax.vqvae.autoencoder import Encoder
from vqd_jax.vqvae.autoencoder import VQAutoencoder
from vqd_jax.vqvae.codebook import CodebookSettings
from vqd_jax.vqvae.codebook import codebook_from_ema
from vqd_jax.vqvae.codebook import dead_codes
from vqd_jax.vqvae.codebook import kmeans_init
from vqd_jax.vqvae.codebook import maintain_codebook
from vqd_jax.vqvae.codebook import prune_codebook
from vqd_jax.vqvae.codebook import prune_vq_stats
from vqd_jax.vqvae.codebook import restart_dead_codes
from vqd_jax.vqvae.discriminator import PatchDiscriminator
from vqd_jax.vqvae.losses import adaptive_gan_weight
from vqd_jax.vqvae.losses import adopt_weight
from vqd_jax.vqvae.losses import generator_loss
from vqd_jax.vqvae.losses import hinge_discriminator_loss
from vqd_jax.vqvae.losses import last_layer_grad_norm
from vqd_jax.vqvae.losses import reconstruction_loss
from vqd_jax.vqvae.lpips import LPIPS
from vqd_jax.vqvae.quantizer import STATS as STATS_COLLECTION
from vqd_jax.vqvae.quantizer import VectorQuantizer
from vqd_jax.vqvae.quantizer import code_counts
from vqd_jax.vqvae.quantizer import nearest_codes
from vqd_jax.vqvae.quantizer import perplexity
from vqd_jax.vqvae.tokens import decode_tokens
from vqd_jax.vqvae.tokens import encode_tokens
from vqd_jax.vqvae.tokens import float_to_uint8
from vqd_jax.vqvae.tokens import images_to_float
from vqd_jax.vqvae.tokens import reconstruct

__all__ = [
    "CodebookSettings", "Decoder", "Encoder", "LPIPS", "PatchDiscriminator", "STATS_COLLECTION",
    "VQAutoencoder", "VectorQuantizer", "adaptive_gan_weight", "adopt_weight", "code_counts",
    "codebook_from_ema", "dead_codes", "decode_tokens", "encode_tokens", "float_to_uint8",
    "generator_loss", "hinge_discriminator_loss", "images_to_float", "kmeans_init",
    "last_layer_grad_norm", "maintain_codebook", "nearest_codes", "perplexity",
    "prune_codebook", "prune_vq_stats", "reconstruct", "reconstruction_loss", "restart_dead_codes",
]
