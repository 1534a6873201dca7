"""A user's multi-process journey on the CPU (``train_net.py --num-gpus N MODEL.DEVICE cpu``: DDP
over gloo): a bad process count is refused before anything starts, and a model whose config asks
for SyncBN ("SyncBN" / "nnSyncBN", torch's GPU-only ``nn.SyncBatchNorm``) trains on the CPU with
its batch statistics synchronised over the processes."""

import pytest
import torch
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

from glip_d2.engine import check_process_count, create_glip_ddp_model
from tests.gloo import run_gloo_workers


@pytest.mark.parametrize("count", [0, -1])
def test_a_process_count_below_one_is_refused(count):
    # before: Detectron2's launch ran one process for 0 or a negative --num-gpus, silently
    with pytest.raises(ValueError, match=rf"--num-gpus {count}.*at least 1"):
        check_process_count(count)


def test_a_valid_process_count_passes():
    check_process_count(1)
    if not torch.cuda.is_available():
        check_process_count(3)  # CPU processes over gloo, any number of them


def _syncbn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8) * 3 + 1  # one image per process


def _syncbn_worker(rank, world, result_file):
    torch.set_num_threads(1)
    net = _syncbn_net()
    params = list(net.parameters())  # what the optimizer holds, built before the DDP wrapper
    model = create_glip_ddp_model(net, broadcast_buffers=False)
    assert [p for p in model.module.parameters()] == params  # the same Parameter objects
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    out = model(_images()[rank : rank + 1])
    out.sum().backward()  # before: "SyncBatchNorm expected input tensor to be on GPU"
    if rank == 0:
        bn = model.module[1]
        torch.save({"mean": bn.running_mean.clone(), "var": bn.running_var.clone(),
                    "keys": sorted(model.module.state_dict())}, result_file)


@pytest.mark.heavy(8)
def test_syncbn_model_trains_on_the_cpu_with_statistics_of_all_processes(tmp_path, one_thread):
    result = tmp_path / "bn.pt"
    run_gloo_workers(_syncbn_worker, 2, tmp_path, str(result))
    got = torch.load(result, weights_only=True)
    # one process with plain BN on the whole batch: the same running statistics
    ref = _syncbn_net()
    assert sorted(got["keys"]) == sorted(ref.state_dict())  # checkpoints keep their keys
    bn = nn.BatchNorm2d(4)
    bn.train()
    bn(ref[0](_images()))
    assert torch.allclose(got["mean"], bn.running_mean, atol=1e-6)
    # Detectron2's NaiveSyncBatchNorm moves running_var towards the biased batch variance
    x = ref[0](_images())
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(got["var"], 0.9 + 0.1 * biased, atol=1e-5)


def test_a_single_process_model_is_left_as_it_is():
    net = _syncbn_net()
    assert create_glip_ddp_model(net) is net
    assert isinstance(net[1], nn.SyncBatchNorm)
    assert not isinstance(net[1], NaiveSyncBatchNorm)
