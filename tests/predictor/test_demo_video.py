"""python -m glip_d2.demo --video-input: frames in, an annotated video out."""

import cv2
import numpy as np
import pytest

from glip_d2.demo import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _video(path, frames=6, size=(96, 128)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    writer.release()
    return path


def _read(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_video_in_annotated_video_out(tmp_path, capsys):
    video = _video(tmp_path / "clip.avi")
    argv = ["--config-file", "configs/demo_glip_tiny_shapes.yaml", "--video-input", str(video),
            "--output", str(tmp_path / "out"), "--custom-vocabulary", "red circle,blue square",
            "--vocabulary", "custom", "--confidence-threshold", "0",
            "--opts", "MODEL.ATSS.INFERENCE_TH", "0.0", "MODEL.DEVICE", "cpu"]
    assert main(argv) == 0
    frames = _read(tmp_path / "out" / "clip.mp4")
    assert len(frames) == 6 and frames[0].shape == (96, 128, 3)
    err = capsys.readouterr().err
    assert "6 frames" in err and "clip.mp4" in err and "glip_d2 video" in err  # summary, progress


def test_video_errors(tmp_path, capsys):
    base = ["--config-file", "configs/demo_glip_tiny_shapes.yaml", "--opts", "MODEL.DEVICE", "cpu"]
    assert main(["--video-input", str(tmp_path / "none.mp4")] + base) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_text("not a video")
    assert main(["--video-input", str(tmp_path / "bad.mp4")] + base) == 1
    with pytest.raises(SystemExit):
        main(["--video-input", "x.mp4", "--input", "y.png"] + base)



def test_output_that_is_the_input_or_an_existing_file_is_refused(tmp_path, capsys):
    from glip_d2.demo_video import run_video

    video = _video(tmp_path / "clip.avi", frames=2)
    original = video.read_bytes()
    (tmp_path / "link.avi").symlink_to(video)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "clip.mp4").write_bytes(original)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")

    def run(video, output):
        return main(["--config-file", "configs/demo_glip_tiny_shapes.yaml", "--video-input",
                     str(video), "--output", str(output), "--vocabulary", "coco",
                     "--opts", "MODEL.DEVICE", "cpu"])

    # the input itself: by its name, through a link, or as <folder>/<video name>.mp4
    for source, output in ((video, video), (video, tmp_path / "link.avi"),
                           (tmp_path / "sub" / "clip.mp4", tmp_path / "sub")):
        assert run(source, output) == 2
        err = capsys.readouterr().err
        assert f"--output {str(output)!r} would overwrite the input video {str(source)!r}" in err
        assert "write the annotated video to another file or folder" in err
    assert video.read_bytes() == original
    assert (tmp_path / "sub" / "clip.mp4").read_bytes() == original
    # an existing file that names no video: refused before any frame is read
    assert run(video, notes) == 2
    err = capsys.readouterr().err
    assert f"--output {str(notes)!r} is an existing file and not a video name" in err
    assert "give a folder (created if missing) or a .mp4 / .avi / .mkv file" in err
    assert notes.read_text() == "keep me"
    # run_video checks too, before it reads a frame
    messages = []
    assert run_video(None, {}, str(video), str(video), messages.append) == 2
    assert "would overwrite the input video" in messages[0]


class _FakePredictor:
    """Stands in for GLIPPredictor in run_video: no detections, calls counted."""

    def __init__(self):
        self.calls = 0

    def set_vocabulary(self, vocabulary):
        return list(vocabulary)

    def __call__(self, rgb, vocabulary):
        import torch
        from detectron2.structures import Boxes, Instances

        self.calls += 1
        inst = Instances(rgb.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                         pred_classes=torch.zeros(0, dtype=torch.long))
        return {"instances": inst, "labels": list(vocabulary)}


@pytest.mark.parametrize("count, total", [(-1.0, None), (0.0, None), (float("nan"), None), (3.0, 3)])
def test_an_unknown_frame_count_gives_a_progress_bar_without_total(tmp_path, monkeypatch, count, total):
    """OpenCV answers 0, -1 (or NaN) for the frame count of a stream: the bar's total is then
    None (unknown), never a negative number; a known count is the total."""
    import tqdm

    from glip_d2.demo_video import run_video

    video = _video(tmp_path / "clip.avi", frames=3)
    real_capture, real_tqdm = cv2.VideoCapture, tqdm.tqdm

    class StreamLike:
        def __init__(self, *args):
            self._capture = real_capture(*args)

        def get(self, prop):
            return count if prop == cv2.CAP_PROP_FRAME_COUNT else self._capture.get(prop)

        def __getattr__(self, name):
            return getattr(self._capture, name)

    totals = []

    def recording_tqdm(*args, **kwargs):
        totals.append(kwargs.get("total"))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(cv2, "VideoCapture", StreamLike)
    monkeypatch.setattr(tqdm, "tqdm", recording_tqdm)
    predictor, messages = _FakePredictor(), []
    assert run_video(predictor, {"vocabulary": ["a"]}, str(video), "", messages.append) == 0, messages
    assert totals == [total]
    assert predictor.calls == 3 and messages == [f"{video}: 3 frames, 0 detections"]
