"""Registration of whatever real datasets are present under a datasets root."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.datasets import register_all_real
from tests.benchmarks.conftest import forget
from tests.benchmarks.helpers import coco_json, write_json
from tests.benchmarks.test_mdetr import flickr_json, goldg_json, refexp_json


@pytest.fixture
def root(tmp_path):
    det = coco_json([(1, "Person")], [(1, "images/v2/patch0/x.jpg")], [(1, 1, [0, 0, 5, 5])])
    write_json(tmp_path / "objects365/annotations/zhiyuan_objv2_val.json", det)
    write_json(tmp_path / "objects365_v1/annotations/objects365_train.json", det)
    write_json(
        tmp_path / "coco/annotations/lvis_v1_minival_inserted_image_name.json",
        {"images": [], "annotations": [], "categories": []},
    )
    mdetr = tmp_path / "mdetr_annotations"
    write_json(mdetr / "final_mixed_train_no_coco.json", goldg_json())
    write_json(mdetr / "final_flickr_separateGT_val.json", flickr_json())
    write_json(mdetr / "final_flickr_separateGT_train.json", flickr_json())
    write_json(mdetr / "final_flickr_mergedGT_test.json", flickr_json())
    write_json(mdetr / "finetune_refcoco_val.json", refexp_json())
    write_json(mdetr / "finetune_refcoco+_testA.json", refexp_json())
    write_json(mdetr / "finetune_refcocog_train.json", refexp_json())
    (tmp_path / "flickr30k/flickr30k_images/val").mkdir(parents=True)
    for d in ("Annotations", "Sentences"):
        (tmp_path / "flickr30k/flickr30k_entities" / d).mkdir(parents=True)
    write_json(
        tmp_path / "odinw/pothole/valid/annotations_without_background.json",
        coco_json([(1, "pothole")], [(1, "p.jpg")], []),
    )
    return tmp_path


EXPECTED = {
    "objects365_v2_val": "coco",
    "objects365_v1_train": "coco",
    "object365_train": "coco",
    "lvis_v1_minival": "lvis",
    "mixed_train_no_coco": "grounding",
    "flickr30k_train": "grounding",
    "flickr30k_val": "flickr",
    "flickr30k_test_merged": "flickr",
    "refcoco_val": "refcoco",
    "refcoco+_testA": "refcoco",
    "refcocog_train": "grounding",
    "odinw_pothole_val": "odinw",
}


def test_only_datasets_present_are_registered_with_their_evaluators(root):
    registered = register_all_real(str(root))
    try:
        assert sorted(registered) == sorted(EXPECTED)
        for name, kind in EXPECTED.items():
            assert MetadataCatalog.get(name).evaluator_type == kind, name
        assert "objects365_v2_train" not in DatasetCatalog.list()
        # Detectron2's builtins are never re-registered.
        assert "lvis_v1_val" in DatasetCatalog.list() and "lvis_v1_val" not in registered
        # GLIP-T's Objects365 is v1 when both are there.
        assert MetadataCatalog.get("object365_train").json_file.endswith("objects365_train.json")
        val = DatasetCatalog.get("flickr30k_val")
        assert val[0]["file_name"] == str(root / "flickr30k/flickr30k_images/val/100.jpg")
        assert MetadataCatalog.get("flickr30k_val").flickr_entities_dir == str(
            root / "flickr30k/flickr30k_entities"
        )
        assert MetadataCatalog.get("flickr30k_test_merged").flickr_gt_type == "merged"
        assert DatasetCatalog.get("refcoco_val")[0]["file_name"] == str(
            root / "coco/train2014/COCO_train2014_000000000000.jpg"
        )
        goldg = DatasetCatalog.get("mixed_train_no_coco")
        assert goldg[0]["file_name"] == str(root / "gqa/images/2354786.jpg")
        # A second call registers nothing new and raises nothing.
        assert register_all_real(str(root)) == []
    finally:
        forget(*registered)
