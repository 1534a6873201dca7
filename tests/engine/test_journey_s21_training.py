"""Session-21 training journey: a run resumed in its OUTPUT_DIR (or started over an earlier run)
logs each iteration once in metrics.json and TensorBoard, as the checkpoints it writes again.

Before: Detectron2's JSONWriter appends, so a run killed after logging iteration 19 and resumed
from its checkpoint of iteration 14 left two records of iteration 19 in metrics.json (the second
with the loss smoothed over iterations 15-19 only), and the TensorBoard events held both."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils.events import EventStorage, JSONWriter, TensorboardXWriter

from glip_d2.engine import ExactResumeHook, RedoneIterationLogs, build_glip_writers, drop_records_from
from tests.reliability.helpers import fast_tiny_cfg, write_cfg
from tests.reliability.test_exact_resume import write_detection_dataset

ROOT = Path(__file__).resolve().parents[2]


def _write_records(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _iterations(path):
    return [json.loads(line)["iteration"] for line in Path(path).read_text().splitlines()]


def test_records_of_redone_iterations_and_a_torn_line_are_removed(tmp_path):
    path = tmp_path / "metrics.json"
    _write_records(path, [{"iteration": 19, "lr": 0.01}, {"iteration": 39, "lr": 0.001}],
                   tail='{"iteration": 4')  # a write the kill interrupted
    assert drop_records_from(str(path), 30) == 2
    assert path.read_text() == json.dumps({"iteration": 19, "lr": 0.01}) + "\n"
    assert drop_records_from(str(path), 30) == 0
    assert drop_records_from(str(tmp_path / "absent.json"), 0) == 0


def test_a_finished_runs_final_evaluation_stays_when_a_longer_run_resumes_it(tmp_path):
    # Detectron2 logs the final evaluation at MAX_ITER (45), which the resumed run trains first
    path = tmp_path / "metrics.json"
    records = [{"iteration": 44, "lr": 0.001}, {"iteration": 45, "bbox/AP": 12.5}]
    _write_records(path, records)
    assert drop_records_from(str(path), 45) == 0
    assert _iterations(path) == [44, 45]
    # a training record of that iteration (a longer run's, killed before its first checkpoint)
    # is redone, and so dropped; the finished run's evaluation before it stays
    _write_records(path, records + [{"iteration": 45, "lr": 0.001}, {"iteration": 49, "lr": 0.001}])
    assert drop_records_from(str(path), 45) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == records


class _Trainer:
    def __init__(self, start_iter, max_iter, writers):
        self.start_iter, self.max_iter = start_iter, max_iter
        self._hooks = [PeriodicWriter(writers)]


def _before_train(hook, trainer):
    hook.trainer = trainer
    hook.before_train()


def test_the_hook_trims_metrics_and_purges_tensorboard_from_the_first_iteration(tmp_path):
    _write_records(tmp_path / "metrics.json", [{"iteration": i, "lr": 0.01} for i in (19, 39)])
    writers = build_glip_writers(str(tmp_path), 60)
    _before_train(RedoneIterationLogs(str(tmp_path)), _Trainer(30, 60, writers))
    assert _iterations(tmp_path / "metrics.json") == [19]
    tensorboard = next(w for w in writers if isinstance(w, TensorboardXWriter))
    assert tensorboard._writer_args["purge_step"] == 30
    # the writer keeps appending after the record left
    json_writer = next(w for w in writers if isinstance(w, JSONWriter))
    with EventStorage(start_iter=39) as storage:
        storage.put_scalar("lr", 0.001, smoothing_hint=False)
        json_writer.write()
    for w in writers:
        w.close()
    assert _iterations(tmp_path / "metrics.json") == [19, 39]


def test_a_run_without_resume_over_an_earlier_one_says_so(tmp_path, caplog):
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    _write_records(tmp_path / "metrics.json", [{"iteration": 19, "lr": 0.01}])
    with caplog.at_level(logging.WARNING):
        writers = build_glip_writers(str(tmp_path), 60)
        _before_train(RedoneIterationLogs(str(tmp_path)), _Trainer(0, 60, writers))
    assert "holds an earlier run (last checkpoint model_final.pth)" in caplog.text
    assert "Pass --resume" in caplog.text
    # the earlier run's records stay (Detectron2 appends): nothing of it is lost
    assert [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()] == [
        {"iteration": 19, "lr": 0.01}]


def test_resuming_past_max_iter_warns_that_nothing_is_trained(caplog):
    with caplog.at_level(logging.WARNING):
        _before_train(ExactResumeHook(data_loader=None), _Trainer(45, 30, []))
    assert "checkpoint is at iteration 45, SOLVER.MAX_ITER is 30: there is nothing left" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _before_train(ExactResumeHook(data_loader=None), _Trainer(15, 30, []))
    assert "nothing left" not in caplog.text


def _train(cfg_file, resume):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "train_net.py", *(["--resume"] if resume else []), "--config-file", cfg_file]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.heavy(25)
def test_train_net_resume_logs_each_iteration_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "data"
    data.mkdir()
    cfg = fast_tiny_cfg()
    cfg.DATASETS.CUSTOM = [["journey_s21_train", write_detection_dataset(data), str(data)]]
    cfg.DATASETS.TRAIN = ("journey_s21_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 80
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = 25, 15  # logged at 19, 24; saved at 14
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS, cfg.SOLVER.BASE_LR = 2, (17,), 0.01
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg_file = write_cfg(cfg, tmp_path / "cfg.yaml")
    _train(cfg_file, resume=False)
    out = tmp_path / "out"
    first = {r["iteration"]: r for r in map(json.loads, (out / "metrics.json").read_text().splitlines())}
    # as after a kill -9 at iteration 24: the last checkpoint is that of iteration 14
    (out / "last_checkpoint").write_text("model_0000014.pth")
    _train(cfg_file, resume=True)
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [19, 24]
    # the resumed run's LR schedule: past the step at 17, as in the first run
    assert [r["lr"] for r in records] == [pytest.approx(0.001)] * 2 == [first[19]["lr"], first[24]["lr"]]
    assert "Starting training from iteration 15" in (out / "log.txt").read_text()
    events = EventAccumulator(str(out))
    events.Reload()
    assert [e.step for e in events.Scalars("total_loss")] == [19, 24]


def test_an_output_dir_that_cannot_be_created_is_one_error_line(tmp_path, capsys):
    """Was a NotADirectoryError traceback from default_setup, in every launched process."""
    from tests.reliability.helpers import load_train_net

    train_net = load_train_net()
    (tmp_path / "afile").write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f'_BASE_: "{os.path.join(ROOT, "configs", "demo_glip_tiny_shapes.yaml")}"\n')
    with pytest.raises(SystemExit) as e:
        train_net.cli(["--config-file", str(config), "--eval-only", "MODEL.WEIGHTS", "w.pth",
                       "OUTPUT_DIR", str(tmp_path / "afile" / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: OUTPUT_DIR '{tmp_path / 'afile' / 'out'}' cannot be created: "
                          f"'{tmp_path / 'afile'}' is a file, not a folder. Set OUTPUT_DIR to a "
                          "folder you can write to.")
