"""``python -m glip_d2.demo --video-input FILE``: frames in, an annotated video out."""
import math
import os
import sys
from typing import Callable, Dict, Optional

import numpy as np

__all__ = ["run_video", "video_output_error", "video_output_path"]

# Codec by output extension (OpenCV's FourCC codes).
_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
# Video formats not written: an --output with one of these names a video, not a folder.
_OTHER_VIDEO_EXTENSIONS = (".mov", ".webm", ".m4v", ".wmv", ".flv", ".mpg", ".mpeg", ".3gp")


def _names_a_video(output: str) -> bool:
    return os.path.splitext(output)[1].lower() in _FOURCC


def _planned_path(output: str, video: str) -> str:
    if _names_a_video(output):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(video))[0] + ".mp4")


def video_output_path(output: str, video: str) -> str:
    """``output`` when it names a video file (.mp4 / .avi / .mkv), else
    ``<output>/<video name>.mp4`` (the folder is created)."""
    folder = os.path.dirname(output) if _names_a_video(output) else output
    if folder:
        os.makedirs(folder, exist_ok=True)
    return _planned_path(output, video)


def video_output_error(output: str, video: str) -> Optional[str]:
    """Why the annotated video cannot be written as ``output`` says (None: it can), checked
    before any frame is read: a video format that is not written (.mov, .webm, ...), an
    existing file where a folder is meant, a folder where a video file is meant, or the input
    video itself."""
    from .demo import _overwritten_input

    kinds = "a folder (created if missing) or a .mp4 / .avi / .mkv file"
    ext = os.path.splitext(output)[1]
    if ext.lower() in _OTHER_VIDEO_EXTENSIONS and not os.path.isdir(output):
        return f"--output {output!r}: {ext} is not a video format written here; give {kinds}"
    if _names_a_video(output):
        if os.path.isdir(output):
            return f"--output {output!r} is an existing folder; give {kinds}"
    elif os.path.exists(output) and not os.path.isdir(output):
        return f"--output {output!r} is an existing file and not a video name; give {kinds}"
    path = _planned_path(output, video)
    if _overwritten_input([video], [path]):
        return (
            f"--output {output!r} would overwrite the input video {video!r}; write the annotated "
            "video to another file or folder"
        )
    return None


def _known(value: float, least: float) -> Optional[float]:
    """``value`` when it is a finite number of at least ``least``, else None: OpenCV answers 0,
    -1 or NaN for a property a stream or a codec does not know (a live stream's frame count)."""
    return value if math.isfinite(value) and value >= least else None


def run_video(predictor, query: Dict, video: str, output: str, report: Callable[[str], None]) -> int:
    """Detect in every frame of ``video`` and write the annotated frames to a video.

    Args:
        predictor: a :class:`~glip_d2.predictor.GLIPPredictor` taking RGB input.
        query: the call's ``vocabulary`` / ``caption`` / ``phrases`` keywords.
        video: the input video file.
        output: a video file or a folder (see :func:`video_output_path`); "" = only a summary.
        report: prints a message (errors, the summary).

    Returns:
        0 when every frame was processed (at least one); 2 for a setup error found before any
        frame is processed: ``output`` cannot be written (see :func:`video_output_error`) or
        the query is wrong for the predictor (an unknown vocabulary, a repeated name); else 1:
        the video is missing, cannot be opened or has no frame, or processing a frame failed
        (reported with the frame's index; the frames before it stay in the output video).
    """
    import cv2
    from tqdm import tqdm

    from .data.visualize import draw_grounding
    from .demo import INPUT_ERRORS, _check_query

    if not os.path.isfile(video):
        report(f"error: video {video!r} does not exist")
        return 1
    path = None
    if output:
        problem = video_output_error(output, video)
        if problem:
            report(f"error: {problem}")
            return 2
        try:
            path = video_output_path(output, video)
        except OSError as e:
            report(f"error: --output {output!r}: cannot create the folder ({e})")
            return 2
    try:  # the query is the same for every frame: a wrong one is a setup error, not a frame's
        _check_query(predictor, query)
    except ValueError as e:
        report(f"error: {e}")
        return 2
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        report(f"error: could not open {video!r} as a video")
        return 1
    fps = _known(capture.get(cv2.CAP_PROP_FPS), least=1e-3) or 25.0
    total = _known(capture.get(cv2.CAP_PROP_FRAME_COUNT), least=1)  # None: unknown (a stream)
    total = None if total is None else int(total)
    writer, frames, detections = None, 0, 0
    try:
        with tqdm(total=total, desc="glip_d2 video", unit="frame", file=sys.stderr) as bar:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                # the query was checked above, so an error here is about this frame (a bad
                # frame, memory, a bug): report which one and stop, exit code 1
                try:
                    out = predictor(rgb, **query)
                    inst, labels = out["instances"].to("cpu"), out["labels"]
                    if output:
                        drawing = draw_grounding(rgb, inst.pred_boxes,
                                                 [labels[c] for c in inst.pred_classes.tolist()],
                                                 inst.scores.tolist())
                except INPUT_ERRORS as e:
                    written = ("" if writer is None
                               else f"; the {frames} frames before it are in {path}")
                    report(f"error: {video}: frame index {frames} (counting from 0): "
                           f"{type(e).__name__}: {e}; stopped{written}")
                    return 1
                detections += len(inst)
                if output:
                    if writer is None:
                        fourcc = cv2.VideoWriter_fourcc(*_FOURCC[os.path.splitext(path)[1].lower()])
                        h, w = drawing.shape[:2]
                        writer = cv2.VideoWriter(path, fourcc, fps, (w, h))
                        if not writer.isOpened():
                            report(f"error: could not write the video {path!r}")
                            return 1
                    writer.write(np.ascontiguousarray(drawing[:, :, ::-1]))
                frames += 1
                bar.update(1)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        report(f"error: no frame could be read from {video!r}")
        return 1
    report(f"{video}: {frames} frames, {detections} detections" + (f" -> {path}" if path else ""))
    return 0
