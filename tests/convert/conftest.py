"""Fixtures shared by the converter tests (helpers shared by the parity tests: ``parity_utils.py``)."""
import json

import pytest


@pytest.fixture(scope="module")
def max_err():
    """Largest differences seen per comparison (printed at the end of each test module, for docs/parity_*.md; run
    the parity tests with ``-s`` to see them)."""
    errs = {}
    yield errs
    print("\nmeasured max differences:", json.dumps(errs, indent=1, default=float))
