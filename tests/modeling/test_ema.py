"""Model EMA: the update rule, evaluation with EMA weights, and loading them for --eval-only."""

import torch
from torch import nn

from glip_d2.engine import ModelEMA, ema_weights, load_ema_for_eval


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    return net


def test_ema_update_rule_and_integer_buffers():
    net = _net()
    ema = ModelEMA(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked.fill_(7)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert int(ema.shadow["1.num_batches_tracked"]) == 7  # copied, not averaged


def test_ema_weights_are_used_inside_and_restored_after():
    net = _net().eval()
    ema = ModelEMA(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.add_(2.0)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3)
    with ema_weights(ema, net):
        torch.testing.assert_close(net[0].weight, ema.shadow["0.weight"])
        inside = net(x)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    assert not torch.allclose(inside, net(x))


def test_load_ema_for_eval_from_a_checkpoint_dict():
    net = _net()
    ema = ModelEMA(net, decay=0.5)
    ema.shadow["0.bias"].fill_(3.0)
    assert load_ema_for_eval(net, {"ema": ema.state_dict(), "iteration": 9})
    assert torch.equal(net[0].bias, torch.full((2,), 3.0))
    assert not load_ema_for_eval(net, {"iteration": 9})  # raw weights stay
    assert torch.equal(net[0].bias, torch.full((2,), 3.0))
