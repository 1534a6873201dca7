"""Issue 16, items 1, 6 and 7 as a user meets them: zoo names that are not models, the default
checkpoint cache, from_name with a cached checkpoint, directories given as images, and the demo
CLI's annotated video."""

import re

import cv2
import numpy as np
import pytest
import torch

from glip_d2 import model_zoo
from glip_d2.demo import get_parser, main
from glip_d2.predictor import GLIPPredictor
from tests.predictor.test_demo_video import _read

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ item 1: the model zoo
@pytest.mark.parametrize(
    "name, protocol",
    [("protocols/coco", "coco"), ("configs/protocols/lvis_minival.yaml", "lvis_minival")],
)
def test_a_protocol_is_not_taken_for_a_model_config(name, protocol):
    # a protocol fragment merged onto the bare defaults gave Detectron2's stock GeneralizedRCNN:
    # model_zoo.get("protocols/coco") silently built a model that is no GLIP at all
    with pytest.raises(ValueError, match="evaluation protocol.*apply_protocol") as e:
        model_zoo.get_config(name)
    assert "glip_swin_t" in str(e.value)  # says which names are model configs
    with pytest.raises(ValueError, match="evaluation protocol"):
        model_zoo.get(name)
    with pytest.raises(ValueError, match="evaluation protocol"):
        GLIPPredictor.from_name(name, trained=False)
    # the fragment itself is still found by path, and applies on top of a model config
    assert model_zoo.get_config_file(name).endswith(".yaml")
    cfg = model_zoo.apply_protocol(model_zoo.get_config("glip_swin_t"), protocol)
    assert cfg.MODEL.META_ARCHITECTURE == "GLIP" and len(cfg.DATASETS.TEST) >= 1


def test_weights_asked_for_a_config_name_name_the_models_that_have_them(tmp_path, monkeypatch):
    # GLIPPredictor.from_name loads weights by default; given a config name ("glip_swin_t", which
    # get_config takes) the error said only "'glip_swin_t' is not a model of the zoo"
    monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="'glip_swin_t' is a config.*'glip_tiny_o365_goldg', "
                                         "'glip_tiny'.*trained=False") as e:
        model_zoo.get_config("glip_swin_t", trained=True)
    assert "not a model" not in str(e.value)
    with pytest.raises(ValueError, match="'demo_glip_tiny_shapes' is a config.*'glip_demo_shapes'"):
        GLIPPredictor.from_name("demo_glip_tiny_shapes")
    with pytest.raises(ValueError, match="no model of the zoo has this config.*trained=False"):
        model_zoo.get_checkpoint("two_stage/faster_rcnn_R_50_FPN_glip")
    with pytest.raises(ValueError, match="not a model of the zoo; known models"):  # a typo
        model_zoo.get_checkpoint("glip_tinyy")


@pytest.mark.parametrize("value", [None, ""])
def test_the_checkpoint_cache_defaults_to_the_home_cache(value, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("GLIP_D2_CACHE", raising=False)
    else:
        monkeypatch.setenv("GLIP_D2_CACHE", value)
    assert model_zoo.cache_dir() == str(tmp_path / ".cache" / "glip_d2")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / ".cache" / "glip_d2")):
        model_zoo.get_checkpoint("glip_tiny", download_if_missing=False)
    monkeypatch.setenv("GLIP_D2_CACHE", "~/weights")  # "~" expanded, as Detectron2's paths
    assert model_zoo.cache_dir() == str(tmp_path / "weights")


@pytest.fixture(scope="module")
def demo_state():
    torch.manual_seed(0)
    return model_zoo.get("demo_glip_tiny_shapes", device="cpu").state_dict()


def test_from_name_loads_the_cached_checkpoint(demo_state, tmp_path, monkeypatch):
    monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path))
    torch.save({"model": demo_state}, tmp_path / "glip_demo_shapes.pth")
    predictor = GLIPPredictor.from_name("glip_demo_shapes", device="cpu", confidence_threshold=0.2)
    assert predictor.cfg.MODEL.WEIGHTS == str(tmp_path / "glip_demo_shapes.pth")
    assert predictor.weights_used == "model" and predictor.confidence_threshold == 0.2
    loaded = predictor.model.state_dict()
    assert loaded.keys() == demo_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in demo_state.items())


# ------------------------------------------------------------------ item 7: predictor ergonomics
def test_a_directory_given_as_an_image_is_named_as_one(tmp_path, monkeypatch):
    # a folder path raised FileNotFoundError "Image file ... does not exist", though it exists
    monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path / "cache"))
    predictor = GLIPPredictor.from_name("glip_demo_shapes", trained=False, device="cpu")
    (tmp_path / "images").mkdir()
    for image in (tmp_path / "images", [str(tmp_path / "images")]):
        with pytest.raises(IsADirectoryError, match="is a folder, not an image.*list of") as e:
            predictor(image, vocabulary=["red circle"])
        assert "does not exist" not in str(e.value)


# ------------------------------------------------------------------ item 7: the video demo CLI
def _video(path, frames=3, size=(64, 80)):
    """Smooth frames (a gradient and a moving square): MJPEG keeps them within a few levels."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (size[1], size[0]))
    ramp = np.linspace(40, 200, size[1], dtype=np.float32)
    for i in range(frames):
        frame = np.repeat(np.repeat(ramp[None, :, None], size[0], axis=0), 3, axis=2)
        frame[10:30, 10 + 8 * i:30 + 8 * i] = (30, 60, 220)
        writer.write(frame.astype(np.uint8))
    writer.release()
    return path


def _frames(path):
    return [frame.astype(np.int16) for frame in _read(path)]


def test_the_output_video_holds_the_drawn_detections(tmp_path, capsys):
    """The written frames are the drawings: with every detection kept they differ from the same
    run keeping none (boxes and labels drawn), frame by frame."""
    video = _video(tmp_path / "clip.avi")
    base = ["--config-file", "configs/demo_glip_tiny_shapes.yaml", "--video-input", str(video),
            "--custom-vocabulary", "red circle,blue square"]
    opts = ["--opts", "MODEL.ATSS.INFERENCE_TH", "0.0", "MODEL.DEVICE", "cpu",
            "MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED", "False"]
    for name, threshold in (("none.avi", "1.0"), ("all.avi", "0")):
        out = str(tmp_path / name)
        assert main(base + ["--output", out, "--confidence-threshold", threshold] + opts) == 0
    err = capsys.readouterr().err
    assert "3 frames, 0 detections" in err
    assert int(re.search(r"3 frames, (\d+) detections -> .*all.avi", err).group(1)) >= 30
    plain, drawn = _frames(tmp_path / "none.avi"), _frames(tmp_path / "all.avi")
    assert len(plain) == len(drawn) == 3
    source = _frames(video)
    for p, d, s in zip(plain, drawn, source):
        assert np.abs(p - s).mean() < 8  # no detection: the frame itself (MJPEG noise)
        assert (np.abs(d - p).max(axis=2) > 60).mean() > 0.05  # boxes and labels drawn over it


def test_the_video_help_names_every_format_written():
    # the help said "a .mp4/.avi file"; .mkv is written too (and the errors list all three)
    helps = {a.dest: a.help for a in get_parser()._actions}
    assert all(ext in helps["video_input"] for ext in (".mp4", ".avi", ".mkv"))
