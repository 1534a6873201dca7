"""Shared pytest fixtures."""

from pathlib import Path

import uuid

import numpy as np
import pytest
import torch

PARITY_NPZ = Path(__file__).resolve().parents[1] / ".." / "shared" / "parity" / "glip_t_parity.npz"


@pytest.fixture(scope="session")
def parity_npz():
    """The official GLIP-T parity fixture (see shared/parity/README.md)."""
    if not PARITY_NPZ.is_file():
        pytest.skip(f"parity fixture not found; put glip_t_parity.npz at {PARITY_NPZ.resolve()}")
    return np.load(PARITY_NPZ, allow_pickle=False)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (small models are faster so, and stay deterministic);
    use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def forget(*dataset_names):
    """Remove registrations made under fixed names (builtin-style registration tests)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in dataset_names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


@pytest.fixture
def private_parse_cache(tmp_path, monkeypatch):
    """A parse cache of the test's own (never the user's ~/.cache); made autouse per folder."""
    folder = tmp_path / "parse_cache"
    monkeypatch.setenv("GLIP_D2_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def names():
    """Make unique dataset names; whatever a test registers under them is removed afterwards."""
    made = []

    def make(prefix="test"):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        return name

    yield make
    forget(*made)
