"""Training starts from an ImageNet Swin release (`swin_tiny_patch4_window7_224.pth`, as official
GLIP pretraining does): every Swin tensor lands on the model's Swin backbone by an explicit
mapping, the classifier and the final norm are dropped, the rest keeps its initialisation, and a
Swin of another variant or window size is refused with the tensors / WINDOW_SIZE named."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.checkpoint.imagenet_swin import is_imagenet_swin_state_dict
from tests.reliability.helpers import fast_tiny_cfg

PREFIX = "backbone.bottom_up."


def _cfg(**swin):
    cfg = fast_tiny_cfg()
    cfg.MODEL.SWIN.DEPTHS = [2, 1, 1, 1]  # a shifted block, whose attn_mask the release stores
    for key, value in swin.items():
        setattr(cfg.MODEL.SWIN, key, value)
    return cfg


def _model(seed=0, **swin):
    torch.manual_seed(seed)
    return build_model(_cfg(**swin)).train()


def _imagenet_file(model, path, seed=1):
    """A state dict in the layout of Microsoft's ImageNet Swin releases, random values, built
    from the Swin tensors of ``model``: no "backbone." prefix, no per-output norms, a final
    ``norm.*``, the ``head.*`` classifier and the buffers the release carries."""
    g = torch.Generator().manual_seed(seed)
    swin = {k[len(PREFIX) :]: v for k, v in model.state_dict().items() if k.startswith(PREFIX)}
    sd = {}
    for key, value in swin.items():
        if key.startswith("norm"):  # norm0..norm3: glip_d2's per-output norms, not in the file
            continue
        if key.endswith("relative_position_index"):
            sd[key] = value.clone()
        else:
            sd[key] = torch.randn(value.shape, generator=g)
    last = swin["layers.3.blocks.0.norm1.weight"].shape[0]
    sd["norm.weight"] = torch.randn(last, generator=g)
    sd["norm.bias"] = torch.randn(last, generator=g)
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, last, generator=g), torch.randn(1000)
    window = model.backbone.bottom_up.layers[0].blocks[0].attn.window_size
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(16, window * window, window * window)
    torch.save({"model": sd}, path)
    return sd


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def loaded(module_tmp):
    root = module_tmp("imagenet_swin")
    model = _model()
    path = str(root / "swin_tiny_patch4_window7_224.pth")
    sd = _imagenet_file(model, path)
    before = _snapshot(model)
    return {"model": model, "path": path, "sd": sd, "before": before, "root": root}


def _assert_loaded_exactly(model, sd, before):
    after = model.state_dict()
    mapped = set()
    for key, value in sd.items():
        if (
            key.startswith("head.")
            or key in ("norm.weight", "norm.bias")
            or key.endswith("attn_mask")
        ):
            continue
        assert torch.equal(after[PREFIX + key], value), key
        mapped.add(PREFIX + key)
    # every Swin parameter came from the file, except the per-output norms
    for key, _ in model.named_parameters():
        if key.startswith(PREFIX) and not key.startswith(PREFIX + "norm"):
            assert key in mapped, f"{key} not loaded"
    # nothing else changed: FPN, fusion tower, heads, text encoder, per-output norms
    for key, value in before.items():
        if key not in mapped:
            assert torch.equal(after[key], value), f"{key} changed"
    assert any(k.startswith(PREFIX + "norm") for k in before)  # the norms that must stay


def test_imagenet_swin_layout_is_recognised(loaded):
    assert is_imagenet_swin_state_dict(loaded["sd"])
    glip = {PREFIX + k: v for k, v in loaded["sd"].items()}
    assert not is_imagenet_swin_state_dict(glip)
    assert not is_imagenet_swin_state_dict(loaded["model"].state_dict())


def test_training_init_maps_every_swin_tensor_and_nothing_else(loaded, caplog):
    model, before = loaded["model"], loaded["before"]
    with caplog.at_level(logging.INFO, logger="glip_d2.checkpoint"):
        # as train_net.py's Trainer loads MODEL.WEIGHTS
        GLIPCheckpointer(model, str(loaded["root"]), partial_init_ok=True).resume_or_load(
            loaded["path"], resume=False
        )
    _assert_loaded_exactly(model, loaded["sd"], before)
    text = caplog.text
    assert "ImageNet Swin" in text and PREFIX in text
    assert "head.weight" in text and "norm.weight" in text  # what was dropped is logged
    model.load_state_dict(before)


def test_matching_heuristics_query_gives_the_same_result(loaded):
    model, before = loaded["model"], loaded["before"]
    GLIPCheckpointer(model, partial_init_ok=True).load(loaded["path"] + "?matching_heuristics=True")
    _assert_loaded_exactly(model, loaded["sd"], before)
    model.load_state_dict(before)


def test_imagenet_swin_is_no_inference_checkpoint(loaded):
    model, before = loaded["model"], loaded["before"]
    with pytest.raises(ValueError, match="of the model's parameters"):
        GLIPCheckpointer(model).load(loaded["path"])
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_another_swin_variant_is_refused_naming_the_tensors(loaded, tmp_path):
    other = _model(EMBED_DIM=48, DEPTHS=[2, 1, 2, 1])
    path = str(tmp_path / "swin_other.pth")
    _imagenet_file(other, path)
    model, before = loaded["model"], loaded["before"]
    with pytest.raises(ValueError) as err:
        GLIPCheckpointer(model, partial_init_ok=True).load(path)
    message = str(err.value)
    assert "embed dim 48" in message and "embed dim 32" in message
    assert "depths (2, 1, 2, 1)" in message and "depths (2, 1, 1, 1)" in message
    # a tensor with another shape, named with both shapes
    assert "layers.0.blocks.0.attn.qkv.weight (file (144, 48) vs model (96, 32))" in message
    assert "layers.2.blocks.1." in message  # a tensor the model lacks, named
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_another_window_size_is_refused_naming_it(loaded, tmp_path):
    other = _model(WINDOW_SIZE=12)
    path = str(tmp_path / "swin_window12.pth")
    _imagenet_file(other, path)
    with pytest.raises(ValueError) as err:
        GLIPCheckpointer(loaded["model"], partial_init_ok=True).load(path)
    message = str(err.value)
    assert "MODEL.SWIN.WINDOW_SIZE 12" in message and "WINDOW_SIZE 7" in message
    assert "relative_position_bias_table" in message


def test_unknown_tensor_in_an_imagenet_swin_file_is_refused(loaded, tmp_path):
    sd = dict(loaded["sd"], **{"layers.0.blocks.0.attn.logit_scale": torch.zeros(1, 1, 1)})
    path = str(tmp_path / "swin_v2ish.pth")
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.logit_scale"):
        GLIPCheckpointer(loaded["model"], partial_init_ok=True).load(path)


@pytest.mark.heavy(20)
def test_train_net_trains_one_iteration_from_an_imagenet_swin(loaded, tmp_path):
    from detectron2.engine import default_argument_parser

    from tests.reliability.helpers import load_train_net, write_cfg
    from tests.reliability.test_exact_resume import write_detection_dataset

    data = tmp_path / "data"
    data.mkdir()
    cfg = _cfg()
    cfg.DATASETS.CUSTOM = [["imagenet_swin_shapes_train", write_detection_dataset(data), str(data)]]
    cfg.DATASETS.TRAIN = ("imagenet_swin_shapes_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 64
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 2, 1, ()
    cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = 100, 0
    cfg.MODEL.WEIGHTS = loaded["path"]
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    train_net = load_train_net()
    args = default_argument_parser().parse_args(
        ["--config-file", write_cfg(cfg, tmp_path / "cfg.yaml"), "--num-gpus", "1"]
    )
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    weights = trainer.model.state_dict()
    for key, value in loaded["sd"].items():
        if not key.startswith(("head.", "norm.")) and not key.endswith("attn_mask"):
            assert torch.equal(weights[PREFIX + key], value), key
    trainer.train()
    assert trainer.iter == 1
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))


def test_a_model_without_a_swin_backbone_is_refused(loaded):
    from glip_d2.checkpoint.imagenet_swin import imagenet_swin_checkpoint

    with pytest.raises(ValueError, match="the model has 0 Swin backbones"):
        imagenet_swin_checkpoint(torch.nn.Linear(2, 2), loaded["sd"], "swin.pth")
