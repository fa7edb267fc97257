"""Evaluation of generated images.

:mod:`vqd_jax.evaluation.shapes` scores samples of the procedural shapes data against their
captions (colour, shape, size, count and spatial relation); ``python -m vqd_jax.evaluate shapes``
runs it on a samples folder.

:mod:`vqd_jax.evaluation.fid` holds FID, KID and the Inception Score over Inception features
(numpy/scipy, float64; statistics files in pytorch-fid's ``.npz`` format),
:mod:`vqd_jax.evaluation.features` reads image folders into the features of the FID InceptionV3
(:mod:`vqd_jax.evaluation.inception`), and ``python -m vqd_jax.evaluate fid | kid | is`` runs them
on a samples folder (:mod:`vqd_jax.evaluation.inception_cli`).

``python -m vqd_jax.evaluate all`` (:mod:`vqd_jax.evaluation.all_cli`) samples a trained run on
its dataset's evaluation captions (:mod:`vqd_jax.evaluation.heldout`) and reports every metric
its inputs allow (:mod:`vqd_jax.evaluation.all_metrics`, :mod:`vqd_jax.evaluation.report`),
including a Fréchet distance over CLIP image features (:mod:`vqd_jax.evaluation.clip_features`).
"""
