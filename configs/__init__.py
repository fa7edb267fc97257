"""Config files of ``python -m vqd_jax.train --config configs/<stage>.py:<preset>``.

Installed with the package as ``vqd_jax.configs`` (see setup.py), so the same paths resolve from any
working directory (``vqd_jax.configs_io.resolve``).
"""
