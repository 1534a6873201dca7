"""Shared pytest fixtures."""

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

PARITY_NPZ = Path(__file__).resolve().parents[1] / ".." / "shared" / "parity" / "glip_t_parity.npz"


def pytest_configure(config):
    """Under pytest-xdist (scripts/test.sh runs one worker per core), give each worker an equal
    share of the cores for torch's intra-op threads: two workers with two threads each on two
    cores spend their time waiting for each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // workers))


# Modules whose tests share an expensive module fixture (a GLIP-T model built from the parity
# weights): under --heavy-first each goes to one pytest-xdist worker whole, so it is built once.
SHARED_FIXTURE_MODULES = ("tests/test_parity.py", "tests/test_train_parity.py")


def pytest_addoption(parser):
    parser.addoption(
        "--heavy-first", action="store_true",
        help="with pytest-xdist (-n N): hand out the tests marked heavy(seconds) first, longest first, "
        "then the rest one by one, keeping each module of SHARED_FIXTURE_MODULES on one worker "
        "(scripts/test.sh uses it)",
    )


def _block(nodeid):
    """The unit a test is scheduled in: its module for SHARED_FIXTURE_MODULES, else itself."""
    module = nodeid.split("::", 1)[0]
    return module if module in SHARED_FIXTURE_MODULES else nodeid


def pytest_collection_modifyitems(config, items):
    """--heavy-first: order the tests by the heavy(seconds) of their unit, longest first, so that no
    worker is handed a long test while the others run out of work. A plain run keeps pytest's
    order."""
    if not config.getoption("heavy_first"):
        return
    cost = {}
    for item in items:
        mark = item.get_closest_marker("heavy")
        cost[_block(item.nodeid)] = cost.get(_block(item.nodeid), 0) + (mark.args[0] if mark else 0)
    items.sort(key=lambda item: -cost[_block(item.nodeid)])  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--heavy-first: schedule the units of :func:`_block` in the workers' (sorted) order.

    (xdist's own ``--dist loadgroup`` would do this with ``xdist_group`` marks, but pytest-xdist
    3.8 tags the test ids in a way pytest 9.2 no longer sees, so the groups are split.)"""
    if not config.getoption("heavy_first"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class HeavyFirstScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _block(nodeid)

    config.option.loadscopereorder = False  # keep the sorted order
    return HeavyFirstScheduling(config, log)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``tmp_path_factory.mktemp`` for a module's shared fixtures. What they write (models and
    checkpoints of 0.1-1.3 GB) is removed when the module ends: kept to the end of the session,
    the suite's files filled 10 GB and CI's disk ran out. The tests' own ``tmp_path`` folders go
    when a test passes (``tmp_path_retention_policy = failed`` in pytest.ini)."""
    made = []

    def mktemp(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


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
