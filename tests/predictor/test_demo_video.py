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
