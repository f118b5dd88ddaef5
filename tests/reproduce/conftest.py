"""Reproduction tests write teacher-output stores: keep them in a private cache."""

import pytest


@pytest.fixture(autouse=True)
def _run_env(isolated_cache):
    return isolated_cache
