"""train_net's event writers: Detectron2's, without TensorBoard's when tensorboard is absent."""
import json
import logging
import sys

from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter

from glip_d2.engine import build_glip_writers, tensorboard_available


def _kinds(writers):
    return [type(w) for w in writers]


def test_writers_are_detectron2s_when_tensorboard_is_installed(tmp_path):
    assert tensorboard_available()  # in the verified stack (Detectron2 depends on it)
    kinds = _kinds(build_glip_writers(str(tmp_path), 10))
    assert kinds == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]


def test_without_tensorboard_the_run_still_writes_metrics(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    assert not tensorboard_available()
    with caplog.at_level(logging.WARNING):
        writers = build_glip_writers(str(tmp_path), 10)
    assert _kinds(writers) == [CommonMetricPrinter, JSONWriter]
    assert "tensorboard is not installed" in caplog.text and "pip install tensorboard" in caplog.text
    with EventStorage(start_iter=0) as storage:  # a logging period: every writer writes
        storage.put_scalar("loss_cls", 0.5)
        for w in writers:
            w.write()
    for w in writers:
        w.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert rows == [{"loss_cls": 0.5, "iteration": 0}]
