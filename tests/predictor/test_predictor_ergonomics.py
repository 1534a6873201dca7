"""GLIPPredictor: zoo names, CPU fallback, file paths, top_k and visualisations."""

import numpy as np
import pytest
import torch
from PIL import Image

from glip_d2 import model_zoo
from glip_d2.predictor import GLIPPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    cfg = model_zoo.get_config("glip_demo_shapes")
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # random weights score below the default 0.05
    return GLIPPredictor(cfg)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_from_name_builds_the_zoo_config_on_cpu(predictor, monkeypatch, tmp_path):
    monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path))
    named = GLIPPredictor.from_name("glip_demo_shapes", trained=False, device="cpu")
    assert named.cfg.MODEL.META_ARCHITECTURE == "GLIP"
    assert named.cfg.MODEL.SWIN.EMBED_DIM == 32 and named.cfg.MODEL.WEIGHTS == ""  # the demo
    assert named.model.device.type == "cpu"
    with pytest.raises(FileNotFoundError, match="glip_demo_shapes.pth"):  # trained: not cached
        GLIPPredictor.from_name("glip_demo_shapes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = predictor.cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cuda"
    assert GLIPPredictor(cfg).cfg.MODEL.DEVICE == "cpu"  # falls back, as the CLI does


def test_file_paths_give_the_same_detections_as_arrays(predictor, image_file):
    path, rgb = image_file
    from_array = predictor(rgb[:, :, ::-1].copy(), vocabulary=VOCAB)  # BGR
    from_path = predictor(str(path), vocabulary=VOCAB)
    from_list = predictor([path, str(path)], vocabulary=VOCAB)
    assert len(from_list) == 2
    for out in (from_path, *from_list):
        assert torch.equal(out["instances"].pred_classes, from_array["instances"].pred_classes)
        assert torch.allclose(out["instances"].scores, from_array["instances"].scores, atol=1e-5)
    assert len(from_array["instances"]) > 5


def test_top_k_keeps_the_best(predictor, image_file):
    path, _ = image_file
    everything = predictor(path, vocabulary=VOCAB)["instances"]
    best = predictor(path, vocabulary=VOCAB, top_k=3)["instances"]
    assert len(best) == 3
    assert torch.allclose(best.scores, everything.scores.sort(descending=True).values[:3])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            predictor(path, vocabulary=VOCAB, top_k=bad)


def test_visualize_returns_an_rgb_drawing(predictor, image_file):
    path, rgb = image_file
    plain = predictor(path, vocabulary=VOCAB, top_k=2)
    assert "visualization" not in plain
    out = predictor(path, vocabulary=VOCAB, top_k=2, visualize=True)
    vis = out["visualization"]
    assert vis.shape == rgb.shape and vis.dtype == np.uint8
    nothing = predictor(path, vocabulary=VOCAB, confidence_threshold=1.0, visualize=True)
    assert len(nothing["instances"]) == 0 and nothing["visualization"].shape == rgb.shape
    changed = (vis != nothing["visualization"]).any(axis=2)
    assert 0.005 < changed.mean() < 0.9  # the two boxes and their labels, not the whole image


def test_bad_paths_are_clear_errors(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predictor(str(tmp_path / "missing.png"), vocabulary=VOCAB)
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(ValueError, match="Could not read .* as an image"):
        predictor(tmp_path / "not_an_image.png", vocabulary=VOCAB)


def test_from_name_untrained_loads_no_weights_the_config_names(monkeypatch, tmp_path):
    """trained=False gives random weights, as model_zoo.get(trained=False): a config's own
    MODEL.WEIGHTS (two-stage configs name ImageNet weights) is not loaded or downloaded."""
    assert model_zoo.get_config("two_stage/faster_rcnn_R_50_FPN_glip").MODEL.WEIGHTS.startswith(
        "detectron2://ImageNetPretrained/"
    )
    real = model_zoo.get_config

    def with_backbone_weights(name, trained=False):
        cfg = real(name, trained=trained)
        cfg.MODEL.WEIGHTS = str(tmp_path / "imagenet_backbone.pth")  # absent: loading it fails
        return cfg

    monkeypatch.setattr(model_zoo, "get_config", with_backbone_weights)
    named = GLIPPredictor.from_name("glip_demo_shapes", trained=False, device="cpu")
    assert named.cfg.MODEL.WEIGHTS == ""
