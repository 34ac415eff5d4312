"""jaxdet: object detection and instance segmentation in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="jaxdet",
    version="0.1.0",
    description="Object detection and instance segmentation in JAX/Flax, with the reference model zoos' semantics.",
    packages=find_packages(include=["jaxdet", "jaxdet.*", "checkpoints_convert", "checkpoints_convert.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "pycocotools>=2.0.7",
        "grain>=0.2.10",
        "pillow>=10",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "psutil",
    ],
    extras_require={
        # torchvision is the reference implementation for the parity tests; never imported by the library.
        "test": ["pytest", "torch==2.14.1", "torchvision==0.29.1"],
    },
)
