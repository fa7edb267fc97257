"""vqd_jax: VQ-Diffusion text-to-image synthesis in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="vqd_jax",
    version="0.1.0",
    description="VQ-Diffusion (and Improved VQ-Diffusion) text-to-image synthesis in JAX/Flax, TPU-first.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # configs/ stays at the top of the repository and installs as vqd_jax.configs, so
    # `--config configs/diffusion.py:tiny` resolves from any directory (vqd_jax.configs_io).
    packages=find_packages(include=["vqd_jax", "vqd_jax.*"]) + ["vqd_jax.configs"],
    package_dir={"vqd_jax.configs": "configs"},
    python_requires=">=3.10",
    # Lower bounds only: pinned JAX stacks rot (see dalle-mini's history).
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "grain>=0.2.10",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.5",
        "ml_collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "pillow>=10.0",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "transformers>=4.45",
    ],
    extras_require={
        # Reference tests compare against the PyTorch originals. torch==2.13.0 is the CPU build on
        # the CI machines; any torch>=2.1 works for the tests themselves.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.1", "diffusers>=0.30",
                 "scikit-learn>=1.3", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6",
                 "matplotlib>=3.7"],
    },
)
