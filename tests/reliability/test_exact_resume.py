"""Issue 15, item 5: a training run killed with SIGKILL and resumed with --resume reproduces the
uninterrupted run's losses (and final weights) exactly on CPU, in one process and in two (DDP over
gloo, as `train_net.py --num-gpus 2` runs on a machine without CUDA)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip_d2.atomic_file import _machine
from tests.reliability.helpers import fast_tiny_cfg, write_cfg

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "reliability" / "train_logged.py"
MAX_ITER, PERIOD = 7, 3


def write_detection_dataset(folder: Path, n: int = 10):
    """n random images of two orientations (so aspect-ratio grouping delivers out of order)
    with 1-2 boxes of three categories, as a COCO json."""
    rng = np.random.default_rng(0)
    images, annos = [], []
    for i in range(n):
        h, w = (48, 80) if rng.random() < 0.5 else (80, 48)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for k in range(1 + i % 2):
            annos.append({"id": len(annos) + 1, "image_id": i + 1, "category_id": 1 + (i + k) % 3,
                          "bbox": [4 + 6 * k, 5, 20, 18], "area": 360, "iscrowd": 0})
    cats = [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"},
            {"id": 3, "name": "green triangle"}]
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annos, "categories": cats}))
    return str(path)


def train_cfg(tmp_path, output_dir, ema_decay=0.0):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    json_file = write_detection_dataset(data)
    cfg = fast_tiny_cfg()
    cfg.DATASETS.CUSTOM = [["resume_shapes_train", json_file, str(data)]]
    cfg.DATASETS.TRAIN = ("resume_shapes_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48, 64), 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.CHECKPOINT_PERIOD = PERIOD
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (6,)
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 11
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.EMA_DECAY = ema_decay
    return write_cfg(cfg, tmp_path / f"{Path(output_dir).name}.yaml")


def _start(cfg_file, loss_file, procs, resume=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(SCRIPT), str(loss_file), "--config-file", cfg_file, "--num-gpus", str(procs)]
    if resume:
        cmd.append("--resume")
    # its own session: SIGKILL to the group reaches the training processes it spawns
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _losses(path):
    out = []
    for line in Path(path).read_text().splitlines():
        it, value = line.split()
        out.append((int(it), float.fromhex(value)))
    return out


def _wait(proc, what):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"


@pytest.mark.parametrize("procs", [pytest.param(1, marks=pytest.mark.heavy(40)),
                                   pytest.param(2, marks=pytest.mark.heavy(100))])
def test_killed_and_resumed_training_reproduces_the_uninterrupted_run(tmp_path, procs):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_log, killed_log = tmp_path / "full.txt", tmp_path / "killed.txt"
    # with a weight EMA: it is saved after each step's update and resumes exactly too
    full = _start(train_cfg(tmp_path, full_dir, ema_decay=0.5), full_log, procs)
    killed_cfg = train_cfg(tmp_path, killed_dir, ema_decay=0.5)
    victim = _start(killed_cfg, killed_log, procs)
    # kill -9 once the run is past its first checkpoint (iteration 2) and mid-way to the next
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if killed_log.exists() and any(it >= PERIOD + 1 for it, _ in _losses(killed_log)):
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed:\n" + victim.stderr.read()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    before_kill = _losses(killed_log)
    last = (killed_dir / "last_checkpoint").read_text()
    resumed_from = int(last[len("model_"):-len(".pth")])
    assert resumed_from < before_kill[-1][0]  # iterations after the checkpoint are redone
    # what a checkpoint write killed before its rename leaves (its process is gone), and one of a
    # process that still runs (this one): the resumed run removes the first only
    here, old = _machine(), time.time() - 120  # untouched for two minutes
    abandoned = killed_dir / f".model_0000005.pth.{victim.pid}@{here}.0123abcd.tmp"
    abandoned.write_bytes(b"x" * 2**20)
    running = killed_dir / f".model_0000005.pth.{os.getpid()}@{here}.0123abcd.tmp"
    running.write_bytes(b"x")
    for path in (abandoned, running):
        os.utime(path, (old, old))
    _wait(_start(killed_cfg, killed_log, procs, resume=True), "the resumed run")
    assert not abandoned.exists() and running.exists()
    assert f"Removed 1 incomplete file(s) (1.0 MiB) that a killed run left in {killed_dir}: " \
           f"{abandoned.name}" in (killed_dir / "log.txt").read_text()
    _wait(full, "the uninterrupted run")
    # glip_d2's own INFO lines reach OUTPUT_DIR/log.txt next to Detectron2's (train_net's setup)
    log = (full_dir / "log.txt").read_text()
    assert "d2.engine.train_loop INFO: Starting training" in log
    assert "glip_d2.engine.optimizer INFO: Optimizer " in log

    reference = dict(_losses(full_log))
    assert sorted(reference) == list(range(MAX_ITER))
    after = _losses(killed_log)[len(before_kill):]
    assert [it for it, _ in after] == list(range(resumed_from + 1, MAX_ITER))
    for it, loss in before_kill + after:
        assert loss == reference[it], f"iteration {it}: {loss} vs uninterrupted {reference[it]}"
    a = torch.load(full_dir / "model_final.pth", weights_only=True)
    b = torch.load(killed_dir / "model_final.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert set(a["ema"]) == set(a["model"])
    assert [k for k in a["ema"] if not torch.equal(a["ema"][k], b["ema"][k])] == []
    ranks = b["trainer"]["hooks"]["ExactResumeHook"]["ranks"]
    assert len(ranks) == procs
    for rank, state in enumerate(ranks):
        stream = state["stream"]
        assert stream == a["trainer"]["hooks"]["ExactResumeHook"]["ranks"][rank]["stream"]
        # each process reads its share of the 2 images per step
        assert stream["next_position"] + len(stream["delivered_ahead"]) == MAX_ITER * 2 // procs
