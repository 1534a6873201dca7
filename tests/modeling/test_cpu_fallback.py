"""Detectron2's build_model(cfg) with MODEL.DEVICE "cuda" (Detectron2's default) builds glip_d2's
meta-architectures on a machine without CUDA: on the CPU, with a log line (issue 16, item 6)."""

import pytest
import torch
from detectron2.modeling import build_model

import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
from tests.helpers import tiny_cfg
from tests.roi.roi_helpers import two_stage_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("make_cfg", [tiny_cfg, two_stage_cfg], ids=["GLIP", "LanguageAwareRCNN"])
def test_build_model_with_cuda_falls_back_to_cpu_without_cuda(make_cfg, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_cfg()
    cfg.MODEL.DEVICE = "cuda"
    with caplog.at_level("WARNING", logger="glip_d2.device"):
        model = build_model(cfg)
    name = type(model).__name__
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.device.type == "cpu"
    assert f"{name}.to('cuda') (Detectron2's build_model moves a model to MODEL.DEVICE), but CUDA " \
           "is not available; using CPU." in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="glip_d2.device"):
        assert model.to(1) is model and model.to(device=torch.device("cuda", 0)) is model
    assert f"{name}.to('cuda:1')" in caplog.text and f"{name}.to('cuda:0')" in caplog.text
    # other arguments of .to are nn.Module.to's
    assert next(model.to(torch.float64).parameters()).dtype == torch.float64
    assert next(model.to("cpu", torch.float32).parameters()).dtype == torch.float32


def test_with_cuda_present_to_is_module_to(monkeypatch):
    """Only an absent CUDA changes the device asked for."""
    model = build_model(tiny_cfg())
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: seen.append((a, k)) or self)
    model.to("cuda:1")
    model.to(device="cuda")
    assert seen == [(("cuda:1",), {}), ((), {"device": "cuda"})]
