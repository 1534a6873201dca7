"""A detection researcher's journey with train_net.py (session 21): an evaluation protocol on top
of a two-stage model config, end to end on an LVIS-format json with its own vocabulary
(DATASETS.CUSTOM format "lvis"), and test jsons the COCO / LVIS evaluators cannot score refused
before the model is built (before: after the whole training, at the final evaluation)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reliability.helpers import load_train_net

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_STAGE = os.path.join(ROOT, "configs", "two_stage", "demo_faster_rcnn_shapes.yaml")
# The demo's two-stage model, smaller: a one-layer random text encoder, one Swin block per stage.
TINY = ["MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED", "False",
        "MODEL.LANGUAGE_BACKBONE.NUM_HIDDEN_LAYERS", "1", "MODEL.SWIN.DEPTHS", "[1, 1, 1, 1]",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def _write_lvis(folder, num_categories=45):
    """Two 64x80 images and an LVIS-format json with its own `num_categories` names (more than
    the lvis protocols' 40 per prompt), every category with a frequency, every image with its
    federated lists."""
    for i in (1, 2):
        pixels = np.random.default_rng(i).integers(0, 255, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    categories = [{"id": 10 + k, "name": f"thing{k}", "frequency": "rcf"[k % 3]}
                  for k in range(num_categories)]
    data = {
        "categories": categories,
        "images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 80,
                    "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 10, "bbox": [10, 10, 30, 20], "area": 600},
            {"id": 2, "image_id": 2, "category_id": 11, "bbox": [40, 20, 30, 40], "area": 1200},
            {"id": 3, "image_id": 2, "category_id": 12, "bbox": [5, 5, 20, 20], "area": 400},
        ],
    }
    path = folder / "lvis_own.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.heavy(3)
def test_lvis_protocol_on_a_two_stage_config_with_an_own_lvis_json(train_net, tmp_path, names):
    """`train_net.py --config-file <two-stage> --protocol lvis_minival --eval-only` with the test
    set replaced by an LVIS json of one's own: the protocol's chunking (40 names per prompt: 45
    names are 2 prompts, logged), its 300 detections per image (the model config's is 100), the
    LVIS evaluator with its progress, all in OUTPUT_DIR/log.txt."""
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    name = names("own_lvis")
    json_file = _write_lvis(tmp_path)
    weights = tmp_path / "random.pth"
    out = tmp_path / "out"
    args = train_net.argument_parser().parse_args([
        "--config-file", TWO_STAGE, "--protocol", "lvis_minival", "--eval-only", *TINY,
        "DATASETS.CUSTOM", repr([[name, json_file, str(tmp_path), "lvis"]]),
        "DATASETS.TEST", f"('{name}',)", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out),
    ])
    cfg = train_net.load_cfg(args)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.GLIP.TEST_CHUNK_SIZE == 40
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, weights)

    results = train_net.main(args)

    assert MetadataCatalog.get(name).evaluator_type == "lvis"
    assert {"AP", "APr", "APc", "APf"} <= set(results[name]["bbox"])
    log = (out / "log.txt").read_text()
    assert "Vocabulary of 45 names: 2 prompt chunk(s) per image." in log
    assert "LVIS evaluation: 100% (30/30 steps" not in log  # 45 categories, not 3
    assert "LVIS evaluation: 100% (450/450 steps" in log  # 2 images x 45 categories x 5 passes
    predictions = torch.load(out / "inference" / name / "instances_predictions.pth")
    counts = [len(p["instances"]) for p in predictions]
    # an untrained model scores every region above the protocol's 0.0001: the cap is what stops it
    assert counts == [300, 300], counts


def _coco_json(folder, edit=None, name="test.json"):
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(folder / "a.png")
    data = {
        "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}],
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 80}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 20, 30, 40], "area": 1200,
             "iscrowd": 0},
        ],
    }
    if edit:
        edit(data)
    (folder / name).write_text(json.dumps(data))
    return str(folder / name)


def _no_area(data):
    del data["annotations"][1]["area"]


def _no_id(data):
    del data["annotations"][0]["id"]


# (json edit, format of the DATASETS.CUSTOM entry, what the error says)
BAD_TEST_SETS = [
    (_no_area, "coco", r"annotation #1 \(id 2\) has no 'area'"),
    (_no_id, "coco", r"annotation #0 has no 'id'"),
    (None, "lvis", r"category #0 \(id 1, 'red circle'\) has no 'frequency'"),  # a COCO json
]


@pytest.mark.parametrize("eval_only", [False, True], ids=["train", "eval_only"])
@pytest.mark.parametrize("edit,fmt,says", BAD_TEST_SETS, ids=["no_area", "no_id", "no_frequency"])
def test_unscorable_test_json_is_refused_before_the_model_is_built(
    train_net, tmp_path, names, edit, fmt, says, eval_only
):
    """Training: the evaluator checked its json at the final evaluation, after the whole run.
    Evaluating several sets: after the inference of the sets before it. Now check_setup (which
    train_net's command line runs before launching) names the test set, the json and the
    record."""
    good, bad = names("good"), names("bad")
    custom = [[good, _coco_json(tmp_path, name="good.json"), str(tmp_path)],
              [bad, _coco_json(tmp_path, edit, name="bad.json"), str(tmp_path), fmt]]
    args = train_net.argument_parser().parse_args(
        ["--config-file", TWO_STAGE] + (["--eval-only"] if eval_only else [])
        + [*TINY, "DATASETS.CUSTOM", repr(custom),
           "DATASETS.TRAIN", f"('{good}',)", "DATASETS.TEST", f"('{good}', '{bad}')",
           "MODEL.WEIGHTS", str(tmp_path / "w.pth"), "OUTPUT_DIR", str(tmp_path / "out")]
    )
    cfg = train_net.load_cfg(args)
    expected = rf"DATASETS.TEST '{bad}' \({fmt} evaluation\): .*bad\.json: {says}"
    with pytest.raises(ValueError, match=expected):
        train_net.check_setup(cfg, args)


def test_command_line_exits_before_training(train_net, tmp_path, names, capsys):
    """The user's view: one error line, exit status 2, nothing trained or written."""
    train, test = names("train"), names("test")
    custom = [[train, _coco_json(tmp_path, name="train.json"), str(tmp_path)],
              [test, _coco_json(tmp_path, _no_area, name="test.json"), str(tmp_path)]]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(["--config-file", TWO_STAGE, *TINY, "DATASETS.CUSTOM", repr(custom),
                       "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
                       "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: DATASETS.TEST '{test}' (coco evaluation): ")
    assert "test.json: annotation #1 (id 2) has no 'area'" in err
    assert not out.exists()


def test_good_test_sets_pass_and_are_read_once(train_net, tmp_path, names, monkeypatch):
    """check_setup runs before launch and again in the main process (the same process with one
    GPU): a json already checked, unchanged, is not read again."""
    from glip_d2.engine import evaluation

    good = names("good")
    args = train_net.argument_parser().parse_args(
        ["--config-file", TWO_STAGE, "--eval-only", *TINY,
         "DATASETS.CUSTOM", repr([[good, _coco_json(tmp_path), str(tmp_path)]]),
         "DATASETS.TEST", f"('{good}',)", "MODEL.WEIGHTS", str(tmp_path / "w.pth")])
    cfg = train_net.load_cfg(args)
    reads = []
    original = evaluation.check_ground_truth_file
    monkeypatch.setattr(evaluation, "check_ground_truth_file",
                        lambda *a: reads.append(a) or original(*a))
    train_net.check_setup(cfg, args)
    train_net.check_setup(cfg, args)
    assert [os.path.basename(a[0]) for a in reads] == ["test.json"]


@pytest.mark.parametrize("tail", [["--protocol", "lvis_minival"], ["--eval-only"], ["--protocol=coco"],
                                  ["--eval"]])  # argparse takes abbreviated options
def test_options_after_the_overrides_are_named(train_net, tmp_path, capsys, tail):
    """`train_net.py --config-file M.yaml MODEL.WEIGHTS w.pth --protocol lvis_minival` (the
    protocol appended to a working command): argparse reads it as two more overrides, and the
    error was "Non-existent key: --protocol" (or "Override list has odd length")."""
    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(["--config-file", TWO_STAGE, "MODEL.WEIGHTS", str(tmp_path / "w.pth"), *tail])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    flag = tail[0]
    assert err.startswith(f"error: {flag!r} follows the KEY VALUE config overrides"), err
    assert f"train_net.py --config-file FILE {flag} ... KEY VALUE" in err
