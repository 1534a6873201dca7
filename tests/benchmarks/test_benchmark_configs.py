"""The benchmark configs: they load, build on GLIP-T, and set what each protocol needs."""

from pathlib import Path

import pytest
import yaml
from detectron2.config import get_cfg

from glip_d2 import add_glip_config
from glip_d2.config import add_dataset_config
from glip_d2.data.datasets import odinw_eval_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "benchmarks"


def _load(name):
    cfg = get_cfg()
    add_glip_config(cfg)
    add_dataset_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    return cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_config_builds_on_glip_t(path):
    assert yaml.safe_load(path.read_text())["_BASE_"] == "../glip_swin_t.yaml"
    cfg = _load(path.name)
    assert cfg.MODEL.META_ARCHITECTURE == "GLIP" and len(cfg.DATASETS.TEST) >= 1


def test_lvis_minival_configs_chunk_40_names_and_pick_the_protocol():
    standard = _load("lvis_minival.yaml")
    assert standard.DATASETS.TEST == ("lvis_v1_minival",)
    assert standard.MODEL.GLIP.TEST_CHUNK_SIZE == 40
    assert standard.MODEL.ATSS.DETECTIONS_PER_IMG == 300
    assert not standard.TEST.BENCHMARK.LVIS_FIXED_AP
    fixed = _load("lvis_minival_fixed_ap.yaml")
    assert fixed.TEST.BENCHMARK.LVIS_FIXED_AP and fixed.MODEL.ATSS.DETECTIONS_PER_IMG == 0
    assert fixed.TEST.BENCHMARK.FIXED_AP_DETS_PER_CATEGORY == 10000


def test_odinw_zero_shot_configs_cover_the_suites():
    assert list(_load("odinw13_zero_shot.yaml").DATASETS.TEST) == odinw_eval_names("odinw_13")
    assert list(_load("odinw35_zero_shot.yaml").DATASETS.TEST) == odinw_eval_names("odinw_35")
    finetune = _load("odinw_finetune.yaml")
    assert finetune.DATASETS.TRAIN == ("odinw_Aquarium_train",)
    assert finetune.SOLVER.MAX_ITER == 12 * 448 // finetune.SOLVER.IMS_PER_BATCH


def test_flickr_and_refcoco_configs_name_every_split():
    assert _load("flickr30k.yaml").DATASETS.TEST == ("flickr30k_val", "flickr30k_test")
    refcoco = _load("refcoco.yaml").DATASETS.TEST
    assert len(refcoco) == 8 and "refcoco+_testB" in refcoco and "refcocog_test" in refcoco
