"""ODinW: registration from a root of dataset folders, prompt names, AP per dataset and suite."""

import logging
import math
from collections import OrderedDict
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from glip_d2 import add_glip_config
from glip_d2.config import add_dataset_config
from glip_d2.data.datasets import ODINW_SUITES, odinw_eval_names, register_odinw
from glip_d2.data.datasets.odinw import ODINW_DATASETS, odinw_prompt_names
from glip_d2.engine import build_glip_evaluator, set_test_vocabulary
from glip_d2.evaluation import odinw_suite_summary
from tests.benchmarks.conftest import forget
from tests.benchmarks.helpers import coco_json, instances, write_json

AQUARIUM = "Aquarium/Aquarium Combined.v2-raw-1024.coco"
FINETUNE_CONFIG = Path(__file__).resolve().parents[2] / "configs/benchmarks/odinw_finetune.yaml"


@pytest.fixture
def odinw_root(tmp_path):
    root = tmp_path / "odinw"
    fish = coco_json(
        [(1, "fish"), (2, "jellyfish")],
        [(1, "a.jpg"), (2, "b.jpg")],
        [(1, 1, [10, 10, 20, 20]), (2, 2, [30, 30, 40, 20])],
    )
    for split_dir in ("train", "valid", "test"):
        write_json(root / AQUARIUM / split_dir / "annotations_without_background.json", fish)
    pistols = coco_json([(1, "pistol")], [(5, "p.jpg")], [(5, 1, [0, 0, 50, 50])])
    for split in ("train", "val"):
        write_json(
            root / "pistols/export" / f"{split}_annotations_without_background.json", pistols
        )
    # A raw Roboflow export: category 0 is the background/supercategory entry, one name blank.
    chess = coco_json(
        [(0, "pieces"), (1, "  "), (2, "black bishop")], [(1, "c.jpg")], [(1, 2, [1, 1, 5, 5])]
    )
    write_json(root / "ChessPieces/Chess Pieces.v23-raw.coco/valid/_annotations.coco.json", chess)
    names = register_odinw(str(root))
    yield root, names
    forget(*names)


def test_odinw_suites_follow_glip():
    assert len(ODINW_SUITES["odinw_13"]) == 13 and len(ODINW_SUITES["odinw_35"]) == 35
    assert set(ODINW_SUITES["odinw_13"]) <= set(ODINW_SUITES["odinw_35"])
    assert (
        "plantdoc_100x100" in ODINW_DATASETS and "plantdoc_100x100" not in ODINW_SUITES["odinw_35"]
    )
    names = odinw_eval_names("odinw_13")
    assert len(names) == 13
    assert "odinw_Aquarium_val" in names and "odinw_EgoHands_generic_minival" in names


def test_odinw_registered_from_a_root_of_dataset_folders(odinw_root):
    root, names = odinw_root
    assert sorted(names) == sorted(
        [
            "odinw_Aquarium_train",
            "odinw_Aquarium_val",
            "odinw_Aquarium_test",
            "odinw_pistols_train",
            "odinw_pistols_val",
            "odinw_ChessPieces_val",
        ]
    )
    meta = MetadataCatalog.get("odinw_Aquarium_val")
    assert meta.evaluator_type == "odinw" and meta.odinw_suites == ["odinw_13", "odinw_35"]
    assert meta.image_root == str(root / AQUARIUM / "valid")
    assert MetadataCatalog.get("odinw_pistols_val").image_root == str(root / "pistols/export")
    dicts = DatasetCatalog.get("odinw_Aquarium_val")
    assert meta.thing_classes == ["fish", "jellyfish"]
    assert [d["annotations"][0]["category_id"] for d in dicts] == [0, 1]
    chess = DatasetCatalog.get("odinw_ChessPieces_val")
    chess_meta = MetadataCatalog.get("odinw_ChessPieces_val")
    assert chess_meta.thing_classes == ["object", "black bishop"]  # background left out
    assert chess[0]["annotations"][0]["category_id"] == 1


def test_odinw_prompt_names_are_usable_labels():
    assert odinw_prompt_names(["o", "o ", "  ", "Q", "t\\"]) == ["o", "o 2", "object", "Q", "t\\"]


def _evaluate(cfg, name, preds, output_folder):
    evaluator = build_glip_evaluator(cfg, name, output_folder=output_folder)
    assert isinstance(evaluator, COCOEvaluator)
    evaluator.reset()
    for image_id, out in preds:
        evaluator.process([{"image_id": image_id}], [out])
    return evaluator.evaluate()


@pytest.fixture
def odinw13_results():
    """``results(**by_key)``: results of all 13 ODinW-13 datasets on their eval split, hand-made
    (AP 40, no small objects: APs NaN) for those not given; metadata as register_odinw sets it
    for the datasets not registered by the test itself."""
    made = []

    def results(**given):
        out = OrderedDict()
        for name, key in zip(odinw_eval_names("odinw_13"), ODINW_SUITES["odinw_13"]):
            if name not in MetadataCatalog.list():
                MetadataCatalog.get(name).set(
                    odinw_dataset=key,
                    odinw_suites=["odinw_13", "odinw_35"],
                    odinw_eval_split=ODINW_DATASETS[key].eval_split,
                )
                made.append(name)
            out[name] = given.get(key) or {
                "bbox": {
                    "AP": 40.0,
                    "AP50": 60.0,
                    "AP75": 40.0,
                    "APs": math.nan,
                    "APm": 40.0,
                    "APl": 40.0,
                }
            }
        return out

    yield results
    forget(*made)


def test_odinw_ap_per_dataset_and_suite_average(odinw_root, odinw13_results, caplog, tmp_path):
    cfg = get_cfg()
    add_glip_config(cfg)
    add_dataset_config(cfg)
    cases = {
        # both objects found exactly: AP 100
        "odinw_Aquarium_val": [
            (1, instances([[10, 10, 30, 30]], [0.9], [0])),
            (2, instances([[30, 30, 70, 50]], [0.8], [1])),
        ],
        # a false positive ranked above the only true positive: precision 1/2 -> AP 50
        "odinw_pistols_val": [
            (5, instances([[60, 60, 90, 90], [0, 0, 50, 50]], [0.9, 0.8], [0, 0]))
        ],
    }
    results = {name: _evaluate(cfg, name, p, str(tmp_path / name)) for name, p in cases.items()}
    assert results["odinw_Aquarium_val"]["bbox"]["AP"] == pytest.approx(100.0)
    assert results["odinw_pistols_val"]["bbox"]["AP"] == pytest.approx(50.0)
    # Two of the 13 datasets: no suite number (a mean over two is not ODinW-13's).
    with caplog.at_level(logging.INFO):
        summary = odinw_suite_summary({**results, "coco_2017_val": {"bbox": {"AP": 1.0}}})
    assert summary == {}
    assert "odinw_13: 2 of 13 datasets evaluated" in caplog.text
    assert "odinw_35: 2 of 35 datasets evaluated" in caplog.text
    # All 13: the plain mean; ODinW-35 still incomplete.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        summary = odinw_suite_summary(
            odinw13_results(
                Aquarium=results["odinw_Aquarium_val"], pistols=results["odinw_pistols_val"]
            )
        )
    assert list(summary) == ["odinw_13"]
    assert "odinw_35: 13 of 35 datasets evaluated" in caplog.text
    assert summary["odinw_13"]["bbox"]["AP"] == pytest.approx((100 + 50 + 11 * 40) / 13)
    # NaN APs (no small objects) are skipped: only Aquarium has small objects; pistols' one
    # object is medium-sized, its APm 100 with the hand-made datasets' 40.
    assert summary["odinw_13"]["bbox"]["APs"] == pytest.approx(100.0)
    assert summary["odinw_13"]["bbox"]["APm"] == pytest.approx((100 + 11 * 40) / 12)
    # approx: pycocotools' AP (used where Detectron2 has no compiled ops) gives 99.99999999999997
    assert summary["odinw_13"]["datasets"] == pytest.approx(
        {k: {"Aquarium": 100.0, "pistols": 50.0}.get(k, 40.0) for k in ODINW_SUITES["odinw_13"]}
    )


def test_odinw_dataset_without_detections_counts_as_ap_0(
    odinw_root, odinw13_results, caplog, tmp_path
):
    cfg = get_cfg()
    add_glip_config(cfg)
    add_dataset_config(cfg)
    perfect = [
        (1, instances([[10, 10, 30, 30]], [0.9], [0])),
        (2, instances([[30, 30, 70, 50]], [0.8], [1])),
    ]
    aquarium = _evaluate(cfg, "odinw_Aquarium_val", perfect, str(tmp_path / "a"))
    nothing = [(5, instances([], [], []))]
    pistols = _evaluate(cfg, "odinw_pistols_val", nothing, str(tmp_path / "p"))
    assert math.isnan(pistols["bbox"]["AP"])  # COCOEvaluator: "No predictions from the model!"
    with caplog.at_level(logging.INFO):
        summary = odinw_suite_summary(odinw13_results(Aquarium=aquarium, pistols=pistols))
    suite = summary["odinw_13"]
    # Skipping the NaN would give (100 + 11 * 40) / 12 = 45.
    assert suite["bbox"]["AP"] == pytest.approx((100 + 0 + 11 * 40) / 13)
    assert suite["bbox"]["AP50"] == pytest.approx((100 + 0 + 11 * 60) / 13)
    assert suite["bbox"]["AP75"] == pytest.approx((100 + 0 + 11 * 40) / 13)
    assert suite["datasets"]["pistols"] == 0.0
    assert "odinw_pistols_val: AP/AP50/AP75 NaN" in caplog.text
    # The size metrics stay NaN and are skipped: APs over Aquarium's only (the others' are NaN).
    assert suite["bbox"]["APs"] == pytest.approx(aquarium["bbox"]["APs"])


def test_odinw_suite_counts_only_the_split_glip_evaluates(odinw_root, odinw13_results, caplog):
    # Aquarium's test split after its val split (the last one used to win).
    results = odinw13_results(Aquarium={"bbox": {"AP": 60.0}})
    results["odinw_Aquarium_test"] = {"bbox": {"AP": 20.0}}
    with caplog.at_level(logging.INFO):
        summary = odinw_suite_summary(results)
    assert summary["odinw_13"]["datasets"]["Aquarium"] == 60.0
    assert summary["odinw_13"]["bbox"]["AP"] == pytest.approx((60 + 12 * 40) / 13)
    assert "odinw_Aquarium_test: not the split GLIP evaluates for Aquarium (val)" in caplog.text
    # Only the test split: Aquarium is not evaluated, so no ODinW-13 number.
    del results["odinw_Aquarium_val"]
    assert odinw_suite_summary(results) == {}


def test_odinw_finetune_config_on_one_dataset_gives_no_suite_number(odinw_root, caplog):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(FINETUNE_CONFIG))
    assert list(cfg.DATASETS.TEST) == ["odinw_Aquarium_val"]
    with caplog.at_level(logging.INFO):
        summary = odinw_suite_summary({n: {"bbox": {"AP": 50.0}} for n in cfg.DATASETS.TEST})
    assert summary == {}  # train_net.py then adds no odinw_13 / odinw_35 entry
    assert "odinw_13: 1 of 13 datasets evaluated" in caplog.text


def test_odinw_vocabulary_is_set_from_a_lazily_registered_dataset(odinw_root):
    class Model:
        def set_vocabulary(self, names):
            self.names = names

    model = Model()
    assert not hasattr(MetadataCatalog.get("odinw_pistols_train"), "thing_classes")
    set_test_vocabulary(model, "odinw_pistols_train")
    assert model.names == ["pistol"]
