"""Evaluation of generated images.

:mod:`vqd_jax.evaluation.shapes` scores samples of the procedural shapes data against their
captions (colour, shape, size, count and spatial relation); ``python -m vqd_jax.evaluate shapes``
runs it on a samples folder.
"""
