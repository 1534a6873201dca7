"""python -m glip_d2.data_efficiency end to end at the tiniest size, and its table/plot."""
import json

from glip_d2 import data_efficiency
from glip_d2.data import register_shapes_split
from glip_d2.data.shapes import NOVEL_CLASSES
from tests.helpers import tiny_cfg


def test_summary_and_table():
    records = [{"mode": "zero-shot", "shots": 0, "seed": 0, "AP": 10.0, "AP50": 20.0, "train_seconds": 0}]
    for seed, ap in enumerate([30.0, 40.0]):
        records.append({"mode": "prompt", "shots": 1, "seed": seed, "AP": ap, "AP50": ap + 10,
                        "train_seconds": 5.0, "trainable_params": 100})
    summary = data_efficiency.summarize(records)
    assert summary["zero_shot"] == 10.0
    assert summary["modes"]["prompt"][1]["AP"] == 35.0 and summary["modes"]["prompt"][1]["AP_std"] == 5.0
    table = data_efficiency.markdown_table(summary)
    assert "| prompt | 100 | 35.0 ± 5.0 | 5 |" in table and "| zero-shot | 0 | 10.0 |" in table


def tiny_shapes_cfg(names, tmp_path):
    """A tiny GLIP config with 4 training images of novel shapes and 2 test images, registered
    under fresh names (DATASETS.TRAIN / TEST); returns (cfg, train name, test name)."""
    root = str(tmp_path / "data")
    train, test = names("de_train"), names("de_test")
    register_shapes_split(train, "train_novel", root, num_images=4, image_size=128)
    register_shapes_split(test, "val_novel", root, num_images=2, image_size=128,
                          vocabulary=NOVEL_CLASSES)
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.CHECK_RECORDS = "none"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    return cfg, train, test


def test_end_to_end_tiny(tmp_path, names):
    cfg, train, test = tiny_shapes_cfg(names, tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "out"
    data_efficiency.main([
        "--config-file", str(config), "--train-dataset", train, "--test-dataset", test,
        "--output-dir", str(out), "--shots", "1", "--seeds", "0", "--iters", "2",
        "--batch-size", "2",
    ])
    records = json.loads((out / "results.json").read_text())
    assert [(r["mode"], r["shots"]) for r in records] == [
        ("zero-shot", 0), ("prompt", 1), ("linear", 1), ("full", 1)]
    params = {r["mode"]: r["trainable_params"] for r in records}
    assert params["prompt"] == cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN * 384  # the offset
    assert 0 < params["linear"] < params["full"] and params["prompt"] < params["full"]
    assert all(r["iters"] == 2 for r in records[1:])
    summary = json.loads((out / "table.json").read_text())
    assert set(summary["modes"]) == {"prompt", "linear", "full"}
    assert "1-shot AP" in (out / "table.md").read_text()
    assert (out / "plot.png").stat().st_size > 1000
    # --resume keeps finished runs
    again = data_efficiency.main([
        "--config-file", str(config), "--train-dataset", train, "--test-dataset", test,
        "--output-dir", str(out), "--shots", "1", "--seeds", "0", "--iters", "2",
        "--batch-size", "2", "--resume", "--modes", "prompt",
    ])
    assert len(json.loads((out / "results.json").read_text())) == 4 and "prompt" in again["modes"]


def test_datasets_declared_in_the_config_are_registered(tmp_path, names):
    """A custom COCO json declared the documented way (DATASETS.CUSTOM) is usable by name."""
    from detectron2.data import DatasetCatalog

    from tests.reliability.test_exact_resume import write_detection_dataset

    data = tmp_path / "data"
    data.mkdir()
    name = names("de_custom")
    cfg = tiny_cfg()
    cfg.DATASETS.CUSTOM = [[name, write_detection_dataset(data, n=2), str(data)]]
    config = tmp_path / "custom.yaml"
    config.write_text(cfg.dump())
    args = data_efficiency.get_parser().parse_args(
        ["--config-file", str(config), "--train-dataset", name, "--test-dataset", name])
    base = data_efficiency._base_cfg(args)
    assert base.DATASETS.TRAIN == (name,)
    assert len(DatasetCatalog.get(name)) == 2
