"""Fixtures of the reliability tests: a private parse cache for every test; ``names`` and
``forget`` come from tests/conftest.py."""

import pytest

from tests.conftest import forget  # noqa: F401  (tests import it from here)


@pytest.fixture(autouse=True)
def parse_cache(private_parse_cache):
    """Every test gets its own parse cache (never the user's ~/.cache)."""
    return private_parse_cache
