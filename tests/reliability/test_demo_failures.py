"""Issue 15, item 6: one bad image does not stop the demo CLI; --output naming a file; a lazily
truncated PIL image in the predictor."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from glip_d2 import demo
from glip_d2.predictor import GLIPPredictor, to_rgb_uint8
from tests.reliability.helpers import fast_tiny_cfg, write_cfg

NAMES = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def setup(module_tmp):
    """A tiny random-model config (no weights) and a folder: good, too elongated, good."""
    root = module_tmp("demo_failures")
    cfg = fast_tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # a random model scores below the default 0.05
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 2
    images = root / "images"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "a_good.png")
    Image.fromarray(np.zeros((3, 10000, 3), np.uint8)).save(images / "b_long.png")
    Image.fromarray(rgb[::-1]).save(images / "c_good.png")
    return {"config": write_cfg(cfg, root / "tiny.yaml"), "images": images, "cfg": cfg}


def _run(setup, *args):
    argv = ["--config-file", setup["config"], "--input", str(setup["images"])]
    return demo.main(argv + ["--custom-vocabulary", ",".join(NAMES), *args])


def test_a_failing_image_is_reported_and_skipped_and_later_images_still_run(
    setup, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = _run(setup, "--output", str(out), "--confidence-threshold", "0")
    err = capsys.readouterr().err
    assert rc == 0, err  # before: exit 2 at b_long.png, c_good.png never read, no json
    assert "b_long.png: The image (10000x3 pixels) is too elongated for the test size" in err
    assert "skipped" in err and "1 of 3 images failed" in err
    assert sorted(os.listdir(out)) == ["a_good.png", "c_good.png", "detections.json"]
    results = json.loads((out / "detections.json").read_text())
    assert sorted({(r["image_id"], os.path.basename(r["file_name"])) for r in results}) == [
        (1, "a_good.png"),
        (3, "c_good.png"),
    ]
    assert len(results) == 4  # DETECTIONS_PER_IMG for each image that succeeded


def test_detections_of_finished_images_are_written_when_interrupted(
    setup, tmp_path, capsys, monkeypatch
):
    read = demo.read_image_file

    def interrupted_at_the_third(path):
        if path.endswith("c_good.png"):
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(demo, "read_image_file", interrupted_at_the_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(setup, "--output", str(out), "--confidence-threshold", "0")
    results = json.loads((out / "detections.json").read_text())
    assert {os.path.basename(r["file_name"]) for r in results} == {"a_good.png"}
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_output_naming_an_existing_file_is_a_clear_error(setup, tmp_path, capsys):
    target = tmp_path / "results.json"
    target.write_text("keep me")
    rc = _run(setup, "--output", str(target))  # before: FileExistsError from os.makedirs
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--output {str(target)!r} is an existing file; it must name a folder" in err
    assert target.read_text() == "keep me"
    rc = _run(setup, "--output", str(target / "sub"))  # a folder that cannot be created
    assert rc == 2 and f"--output {str(target / 'sub')!r}: cannot create the folder" in (
        capsys.readouterr().err
    )


def _truncated_png() -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 7, np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    return Image.open(io.BytesIO(data[: len(data) // 2]))  # lazy: nothing decoded yet


def test_a_lazily_truncated_pil_image_is_the_documented_value_error(setup):
    with pytest.raises(ValueError, match="cannot be decoded: its file is truncated or corrupt"):
        to_rgb_uint8(_truncated_png())  # before: OSError "image file is truncated"
    torch.manual_seed(0)
    predictor = GLIPPredictor(setup["cfg"], input_format="RGB")
    before = list(predictor.model.vocabulary)
    with pytest.raises(ValueError, match="cannot be decoded: its file is truncated or corrupt"):
        predictor(_truncated_png(), vocabulary=NAMES)
    with pytest.raises(ValueError, match=r"\(3x10000 pixels\) is too elongated"):
        predictor(np.zeros((10000, 3, 3), np.uint8), vocabulary=NAMES)
    assert list(predictor.model.vocabulary) == before  # a call that raised changes nothing
    out = predictor(np.zeros((3, 300, 3), np.uint8), vocabulary=NAMES)  # 1 pixel high: fine
    assert out["labels"] == NAMES


def _clip(path, frames=4):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (60, 40))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    writer.release()
    return path


def _count_frames(path):
    import cv2

    capture, n = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


def test_a_video_frame_that_fails_is_exit_code_1_naming_the_frame(setup, tmp_path, capsys, monkeypatch):
    """An error while detecting in a frame (a bad frame, a bug) is not a setup error: exit code 1,
    with the frame's index; the frames before it are in the output video."""
    video = _clip(tmp_path / "clip.avi")
    call = GLIPPredictor.__call__
    frames = []

    def fails_at_the_third_frame(self, image, **kwargs):
        frames.append(image.shape)
        if len(frames) == 3:
            raise ValueError("something is wrong with this frame")
        return call(self, image, **kwargs)

    monkeypatch.setattr(GLIPPredictor, "__call__", fails_at_the_third_frame)
    out = tmp_path / "out.avi"
    rc = demo.main(["--config-file", setup["config"], "--video-input", str(video), "--output", str(out),
                    "--custom-vocabulary", ",".join(NAMES)])
    err = capsys.readouterr().err
    assert rc == 1, err  # before: 2, reported as if the arguments were wrong
    assert (f"error: {video}: frame index 2 (counting from 0): ValueError: something is wrong "
            f"with this frame; stopped; the 2 frames before it are in {out}") in err
    assert len(frames) == 3  # nothing after the failing frame
    assert _count_frames(out) == 2


def test_a_wrong_video_query_is_a_setup_error_before_any_frame(setup, tmp_path, capsys, monkeypatch):
    video = _clip(tmp_path / "clip.avi")
    call = GLIPPredictor.__call__
    frames = []
    monkeypatch.setattr(GLIPPredictor, "__call__",
                        lambda self, image, **kw: frames.append(1) or call(self, image, **kw))
    rc = demo.main(["--config-file", setup["config"], "--video-input", str(video),
                    "--output", str(tmp_path / "out"), "--custom-vocabulary", "cat,cat"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error: Invalid vocabulary: The vocabulary repeats names" in err
    assert "frame index" not in err
    assert frames == []  # refused before the first frame, as a setup error
    assert not (tmp_path / "out" / "clip.mp4").exists()
