"""Benchmarks behind ``python -m vqd_jax.bench <name>``; each module exposes ``main(argv) -> int``.

They print figures (speed, memory) and are never part of the test suite; ``sampler`` times the
jitted reverse-process loop against its denoiser alone.
"""
