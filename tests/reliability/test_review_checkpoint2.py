"""Review round 2 of the checkpoint code: EMA entries of another shape, tensors of another shape
refused for inference (two-stage models), and the RegionCLIP conversion command (its output
written atomically, a DDP student's "module." prefix, an unreadable student named)."""

import errno
import logging
import os

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from glip_d2.engine import ModelEMA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))


def test_an_ema_entry_of_another_shape_is_named_and_restarts_from_the_model(caplog):
    """A resumed EMA whose entry has another shape than the model's (the checkpointer skips such
    a model tensor when fine-tuning) was copied with ``copy_``: a (1,) entry silently broadcast
    into every element, another shape stopped the resume with a message naming no tensor."""
    net = _net()
    ema = ModelEMA(net, decay=0.5)
    state = ema.state_dict()
    state["0.bias"] = torch.tensor([7.0])  # broadcastable into the model's (2,)
    state["1.weight"] = torch.ones(1, 5)  # not broadcastable into (1, 2)
    with caplog.at_level(logging.WARNING, logger="glip_d2.engine.ema"):
        ema.load_state_dict(state)
        assert ema.start_from(net) == 2
    torch.testing.assert_close(ema.shadow["0.bias"], net[0].bias.detach())
    torch.testing.assert_close(ema.shadow["1.weight"], net[1].weight.detach())
    torch.testing.assert_close(ema.shadow["0.weight"], state["0.weight"])
    text = caplog.text
    assert "0.bias" in text and "(1,)" in text and "(2,)" in text
    assert "1.weight" in text and "(1, 5)" in text


def _detector_config(tmp_path):
    import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    config = tmp_path / "detector.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    backbone = {k: v for k, v in build_model(cfg).state_dict().items() if k.startswith("backbone.")}
    return config, backbone


def test_regionclip_convert_takes_a_ddp_students_state_dict(tmp_path, capsys):
    """A student state dict saved from its DDP wrapper has "module." before every key; nothing
    mapped and the command stopped with "No tensor ... maps onto the detector"."""
    from glip_d2.regionclip.convert import main as convert_main

    config, backbone = _detector_config(tmp_path)
    student = tmp_path / "student.pth"
    torch.save({"model": {"module." + k: v + 1 for k, v in backbone.items()}}, student)
    out = tmp_path / "init.pth"
    report = convert_main(
        ["--detector-config", str(config), "--student", str(student), "--output", str(out)]
    )
    key = next(k for k, v in backbone.items() if v.is_floating_point())
    assert key in report["loaded"] and not report["unmapped"]
    torch.testing.assert_close(torch.load(out, weights_only=True)["model"][key], backbone[key] + 1)


def test_regionclip_convert_writes_atomically(tmp_path, monkeypatch):
    """The output was written with a plain ``torch.save``: a failed write (a full disk) left a
    partial file that a later MODEL.WEIGHTS or a re-run reads as a checkpoint."""
    from glip_d2.regionclip.convert import main as convert_main

    config, backbone = _detector_config(tmp_path)
    student = tmp_path / "student.pth"
    torch.save({"model": backbone}, student)
    out = tmp_path / "init.pth"

    def full_disk(obj, f, *args, **kwargs):
        (open(f, "wb") if isinstance(f, (str, os.PathLike)) else f).write(b"\x00" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        convert_main(
            ["--detector-config", str(config), "--student", str(student), "--output", str(out)]
        )
    assert sorted(os.listdir(tmp_path)) == ["detector.yaml", "student.pth"]


def test_regionclip_convert_names_an_unreadable_student(tmp_path):
    """A truncated student file stopped with torch's zip-reader message, naming no file."""
    from glip_d2.regionclip.convert import main as convert_main

    config, backbone = _detector_config(tmp_path)
    student = tmp_path / "student.pth"
    torch.save({"model": backbone}, student)
    student.write_bytes(student.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="student.pth"):
        convert_main(["--detector-config", str(config), "--student", str(student),
                      "--output", str(tmp_path / "init.pth")])


def test_a_two_stage_checkpoint_with_another_box_head_is_refused_for_inference(tmp_path, capsys):
    """Full GLIP checkpoints of another variant were refused, but a two-stage one whose box head
    has another width loaded for inference with Detectron2's "Skip loading parameter" warnings:
    the predictor, --eval-only and pseudo_label then ran with a random box head and predictor.
    As a training initialisation (partial_init_ok) it still loads, those tensors fresh."""
    import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
    from glip_d2.checkpoint import GLIPCheckpointer, convert
    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    torch.manual_seed(0)
    trained = build_model(cfg).state_dict()
    path = tmp_path / "two_stage.pth"
    torch.save({"model": trained}, path)
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 2 * cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    config = tmp_path / "wider.yaml"
    config.write_text(cfg.dump())
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        GLIPCheckpointer(model).load(str(path))
    message = str(err.value)
    assert "roi_heads.box_head.fc1.weight (checkpoint (64, " in message
    assert "vs model (128, " in message and "partial_init_ok=True" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    GLIPCheckpointer(model, partial_init_ok=True).load(str(path))
    key = "backbone.bottom_up.patch_embed.proj.weight"
    assert torch.equal(model.state_dict()[key], trained[key])
    out = tmp_path / "converted.pth"
    assert convert.main([str(path), str(out), "--config", str(config)]) == 1
    assert "roi_heads.box_head.fc1.weight" in capsys.readouterr().err and not out.exists()
