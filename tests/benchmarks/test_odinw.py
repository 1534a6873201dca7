"""ODinW: registration from a root of dataset folders, prompt names, AP per dataset and suite."""

import logging

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


def test_odinw_ap_per_dataset_and_suite_average(odinw_root, caplog, tmp_path):
    cfg = get_cfg()
    add_glip_config(cfg)
    add_dataset_config(cfg)
    results = {}
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
    for name, preds in cases.items():
        evaluator = build_glip_evaluator(cfg, name, output_folder=str(tmp_path / name))
        assert isinstance(evaluator, COCOEvaluator)
        evaluator.reset()
        for image_id, out in preds:
            evaluator.process([{"image_id": image_id}], [out])
        results[name] = evaluator.evaluate()
    assert results["odinw_Aquarium_val"]["bbox"]["AP"] == pytest.approx(100.0)
    assert results["odinw_pistols_val"]["bbox"]["AP"] == pytest.approx(50.0)
    with caplog.at_level(logging.WARNING):
        summary = odinw_suite_summary({**results, "coco_2017_val": {"bbox": {"AP": 1.0}}})
    assert set(summary) == {"odinw_13", "odinw_35"}
    assert summary["odinw_13"]["bbox"]["AP"] == pytest.approx(75.0)
    # approx: pycocotools' AP (used where Detectron2 has no compiled ops) gives 99.99999999999997
    assert summary["odinw_13"]["datasets"] == pytest.approx({"Aquarium": 100.0, "pistols": 50.0})
    assert "2 of 13 datasets evaluated" in caplog.text


def test_odinw_vocabulary_is_set_from_a_lazily_registered_dataset(odinw_root):
    class Model:
        def set_vocabulary(self, names):
            self.names = names

    model = Model()
    assert not hasattr(MetadataCatalog.get("odinw_pistols_train"), "thing_classes")
    set_test_vocabulary(model, "odinw_pistols_train")
    assert model.names == ["pistol"]
