"""Shared pytest fixtures."""

from pathlib import Path

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
