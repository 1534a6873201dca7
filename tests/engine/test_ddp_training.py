"""Two processes (DDP over gloo, as `train_net.py --num-gpus 2` runs on the CPU) train GLIP as one
process trains on their whole batch: the ATSS losses' normalisers are summed over the processes as
in the official code, and GLIPv2's region-word contrastive loss gathers every process's regions
and words, so DDP's averaged gradient is the one-process gradient of the whole batch."""

import pytest
import torch
import torch.distributed as dist

from glip_d2.engine import create_glip_ddp_model
from tests.gloo import run_gloo_workers
from tests.helpers import make_input, model_with_losses

CAPTION = "red circle. blue square. green triangle"


def _model():
    model = model_with_losses(CONTRASTIVE_WEIGHT=1.0)
    for m in model.modules():  # the text encoder's dropout would draw differently per process
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _batch(model):
    """Two images of one size (no padding that depends on the batch), 2 boxes and 1 box."""
    return [
        make_input(model, CAPTION, [[10, 20, 70, 90], [100, 30, 170, 120]], [(0, 10), (12, 23)], seed=0),
        make_input(model, CAPTION, [[40, 40, 120, 150]], [(25, 39)], seed=1),
    ]


def _worker(rank, world, result_file):
    torch.set_num_threads(1)
    model = create_glip_ddp_model(_model(), broadcast_buffers=False)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    losses = model(_batch(model.module)[rank : rank + 1])  # each process its own image
    sum(losses.values()).backward()  # DDP averages the gradients over the processes
    logged = {}
    for k, v in sorted(losses.items()):  # Detectron2 logs the mean over processes
        v = v.detach().clone()
        dist.all_reduce(v)
        logged[k] = v / world
    if rank == 0:
        grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
        torch.save({"losses": logged, "grads": grads}, result_file)


@pytest.mark.heavy(15)
def test_two_processes_train_as_one_process_on_their_whole_batch(tmp_path, one_thread):
    result = tmp_path / "ddp.pt"
    run_gloo_workers(_worker, 2, tmp_path, str(result))
    got = torch.load(result)
    model = _model()
    losses = model(_batch(model))
    sum(losses.values()).backward()
    assert set(got["losses"]) == set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness", "loss_contrastive"}
    for k, v in losses.items():
        assert got["losses"][k].item() == pytest.approx(v.item(), rel=1e-5), k
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got["grads"]) == set(want) and len(want) > 50
    for n, g in want.items():  # float summation order differs: at most 1e-4 of a tensor's largest entry
        # here, apart from the attention key biases, whose gradient is 0 in exact arithmetic (1e-10)
        bound = 1e-3 * g.abs().max().item() + 1e-9
        torch.testing.assert_close(got["grads"][n], g, rtol=0, atol=bound, msg=n)
