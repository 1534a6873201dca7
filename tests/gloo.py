"""Run a function in several spawned processes joined by a gloo process group, and fail (never
hang) when they do not finish.

Why the workers end with ``os._exit`` instead of ``dist.destroy_process_group()``: in torch 2.3
(and until pytorch/pytorch#154976, merged in June 2025) the ProcessGroupGloo destructor keeps the
GIL while it waits for the group's worker threads (pytorch/pytorch#56297). A worker thread
that is still freeing the last collective's tensor needs the GIL to drop that tensor's Python
object, so destroying the group right after a collective can deadlock. On torch 2.3.1 the
two-worker tests hung in 2 of 26 runs on a loaded CPU (py-spy: main thread in
``~ProcessGroupGloo``, gloo thread in ``~AsyncAllreduceWork`` waiting for the GIL), and one such
hang ate a whole CI budget. The workers meet at a barrier, then leave without running any destructor.
"""

import datetime
import os
import sys
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

# a collective or the rendezvous that waits this long has lost its peer
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def _worker(rank, fn, world, init_file, args):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )
    fn(rank, world, *args)  # an exception travels to the parent through torch's spawn wrapper
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_gloo_workers(fn, world, tmp_path, *args, timeout=180.0):
    """Call ``fn(rank, world, *args)`` in ``world`` spawned processes, inside a gloo group.

    ``fn`` must be a module-level function (it is pickled). Raises the worker's error if one
    fails; fails the test, after killing the workers, if they are still running after
    ``timeout`` seconds.
    """
    context = mp.start_processes(
        _worker,
        args=(fn, world, str(tmp_path / "gloo_init"), args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"gloo workers {alive} of {world} still running after {timeout:.0f} s; killed")
