"""Shared pytest fixtures: where the real data lives, and torchvision when installed."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXDET_SHARED_DATA", REPO.parent / "shared" / "data"))
COCO128 = SHARED_DATA / "coco128"


@pytest.fixture(scope="session")
def coco128_root() -> pathlib.Path:
    """The real coco128 folder (COCO layout). Tests that need it fail loudly if it is missing."""
    if not (COCO128 / "annotations" / "instances_train2017.json").exists():
        pytest.fail(f"coco128 not found at {COCO128}; set JAXDET_SHARED_DATA to the folder holding coco128/")
    return COCO128


def pytest_configure(config):
    """Share compiled XLA programs between tests (and runs): identical steps built by different tests
    compile once. Tests still count compilations per jitted function with ``_cache_size()``."""
    import jax

    cache = os.environ.get("JAXDET_TEST_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
