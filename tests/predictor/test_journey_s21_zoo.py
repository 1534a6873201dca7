"""A Detectron2 user with glip_d2 installed as a wheel (no checkout): the demo CLI run as the README
writes it, zoo names that are not strings, a cache that cannot be a folder, and thresholds that
are not numbers."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from glip_d2 import demo, model_zoo
from glip_d2.predictor import _check_threshold

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", [None, 3, ["glip_tiny"]])
def test_zoo_names_that_are_not_strings_are_a_clear_type_error(name):
    # they failed deep inside: "'NoneType' object has no attribute 'startswith'",
    # "unhashable type: 'list'"
    for call in (model_zoo.get_config, model_zoo.get_config_file, model_zoo.get_checkpoint,
                 model_zoo.get_checkpoint_url, model_zoo.get):
        with pytest.raises(TypeError, match=r"model zoo name must be a string.*'glip_tiny'.*got"):
            call(name)


def test_a_cache_that_is_a_file_is_named_in_the_error(tmp_path, monkeypatch):
    # GLIP_D2_CACHE naming a file gave "[Errno 17] File exists: '...'", naming no variable
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("GLIP_D2_CACHE", str(cache))
    with pytest.raises(NotADirectoryError, match=r"cache .*cache \(GLIP_D2_CACHE.*is a file, "
                                                 r"not a folder: set GLIP_D2_CACHE"):
        model_zoo.get_checkpoint("glip_tiny")  # refused before any download is tried
    assert cache.read_text() == "not a folder"
    monkeypatch.setenv("GLIP_D2_CACHE", str(cache / "sub"))  # cannot be created
    with pytest.raises(OSError, match="cannot be created.*set GLIP_D2_CACHE"):
        model_zoo.get_checkpoint("glip_tiny")


def test_the_demo_reads_the_readme_config_path_from_the_package(tmp_path, monkeypatch, caplog):
    # the README's `--config-file configs/demo_glip_tiny_shapes.yaml` names a checkout file; from
    # an installed wheel there is none, and the demo said only that it does not exist
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)).save(image)
    for config in ("configs/demo_glip_tiny_shapes.yaml", "demo_glip_tiny_shapes"):
        out = tmp_path / config.replace("/", "_")
        argv = ["--config-file", config, "--input", str(image), "--output", str(out),
                "--confidence-threshold", "0", "--opts", "MODEL.ATSS.INFERENCE_TH", "0.0"]
        caplog.clear()
        assert demo.main(argv) == 0
        shipped = model_zoo.get_config_file("demo_glip_tiny_shapes")
        assert f"using the config glip_d2 ships under that name, {shipped}" in caplog.text
        assert (out / "img.png").is_file() and len(json.loads((out / "detections.json").read_text()))


@pytest.mark.parametrize(
    "config, message",
    [
        ("glip_tiny", r"'glip_tiny' is a model of the zoo: give its config, --config-file "
                      r"glip_swin_t, and its checkpoint, MODEL.WEIGHTS"),
        # a fragment is no model config
        ("configs/protocols/coco.yaml", r"evaluation protocol, a fragment: .*--protocol coco\."),
        ("nope.yaml", r"Config file 'nope.yaml' does not exist; the configs glip_d2 ships"),
        ("../configs/glip_swin_t.yaml", "does not exist"),  # not looked up in the package
    ],
)
def test_a_config_file_that_is_no_file_nor_a_shipped_config_is_a_setup_error(
    tmp_path, monkeypatch, capsys, config, message
):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--config-file", config, "--input", "missing.png"]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("value", ["a", "0.5", None, True, [0.5]])
def test_a_confidence_threshold_that_is_not_a_number_names_the_argument(value):
    # "could not convert string to float: 'a'" named no argument; "0.5" and True were taken
    with pytest.raises(ValueError, match="confidence threshold must be a number in"):
        _check_threshold(value)


def test_numbers_of_any_kind_are_thresholds():
    for value in (0, 0.5, 1, np.float32(0.25), torch.tensor(0.75)):
        assert _check_threshold(value) == pytest.approx(float(value))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        _check_threshold(1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got nan"):
        _check_threshold(float("nan"))
