"""Run-level tests: a private cache and memoized data for every test here (see
tests/conftest.py).
"""

import pytest


@pytest.fixture(autouse=True)
def _run_env(isolated_cache, memoized_data):
    return isolated_cache
