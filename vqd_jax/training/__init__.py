"""Training: one loop (``loop.train_and_evaluate``) for every stage, a task per stage
(``vqvae_task``, ``diffusion_task``), the shared ``TrainState``, optimizers, orbax checkpoints,
metrics and the frozen autoencoder the diffusion stage reads tokens with."""
