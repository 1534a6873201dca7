"""GLIPATSSHead losses under DDP: every worker makes the same collectives, whatever its batch.

A worker whose images have no positive anchor (no ground-truth box, e.g. a negative-only batch)
must still take part in the all-reduce of the centerness-target sum that the others make, as the
official loss does (``reduce_sum(centerness_flatten.new_tensor([0.0]))``); otherwise the
workers' collectives pair up wrongly (wrong normalisers) or hang.
"""
import json
from unittest import mock

import pytest
import torch
import torch.distributed as dist

from tests.gloo import run_gloo_workers


def _head_inputs(seed: int, with_box: bool):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(1, 64, s, s, generator=g) for s in (16, 8, 4, 2, 1)]
    hidden = torch.randn(1, 6, 384, generator=g)
    masks = torch.ones(1, 6, dtype=torch.long)
    lang = dict(hidden=hidden, embedded=hidden * masks[..., None], masks=masks)
    pmap = torch.zeros(1 if with_box else 0, 6, dtype=torch.bool)
    boxes = torch.zeros(0, 4)
    if with_box:
        pmap[0, 1:3] = True
        boxes = torch.tensor([[20.0, 24.0, 90.0, 100.0]])
    return feats, lang, [boxes], [pmap]


def _ddp_worker(rank, world, out_file):
    from glip_d2.modeling.heads import GLIPATSSHead
    from glip_d2.modeling.heads import grounding_head
    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    head = GLIPATSSHead(tiny_cfg(), language_dim=384).eval()
    feats, lang, boxes, pmaps = _head_inputs(rank, with_box=rank == 0)
    with torch.no_grad():
        out = head(feats, lang)
        losses = head.losses(out, boxes, pmaps)
        # the next collective of the training step must meet its partner on the other worker
        marker = torch.tensor([float(rank + 1)])
        dist.all_reduce(marker)
        assert marker.item() == 3.0, f"rank {rank}: collectives paired wrongly ({marker.item()})"
        with mock.patch.object(grounding_head.comm, "get_world_size", return_value=1):
            alone = head.losses(out, boxes, pmaps)
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump({"ddp": float(losses["loss_box_reg"]), "alone": float(alone["loss_box_reg"])}, f)


@pytest.mark.heavy(8)
def test_worker_without_positives_joins_the_centerness_all_reduce(tmp_path):
    result = tmp_path / "result.json"
    run_gloo_workers(_ddp_worker, 2, tmp_path, str(result), timeout=150.0)
    got = json.loads(result.read_text())
    # the centerness sum averaged over 2 workers, one of which has none: half the normaliser
    assert got["ddp"] == pytest.approx(2 * got["alone"], rel=1e-5)
