"""Evaluation protocols as fragments on top of any model config (train_net.py --protocol), LVIS
jsons with their own vocabulary by config, chunk-count logging and LVIS evaluation progress."""

import logging
import os

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from lvis import LVISEval

from glip_d2 import add_glip_config, model_zoo
from glip_d2.data.datasets import register_datasets_from_config
from glip_d2.engine import build_glip_evaluator
from glip_d2.evaluation import StandardLVISEvaluator
from glip_d2.modeling.meta_arch.prompting import PromptingMixin
from glip_d2.text import load_tokenizer
from tests.benchmarks.helpers import instances, write_json
from tests.benchmarks.test_lvis import _lvis_json, _run
from tests.reliability.helpers import load_train_net

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOLS = ["coco", "flickr30k", "lvis_minival", "lvis_minival_fixed_ap", "odinw13_zero_shot",
             "odinw35_zero_shot", "refcoco"]


def _cfg(config):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config))
    return cfg


def test_shipped_protocols():
    assert model_zoo.list_protocols() == PROTOCOLS


@pytest.mark.parametrize("name", PROTOCOLS)
def test_benchmark_config_is_glip_t_plus_the_protocol(name):
    """configs/benchmarks/<name>.yaml (GLIP-T + protocol in one file) stays equal to
    glip_swin_t.yaml with the protocol applied."""
    cfg = model_zoo.apply_protocol(_cfg("glip_swin_t"), name)
    cfg.DATASETS.TRAIN = ()
    assert cfg == _cfg(f"benchmarks/{name}")


def test_protocol_fits_a_two_stage_model_and_sets_only_evaluation_keys():
    base = _cfg("two_stage/faster_rcnn_R_50_FPN_glip")
    base.MODEL.ROI_HEADS.SCORE_THRESH_TEST, base.MODEL.ATSS.INFERENCE_TH = 0.5, 0.3  # a model's own
    cfg = model_zoo.apply_protocol(base.clone(), "lvis_minival")
    assert cfg.DATASETS.TEST == ("lvis_v1_minival",)
    # the benchmark's score thresholds, not the model config's: Detectron2's LVIS value for
    # two-stage models, the official 0.05 for one-stage GLIP
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001 and cfg.MODEL.ATSS.INFERENCE_TH == 0.05
    coco = model_zoo.apply_protocol(base.clone(), "coco")
    assert coco.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05 and coco.MODEL.ATSS.INFERENCE_TH == 0.05
    assert cfg.MODEL.GLIP.TEST_CHUNK_SIZE == 40
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.ATSS.DETECTIONS_PER_IMG == 300
    with open(model_zoo.get_protocol_file("lvis_minival")) as f:
        fragment = yaml.safe_load(f)

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k]

    touched = set(leaves(fragment))
    assert {k.split(".")[0] for k in touched} <= {"MODEL", "DATASETS", "TEST"}
    assert not any(k.startswith(("MODEL.META_ARCHITECTURE", "MODEL.BACKBONE", "DATASETS.TRAIN"))
                   for k in touched)
    for key in ("MODEL.META_ARCHITECTURE", "MODEL.ROI_HEADS.NAME", "DATASETS.TRAIN", "SOLVER.BASE_LR"):
        a, b = base, cfg
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == b, key


@pytest.mark.parametrize("name", PROTOCOLS)
def test_a_protocol_applies_without_a_config_version_warning(name):
    """A fragment has no VERSION (a model config's); merged as a file, Detectron2 warned
    "Config '.../protocols/<name>.yaml' has no VERSION" on every --protocol run."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    compat = logging.getLogger("detectron2.config.compat")
    compat.addHandler(handler)
    try:
        cfg = model_zoo.apply_protocol(_cfg("glip_swin_t"), name)
    finally:
        compat.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert cfg.VERSION == 2


def test_bad_protocols_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown evaluation protocol 'lvis_mini'.*lvis_minival"):
        model_zoo.apply_protocol(_cfg("glip_swin_t"), "lvis_mini")
    bad = tmp_path / "p.yaml"
    bad.write_text('_BASE_: "../glip_swin_t.yaml"\nDATASETS:\n  TEST: ("coco_2017_val",)\n')
    with pytest.raises(ValueError, match="_BASE_"):
        model_zoo.apply_protocol(_cfg("glip_swin_t"), str(bad))


def test_train_net_protocol_flag(tmp_path):
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args([
        "--config-file", os.path.join(ROOT, "configs", "demo_glip_tiny_shapes.yaml"),
        "--protocol", "lvis_minival_fixed_ap", "--eval-only",
        "OUTPUT_DIR", str(tmp_path), "MODEL.ATSS.DETECTIONS_PER_IMG", "7",
    ])
    cfg = train_net.setup(args)
    assert cfg.DATASETS.TEST == ("lvis_v1_minival",) and cfg.TEST.BENCHMARK.LVIS_FIXED_AP
    assert cfg.MODEL.ATSS.DETECTIONS_PER_IMG == 7  # command-line options come after the protocol
    assert cfg.MODEL.SWIN.EMBED_DIM == _cfg("demo_glip_tiny_shapes").MODEL.SWIN.EMBED_DIM


def test_custom_lvis_json_with_its_own_vocabulary(tmp_path, names):
    name = names("own_lvis")
    json_file = write_json(tmp_path / "own.json", _lvis_json())
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.CUSTOM = [[name, json_file, str(tmp_path), "lvis"]]
    assert register_datasets_from_config(cfg) == [name]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "lvis"
    assert meta.thing_classes == ["aerosol_can", "air_conditioner", "applesauce"]  # json ids 1, 2, 13
    evaluator = build_glip_evaluator(cfg, name, str(tmp_path / "eval"))
    assert isinstance(evaluator, StandardLVISEvaluator)
    evaluator.reset()
    # image 1: air_conditioner (contiguous 1) right; image 2: applesauce (2) right.
    evaluator.process([{"image_id": 1}], [instances([[10, 10, 30, 30]], [0.9], [1])])
    evaluator.process([{"image_id": 2}], [instances([[0, 0, 30, 30]], [0.8], [2])])
    res = evaluator.evaluate()["bbox"]
    assert res["APf"] == pytest.approx(100.0) and res["APr"] == pytest.approx(100.0)
    assert res["APc"] == pytest.approx(0.0)
    bad = add_glip_config(get_cfg())
    bad.DATASETS.CUSTOM = [[names("x"), json_file, str(tmp_path), "voc"]]
    with pytest.raises(ValueError, match="format must be one of"):
        register_datasets_from_config(bad)


def test_lvis_evaluation_shows_progress(tmp_path, names, caplog):
    from glip_d2.data.datasets import register_lvis

    name = names("lvis")
    register_lvis(name, write_json(tmp_path / "lvis.json", _lvis_json()), str(tmp_path))
    originals = (LVISEval.evaluate, LVISEval.compute_iou, LVISEval.evaluate_img)
    with caplog.at_level(logging.INFO, logger="glip_d2.evaluation.lvis_progress"):
        _run(StandardLVISEvaluator(name, max_dets_per_image=300))
    messages = [r.getMessage() for r in caplog.records if r.name == "glip_d2.evaluation.lvis_progress"]
    # 2 images x 3 categories x (1 IoU pass + 4 area ranges)
    assert any(m.startswith("LVIS evaluation: 100% (30/30 steps") for m in messages), messages
    assert (LVISEval.evaluate, LVISEval.compute_iou, LVISEval.evaluate_img) == originals


class _Prompter(PromptingMixin):
    def __init__(self):
        self.tokenizer = load_tokenizer("bert-base-uncased")
        self.test_chunk_size, self.max_query_len, self.separator = 40, 256, ". "
        self._init_prompting(None)


def test_number_of_prompt_chunks_is_logged(caplog):
    names = MetadataCatalog.get("lvis_v1_val").thing_classes
    with caplog.at_level(logging.INFO, logger="glip_d2.modeling.meta_arch.prompting"):
        _Prompter().set_vocabulary(names)
    assert "Vocabulary of 1203 names: 31 prompt chunk(s) per image." in caplog.messages
