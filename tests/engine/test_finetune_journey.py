"""A Detectron2 user's fine-tuning journey with train_net.py on their own COCO-format data
(DATASETS.CUSTOM): Detectron2's outputs, an evaluation during training that agrees with
``--eval-only`` of the same checkpoint, two datasets drawn by DATASETS.TRAIN_RATIOS, bad data
refused naming file and record (or dropped with DATASETS.SKIP_BAD_RECORDS), and a config whose
checkpoint period would stop the run after its first step refused before it starts.

The kill -9 / ``--resume`` half of the journey is tests/reliability/test_exact_resume.py."""

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from tests.reliability.helpers import fast_tiny_cfg, load_train_net, write_cfg
from tests.reliability.test_exact_resume import write_detection_dataset


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


@pytest.fixture
def names():
    """Dataset names the test registers (through DATASETS.CUSTOM), removed afterwards."""
    registered = []
    yield registered
    for name in registered:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    write_detection_dataset(folder)
    return folder


def _bad_json(folder: Path, edit) -> str:
    data = json.loads((folder / "train.json").read_text())
    edit(data)
    path = folder / "bad.json"
    path.write_text(json.dumps(data))
    return str(path)


def _cfg(tmp_path, custom, train, test=(), **solver):
    cfg = fast_tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []  # each dataset's own class names
    cfg.DATASETS.CUSTOM = custom
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48, 64), 96
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 4, (3,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.TEST.EVAL_PERIOD = 0
    cfg.TEST.IMS_PER_BATCH = 2
    cfg.SEED = 3
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    for key, value in solver.items():
        node, leaf = key.split("__")
        cfg[node][leaf] = value
    return cfg


def _args(cfg_file, *opts, eval_only=False, resume=False):
    return argparse.Namespace(config_file=cfg_file, opts=list(opts), eval_only=eval_only,
                              resume=resume, num_gpus=1, num_machines=1, machine_rank=0,
                              dist_url="auto", protocol="")


def test_checkpoint_period_zero_is_refused_before_training(train_net, tmp_path, names, capsys):
    """SOLVER.CHECKPOINT_PERIOD 0 (read like TEST.EVAL_PERIOD 0, "at the end only") stopped
    training after its first iteration with a bare ZeroDivisionError from Detectron2's
    PeriodicCheckpointer; it is refused by the start-up checks, naming the key and the fix."""
    data = _data(tmp_path)
    names.append("journey_period_train")
    custom = [["journey_period_train", str(data / "train.json"), str(data)]]
    for period in (0, -5):
        cfg = _cfg(tmp_path, custom, ["journey_period_train"], SOLVER__CHECKPOINT_PERIOD=period)
        cfg_file = write_cfg(cfg, tmp_path / "period.yaml")
        with pytest.raises(SystemExit) as exit_info:
            train_net.cli(["--config-file", cfg_file])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"SOLVER.CHECKPOINT_PERIOD {period} must be a positive number" in err
        assert "SOLVER.MAX_ITER (4)" in err
    # evaluating writes no checkpoint: the period does not matter there
    cfg = _cfg(tmp_path, custom, ["journey_period_train"], SOLVER__CHECKPOINT_PERIOD=0)
    cfg.MODEL.WEIGHTS = "weights.pth"
    loaded = train_net.load_cfg(_args(write_cfg(cfg, tmp_path / "eval.yaml"), eval_only=True))
    train_net.check_setup(loaded, _args("", eval_only=True))
    # an epoch run sets the period itself (SOLVER.CHECKPOINT_PER_EPOCH)
    cfg = _cfg(tmp_path, custom, ["journey_period_train"], SOLVER__CHECKPOINT_PERIOD=0,
               SOLVER__MAX_EPOCH=2, SOLVER__CHECKPOINT_PER_EPOCH=1.0)
    loaded = train_net.load_cfg(_args(write_cfg(cfg, tmp_path / "epochs.yaml")))
    train_net.check_setup(loaded, _args(""))


@pytest.mark.heavy(20)
def test_periodic_evaluation_agrees_with_eval_only_and_outputs_are_detectron2s(
    train_net, tmp_path, names
):
    """Two CUSTOM training sets drawn 3 : 1, a weight EMA evaluated (TEST.USE_EMA): the
    evaluation after iteration 2 (TEST.EVAL_PERIOD) and the final one give exactly the
    detections ``--eval-only`` gives on model_0000001.pth and model_final.pth; the run writes
    Detectron2's checkpoints, last_checkpoint, metrics.json (losses, LR, the AP of each
    evaluation) and config.yaml."""
    data = _data(tmp_path)
    second = json.loads((data / "train.json").read_text())
    second["images"] = second["images"][:4]
    second["annotations"] = [a for a in second["annotations"] if a["image_id"] <= 4]
    (data / "second.json").write_text(json.dumps(second))
    names += ["journey_a", "journey_b", "journey_val"]
    custom = [["journey_a", str(data / "train.json"), str(data)],
              ["journey_b", str(data / "second.json"), str(data)],
              ["journey_val", str(data / "second.json"), str(data)]]
    cfg = _cfg(tmp_path, custom, ["journey_a", "journey_b"], ["journey_val"],
               SOLVER__EMA_DECAY=0.5, TEST__USE_EMA=True, TEST__EVAL_PERIOD=2)
    cfg.DATASETS.TRAIN_RATIOS = (3, 1)
    cfg_file = write_cfg(cfg, tmp_path / "train.yaml")
    out = Path(cfg.OUTPUT_DIR)
    seen = {}

    class Trainer(train_net.Trainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            from detectron2.utils.events import get_event_storage

            results = super().test(cfg, model, evaluators)
            preds = out / "inference" / "journey_val" / "instances_predictions.pth"
            seen[get_event_storage().iter] = torch.load(preds, weights_only=False)
            return results

    loaded = train_net.setup(_args(cfg_file))
    train_net.check_setup(loaded, _args(cfg_file))
    trainer = Trainer(loaded)
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert (out / "config.yaml").is_file()
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train_rows = [r for r in rows if "total_loss" in r]
    assert train_rows and train_rows[-1]["iteration"] == 3 and train_rows[-1]["lr"] > 0
    assert sorted(r["iteration"] for r in rows if "journey_val/bbox/AP" in r) == [1, 4]
    from glip_d2.engine import tensorboard_available

    assert any(out.glob("events.out.tfevents.*")) == tensorboard_available()
    log = (out / "log.txt").read_text()
    assert "journey_a (10 images, 75.0%), journey_b (4 images, 25.0%)" in log

    assert sorted(seen) == [1, 4]  # after iteration 2 (index 1), and at the end
    for checkpoint, iteration in (("model_0000001.pth", 1), ("model_final.pth", 4)):
        eval_dir = tmp_path / f"eval_{iteration}"
        train_net.main(_args(cfg_file, "MODEL.WEIGHTS", str(out / checkpoint),
                             "OUTPUT_DIR", str(eval_dir), eval_only=True))
        got = torch.load(eval_dir / "inference" / "journey_val" / "instances_predictions.pth",
                         weights_only=False)
        assert len(got) == len(seen[iteration]) == 4
        assert any(len(p["instances"]) for p in got)
        assert got == seen[iteration], f"--eval-only of {checkpoint} differs from training's"
    # the EMA was what both evaluated: the raw weights give other detections
    raw_dir = tmp_path / "eval_raw"
    train_net.main(_args(cfg_file, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                         "TEST.USE_EMA", "False", "OUTPUT_DIR", str(raw_dir), eval_only=True))
    raw = torch.load(raw_dir / "inference" / "journey_val" / "instances_predictions.pth",
                     weights_only=False)
    assert raw != seen[4]


def _cli_error(train_net, capsys, cfg_file) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(["--config-file", cfg_file])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_custom_jsons_are_refused_naming_file_and_record(train_net, tmp_path, names, capsys):
    """A box of negative width and a category id that is not in 'categories': one message
    naming the json and the annotation, exit 2, before any model is built. A missing image file:
    refused when the training set is first loaded, naming the record, or dropped and counted
    with DATASETS.SKIP_BAD_RECORDS."""
    data = _data(tmp_path)

    def negative_width(d):
        d["annotations"][3]["bbox"][2] = -5.0

    def unknown_category(d):
        d["annotations"][4]["category_id"] = 99

    for k, (edit, expected) in enumerate([
        (negative_width, "annotation #3 (id 4): bbox [4, 5, -5.0, 18] (xywh) has a negative "
                         "width or height"),
        (unknown_category, "annotation #4 (id 5) has category_id 99, which is not among the "
                           "json's categories"),
    ]):
        path = _bad_json(data, edit)
        names.append(f"journey_bad_{k}")
        cfg = _cfg(tmp_path, [[f"journey_bad_{k}", path, str(data)]], [f"journey_bad_{k}"])
        err = _cli_error(train_net, capsys, write_cfg(cfg, tmp_path / "bad.yaml"))
        assert f"{path}: {expected}" in err

    def missing_image(d):
        d["images"][2]["file_name"] = "missing.png"

    path = _bad_json(data, missing_image)
    names.append("journey_missing")
    cfg = _cfg(tmp_path, [["journey_missing", path, str(data)]], ["journey_missing"])
    loaded = train_net.load_cfg(_args(write_cfg(cfg, tmp_path / "missing.yaml")))
    from glip_d2.data.validate import BadRecordError

    with pytest.raises(BadRecordError) as error:
        train_net.Trainer.build_train_loader(loaded)
    message = str(error.value)
    assert f"dataset 'journey_missing' ({path}): 1 of 10 training records" in message
    assert f"record #2 (dataset 'journey_missing', image_id 3, file '{data / 'missing.png'}')" \
        in message and "image file does not exist" in message
    loaded = copy.deepcopy(loaded)
    loaded.defrost()
    loaded.DATASETS.SKIP_BAD_RECORDS = True
    loader = train_net.Trainer.build_train_loader(loaded)
    assert len(loader.dataset) == 9


def test_a_detection_json_without_any_box_is_refused(train_net, tmp_path, names):
    """A CUSTOM training json whose annotations list is empty trained silently with
    loss_box_reg 0 (FILTER_EMPTY_ANNOTATIONS False keeps images without boxes)."""
    data = _data(tmp_path)
    path = _bad_json(data, lambda d: d.update(annotations=[]))
    names.append("journey_no_boxes")
    cfg = _cfg(tmp_path, [["journey_no_boxes", path, str(data)]], ["journey_no_boxes"])
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    loaded = train_net.load_cfg(_args(write_cfg(cfg, tmp_path / "empty.yaml")))
    with pytest.raises(ValueError) as error:
        train_net.Trainer.build_train_loader(loaded)
    assert str(error.value).startswith(
        f"dataset 'journey_no_boxes' ({path}): none of its 10 training images has an annotation"
    )


def test_a_truncated_json_is_named(train_net, tmp_path, names, capsys):
    """json's own "Unterminated string ..." named neither the file nor what to do."""
    data = _data(tmp_path)
    path = _bad_json(data, lambda d: None)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    names.append("journey_truncated")
    cfg = _cfg(tmp_path, [["journey_truncated", path, str(data)]], ["journey_truncated"])
    err = _cli_error(train_net, capsys, write_cfg(cfg, tmp_path / "truncated.yaml"))
    assert f"{path} is not valid json (" in err and "may be truncated" in err
