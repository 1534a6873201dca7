"""Model EMA: the update rule, evaluation with EMA weights, and loading them for --eval-only,
also for a model wrapped in DDP."""

import logging

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


def test_ema_of_a_wrapped_model_keeps_the_models_own_keys():
    net = _net().eval()
    wrapped = nn.DataParallel(net)  # on the CPU a plain wrapper with DDP's "module." state keys
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    ema = ModelEMA(wrapped, decay=0.5)
    assert set(ema.state_dict()) == set(net.state_dict())
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    ema.update(wrapped)
    torch.testing.assert_close(ema.shadow["0.weight"], w0 + 1.0)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    with ema_weights(ema, wrapped):  # train_net evaluates the DDP model with the EMA weights
        torch.testing.assert_close(net[0].weight, w0 + 1.0)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    # the EMA of a multi-process run loads into a one-process model (--eval-only, a resume)
    plain = _net()
    assert load_ema_for_eval(plain, {"ema": ema.state_dict()})
    torch.testing.assert_close(plain[0].weight, w0 + 1.0)


def test_ema_saved_with_the_wrapper_prefix_loads():
    net = _net()
    old = {"module." + k: v + 1 for k, v in net.state_dict().items()}  # a multi-process run's, before
    plain = _net()
    assert load_ema_for_eval(plain, {"ema": old})
    torch.testing.assert_close(plain[0].bias, net[0].bias + 1)
    ema = ModelEMA(_net(), decay=0.5)
    ema.load_state_dict(old)
    torch.testing.assert_close(ema.shadow["0.bias"], net[0].bias + 1)



def test_buffers_are_copied_not_averaged():
    """A buffer that a forward pass fills (as the prompt-tuning features) is taken as it is; an
    average started from its zeros would shrink it by 1 - d^n."""
    net = _net()
    net.register_buffer("cache", torch.zeros(3))
    ema = ModelEMA(net, decay=0.9)
    net.cache.fill_(5.0)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    assert torch.equal(ema.shadow["cache"], torch.full((3,), 5.0))
    assert torch.equal(ema.shadow["1.running_var"], net[1].running_var)
    assert not torch.equal(ema.shadow["0.weight"], net[0].weight)  # parameters are averaged


def _warnings_of(fn):
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    log = logging.getLogger("glip_d2.engine.ema")  # may not propagate (train_net's setup_logger)
    log.addHandler(handler)
    try:
        result = fn()
    finally:
        log.removeHandler(handler)
    return result, [r.getMessage() for r in seen if r.levelno >= logging.WARNING]


def test_start_from_restarts_only_the_entries_no_checkpoint_restored():
    net = _net()
    ema = ModelEMA(net, decay=0.5)
    saved = {k: torch.full_like(v, 7) for k, v in ema.state_dict().items() if k != "0.bias"}
    ema.load_state_dict(saved)
    with torch.no_grad():
        net[0].bias.fill_(-2.0)
        net[0].weight.fill_(-3.0)
    restarted, warnings = _warnings_of(lambda: ema.start_from(net))
    assert restarted == 1
    assert torch.equal(ema.shadow["0.bias"], torch.full((2,), -2.0))  # from the model
    assert torch.equal(ema.shadow["0.weight"], torch.full((2, 3), 7.0))  # from the checkpoint
    n = len(net.state_dict())
    assert [w.split(" (")[0] for w in warnings] == [f"The EMA checkpoint lacked 1 of the model's {n} entries"]
    fresh = ModelEMA(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.fill_(4.0)
    restarted, warnings = _warnings_of(lambda: fresh.start_from(net))
    assert (restarted, warnings) == (len(fresh.shadow), [])  # no checkpoint: an info line only
    assert torch.equal(fresh.shadow["0.weight"], net[0].weight)
