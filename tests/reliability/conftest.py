"""Fixtures of the reliability tests: a private parse cache, dataset names cleaned up after."""

import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog


@pytest.fixture(autouse=True)
def parse_cache(tmp_path, monkeypatch):
    """Every test gets its own parse cache (never the user's ~/.cache)."""
    folder = tmp_path / "parse_cache"
    monkeypatch.setenv("GLIP_D2_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def names():
    """Make unique dataset names; whatever a test registers under them is removed afterwards."""
    made = []

    def make(prefix="rel"):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        return name

    yield make
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
