"""Pretrained interop: diffusers/transformers checkpoints <-> vqd_jax params.

Flax submodules are named after the public PyTorch checkpoints, so each converter is
``state_dict.state_dict_to_params`` plus a short rename table: ``vqvae`` (VQModel), ``transformer``
(Transformer2DModel), ``clip`` (CLIPTextModel), ``null_embedding`` (the learned classifier-free
embedding) and ``export``/``diffusers_pipeline`` for whole pipeline folders. Loading never executes
code: safetensors, or torch files only through ``torch.load(weights_only=True)``.
"""
