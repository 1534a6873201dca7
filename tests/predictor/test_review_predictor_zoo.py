"""Review of GLIPPredictor, the demo CLI and the model zoo: untrained zoo models load no
pretrained text encoder, phrase spans and top_k are checked, concurrent and killed downloads,
video outputs in a format that is not written."""

import hashlib
import http.server
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

from glip_d2 import model_zoo
from glip_d2.predictor import GLIPPredictor, locate_phrases

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_pretrained_text_weights(monkeypatch):
    """The text encoder's pretrained weights are not available (bert-base-uncased is not in the
    local Hugging Face cache): loading them raises, as transformers does offline."""
    import transformers

    calls = []

    def offline(*args, **kwargs):
        calls.append(args[0] if args else kwargs)
        raise OSError("no weights in the local HF cache")

    monkeypatch.setattr(transformers.BertModel, "from_pretrained", offline)
    return calls


def test_untrained_zoo_models_load_no_pretrained_text_encoder(no_pretrained_text_weights):
    """trained=False is documented as random weights with nothing loaded or downloaded; the
    text encoder's pretrained weights were loaded all the same (GLIPPredictor.from_name("glip_tiny",
    trained=False) failed where bert-base-uncased is not cached)."""
    torch.manual_seed(0)
    named = GLIPPredictor.from_name("glip_demo_shapes", trained=False, device="cpu")
    assert named.weights_used == "random"
    model = model_zoo.get("demo_glip_tiny_shapes", device="cpu")
    assert not model.training
    assert no_pretrained_text_weights == []
    # get_config alone still names the pretrained encoder: training from it needs it
    assert model_zoo.get_config("demo_glip_tiny_shapes").MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED


def test_fractional_phrase_spans_are_refused_not_truncated():
    caption = "a red circle and a blue square"
    assert locate_phrases(caption, [(2, 12), [19, 30]]) == [(2, 12), (19, 30)]
    for span in ((2.5, 12), (2, 11.9)):
        with pytest.raises(ValueError, match="span"):
            locate_phrases(caption, [span])


PAYLOAD = b"glip_d2 concurrent download payload\n" * 4000


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD slowly (in 10 pieces), counting the requests."""

    requests = []

    def do_GET(self):
        type(self).requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        step = len(PAYLOAD) // 10
        for i in range(0, len(PAYLOAD), step):
            self.wfile.write(PAYLOAD[i : i + step])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args, **kwargs):
        pass


@pytest.mark.skipif(sys.platform == "win32", reason="file locks are POSIX here")
def test_concurrent_downloads_of_one_checkpoint_fetch_it_once(tmp_path, monkeypatch):
    """Several processes (threads here, each with its own lock file handle) asking for one
    missing checkpoint: one downloads it, the others wait and take the cached file, instead of
    every one downloading its own multi-GB temporary copy into the cache."""
    from glip_d2.model_zoo import MODELS, ModelZooEntry

    _SlowHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
        digest = hashlib.sha256(PAYLOAD).hexdigest()
        entry = ModelZooEntry("race", "demo_glip_tiny_shapes", "race.pth", url, digest, "t", "t")
        monkeypatch.setitem(MODELS, "race", entry)
        monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path / "cache"))
        start = threading.Barrier(3)
        paths, errors = [], []

        def fetch():
            start.wait()
            try:
                paths.append(model_zoo.get_checkpoint("race"))
            except Exception as e:  # reported below
                errors.append(e)

        workers = [threading.Thread(target=fetch) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert errors == []
    assert paths == [str(tmp_path / "cache" / "race.pth")] * 3
    assert _SlowHandler.requests == ["/weights.pth"]  # downloaded once
    with open(paths[0], "rb") as f:
        assert f.read() == PAYLOAD
    # no .part or .lock left
    assert sorted(os.listdir(tmp_path / "cache")) == ["race.pth", "race.pth.sha256"]


def test_partial_downloads_of_killed_processes_are_removed(tmp_path, monkeypatch):
    """A download killed by a signal (SIGTERM from a scheduler, SIGKILL: no `finally` runs) leaves
    its temporary file in the cache; the next download of that checkpoint, which holds the
    download lock so that no live process writes it, removes it. Others' files stay."""
    from glip_d2.model_zoo import MODELS, ModelZooEntry

    www = tmp_path / "www"
    www.mkdir()
    (www / "weights.pth").write_bytes(PAYLOAD)
    entry = ModelZooEntry("killed", "demo_glip_tiny_shapes", "killed.pth",
                          (www / "weights.pth").as_uri(), None, "t", "t")
    monkeypatch.setitem(MODELS, "killed", entry)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GLIP_D2_CACHE", str(cache))
    (cache / ".killed.pth.k2x_9abc.part").write_bytes(PAYLOAD[:1000])  # a killed download
    (cache / ".killed.pth.v2.pth.abcd1234.part").write_bytes(b"")  # of "killed.pth.v2.pth"
    (cache / "other.pth").write_bytes(b"")
    assert model_zoo.get_checkpoint("killed") == str(cache / "killed.pth")
    assert sorted(os.listdir(cache)) == [
        ".killed.pth.v2.pth.abcd1234.part", "killed.pth", "killed.pth.sha256", "other.pth"
    ]


def test_top_k_that_is_not_a_count_is_a_clear_value_error(tmp_path):
    """top_k=inf raised OverflowError and nan a ValueError about float conversion (neither names
    top_k); the documented error is a ValueError saying what top_k must be."""
    from tests.helpers import tiny_cfg

    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 112
    torch.manual_seed(0)
    predictor = GLIPPredictor(cfg)
    image = np.zeros((64, 80, 3), np.uint8)
    for bad in (float("inf"), float("nan"), "3", [3]):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            predictor(image, top_k=bad)
    assert len(predictor(image, top_k=np.int64(2), confidence_threshold=0.0)["instances"]) <= 2


def test_video_output_in_an_unsupported_video_format_is_refused(tmp_path, capsys):
    """--output clip.mov (or .webm, ...) made a folder named "clip.mov" holding clip.mp4; it is a
    setup error naming the formats written, found before the model is built."""
    from glip_d2.demo import main

    (tmp_path / "clip.avi").write_bytes(b"")  # never opened: the output is checked first
    for name in ("out.mov", "out.WEBM"):
        argv = ["--config-file", "configs/demo_glip_tiny_shapes.yaml", "--video-input",
                str(tmp_path / "clip.avi"), "--output", str(tmp_path / name),
                "--vocabulary", "coco"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is not a video format written here" in err and ".mp4 / .avi / .mkv" in err
        assert not (tmp_path / name).exists()
