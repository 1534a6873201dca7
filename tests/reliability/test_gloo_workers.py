"""The multi-process test harness (tests/gloo.py) reports a failing or hung worker instead of
waiting for it forever."""

import time

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException

from tests.gloo import run_gloo_workers


def _second_worker_raises(rank, world):
    dist.barrier()
    if rank == 1:
        raise ValueError("worker 1 gave up")


def _second_worker_hangs(rank, world):
    if rank == 1:
        time.sleep(600)


def _sum_ranks(rank, world, result_file):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    if rank == 0:
        torch.save(t, result_file)


def test_workers_share_a_group_and_end(tmp_path):
    run_gloo_workers(_sum_ranks, 3, tmp_path, str(tmp_path / "sum.pt"))
    assert torch.load(tmp_path / "sum.pt").tolist() == [3.0]  # 0 + 1 + 2


def test_a_worker_error_reaches_the_test(tmp_path):
    with pytest.raises(ProcessRaisedException, match="worker 1 gave up"):
        run_gloo_workers(_second_worker_raises, 2, tmp_path)


def test_a_hung_worker_fails_the_test_after_the_timeout(tmp_path):
    # worker 1 sleeps, worker 0 waits for it at the closing barrier
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"gloo workers \[0, 1\] of 2 still running after 5 s"):
        run_gloo_workers(_second_worker_hangs, 2, tmp_path, timeout=5)
    assert time.monotonic() - start < 30
