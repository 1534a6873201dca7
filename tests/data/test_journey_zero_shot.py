"""A user's zero-shot evaluation on their own data: COCO and LVIS-format jsons with their own
vocabulary (DATASETS.CUSTOM), several test datasets in one run, category names that need
cleaning, and GLIPPredictor on the same images.

The AP checks feed the ground truth back as predictions, so the expected numbers are known:
100 on the classes that have ground truth, NaN where there is nothing to score.
"""

import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from glip_d2 import add_glip_config
from glip_d2.data.datasets import register_datasets_from_config
from glip_d2.engine import build_glip_evaluator, prompt_test_dataset
from glip_d2.evaluation import FixedAPEvaluator

pytestmark = [
    pytest.mark.usefixtures("private_parse_cache"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated"),
]

# Names as users' jsons have them: underscores, parentheses, mixed case, non-ASCII, extra spaces.
NAMES = ["Red_Square", "blue circle (round)", "Grün_Stern", "YELLOW   square", "purple-cross"]
SIZE = 224


def _categories(first_id, lvis=False):
    """The categories out of id order, ids ``first_id + 7 k`` (not contiguous)."""
    cats = [{"id": first_id + 7 * k, "name": n} for k, n in enumerate(NAMES)]
    if lvis:
        for c, f in zip(cats, "fcfcf"):  # no rare category
            c.update(frequency=f, synonyms=[c["name"]], image_count=1)
    return cats[::-1]


# (image index, category index, XYWH box); image 2 has no annotation.
ANNOTATIONS = [(0, 0, [20, 30, 60, 60]), (0, 1, [120, 120, 70, 50]), (1, 2, [10, 10, 90, 90]),
               (1, 2, [130, 130, 60, 60]), (3, 3, [60, 50, 40, 40])]


def _write(tmp_path, first_id=1, lvis=False, edit=None):
    cats = _categories(first_id, lvis)
    ids = sorted(c["id"] for c in cats)
    images = [{"id": 50 + i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE}
              for i in range(4)]
    if lvis:
        for im in images:
            im.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    annotations = [
        {"id": 900 + k, "image_id": 50 + i, "category_id": ids[c], "bbox": b,
         "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(ANNOTATIONS)
    ]
    data = {"images": images, "annotations": annotations, "categories": cats}
    if edit is not None:
        edit(data)
    path = tmp_path / ("lvis.json" if lvis else "coco.json")
    path.write_text(json.dumps(data))
    return str(path)


def _register(names, json_file, root, fmt="coco"):
    name = names(f"journey_{fmt}")
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.CUSTOM = [[name, json_file, str(root)] + ([fmt] if fmt != "coco" else [])]
    assert register_datasets_from_config(cfg) == [name]
    return cfg, name


def _instances(boxes_xyxy, scores, classes):
    inst = Instances((SIZE, SIZE))
    inst.pred_boxes = Boxes(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def _gt_as_predictions(evaluator, name, extra=None):
    """Run the evaluator with every image's ground truth as its predictions (score 0.9), plus
    ``extra[image_id]`` = [(xyxy, score, contiguous class)]."""
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        rows = [([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]], 0.9, a["category_id"]) for a in d["annotations"]]
        rows += (extra or {}).get(d["image_id"], [])
        boxes, scores, classes = zip(*rows) if rows else ((), (), ())
        evaluator.process([{"image_id": d["image_id"], "height": SIZE, "width": SIZE}],
                          [_instances(list(boxes), list(scores), list(classes))])
    return evaluator.evaluate()


@pytest.mark.parametrize("first_id", [0, 1, 1000])
def test_coco_json_ground_truth_scores_ap_100_on_its_own_classes(tmp_path, names, first_id):
    cfg, name = _register(names, _write(tmp_path, first_id), tmp_path)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == NAMES  # the json's names in id order (cleaned in the prompt)
    assert meta.thing_dataset_id_to_contiguous_id == {first_id + 7 * k: k for k in range(5)}
    dicts = DatasetCatalog.get(name)
    assert [len(d["annotations"]) for d in dicts] == [2, 2, 0, 1]  # image 52 has none, kept
    out = tmp_path / "eval"
    bbox = _gt_as_predictions(build_glip_evaluator(cfg, name, str(out)), name)["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)
    assert [bbox[f"AP-{n}"] for n in NAMES[:4]] == pytest.approx([100.0] * 4)
    assert math.isnan(bbox["AP-purple-cross"])  # no ground truth
    assert sorted(os.listdir(out)) == ["coco_instances_results.json", "instances_predictions.pth"]
    results = json.loads((out / "coco_instances_results.json").read_text())
    # the json's own ids, every image with ground truth
    assert sorted({r["category_id"] for r in results}) == [first_id + 7 * k for k in range(4)]
    assert sorted({r["image_id"] for r in results}) == [50, 51, 53]


def test_coco_ap_is_over_the_classes_and_images_of_the_json(tmp_path, names):
    """A wrong class on the image without annotations and a class swap cost AP where expected."""
    cfg, name = _register(names, _write(tmp_path, 1000), tmp_path)
    extra = {52: [([0, 0, 50, 50], 0.95, 0)],  # a false positive of class 0, above its true one
             53: [([60, 50, 100, 90], 0.95, 4)]}  # a false positive of class 4 (no ground truth)
    bbox = _gt_as_predictions(build_glip_evaluator(cfg, name, str(tmp_path / "e")), name, extra)[
        "bbox"]
    assert bbox["AP-Red_Square"] == pytest.approx(50.0)  # its one box ranked second: P = 1/2
    assert bbox["AP-blue circle (round)"] == pytest.approx(100.0)
    assert bbox["AP"] == pytest.approx((50.0 + 3 * 100.0) / 4)  # over the 4 classes with boxes
    assert math.isnan(bbox["AP-purple-cross"])  # not scored: no ground truth of it anywhere


def test_coco_json_without_iscrowd_is_scored_as_not_crowd(tmp_path, names):
    """The loader reads a missing iscrowd as 0 (as Detectron2's); the evaluation must too."""
    def drop(data):
        for a in data["annotations"]:
            del a["iscrowd"]

    cfg, name = _register(names, _write(tmp_path, 1, edit=drop), tmp_path)
    bbox = _gt_as_predictions(build_glip_evaluator(cfg, name, str(tmp_path / "e")), name)["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("first_id", [1, 1000])
def test_lvis_json_ground_truth_scores_ap_100(
    tmp_path, names, first_id
):
    cfg, name = _register(names, _write(tmp_path, first_id, lvis=True), tmp_path, "lvis")
    out = tmp_path / "eval"
    bbox = _gt_as_predictions(build_glip_evaluator(cfg, name, str(out)), name)["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)
    assert bbox["APf"] == pytest.approx(100.0) and bbox["APc"] == pytest.approx(100.0)
    assert sorted(os.listdir(out)) == ["instances_predictions.pth", "lvis_instances_results.json"]
    results = json.loads((out / "lvis_instances_results.json").read_text())
    assert sorted({r["category_id"] for r in results}) == [first_id + 7 * k for k in range(4)]


def test_lvis_fixed_ap_of_the_ground_truth_is_100(tmp_path, names):
    cfg, name = _register(names, _write(tmp_path, 1000, lvis=True), tmp_path, "lvis")
    res = _gt_as_predictions(FixedAPEvaluator(name, distributed=False), name)["fixed_ap"]
    assert res["AP"] == pytest.approx(100.0) and res["APf"] == pytest.approx(100.0)


def test_lvis_negative_and_not_exhaustive_categories(tmp_path, names):
    """LVIS's federated rules on a json of one's own: a detection of a class an image lists as
    negative is a false positive; of a class it does not list, ignored; an unmatched detection
    of a not-exhaustively annotated class, ignored."""
    def federate(data):
        ids = sorted(c["id"] for c in data["categories"])
        data["images"][2]["neg_category_ids"] = [ids[0]]  # image 52: surely no "Red_Square"
        data["images"][0]["not_exhaustive_category_ids"] = [ids[1]]  # image 50: more circles

    cfg, name = _register(names, _write(tmp_path, 1000, lvis=True, edit=federate), tmp_path, "lvis")

    def ap(extra):
        evaluator = build_glip_evaluator(cfg, name, str(tmp_path / "e"))
        return _gt_as_predictions(evaluator, name, extra)["bbox"]["AP"]

    assert ap({}) == pytest.approx(100.0)
    # class 0 on image 52, which lists it as negative: a false positive above the true one
    assert ap({52: [([0, 0, 50, 50], 0.95, 0)]}) < 99.0
    # class 0 on image 53, which neither has nor lists it: ignored
    assert ap({53: [([0, 0, 50, 50], 0.95, 0)]}) == pytest.approx(100.0)
    # an extra class-1 box on image 50, where class 1 is not exhaustively annotated: ignored
    assert ap({50: [([0, 0, 50, 50], 0.95, 1)]}) == pytest.approx(100.0)


def _drop(where, key, index=0):
    def edit(data):
        del data[where][index][key]

    return edit


@pytest.mark.parametrize(
    "fmt, edit, match",
    [
        ("coco", _drop("annotations", "area"), r"annotation #0 \(id 900\) has no 'area'"),
        ("coco", _drop("annotations", "id"), r"annotation #0 has no 'id'"),
        ("lvis", _drop("annotations", "area"), r"annotation #0 \(id 900\) has no 'area'"),
        ("lvis", _drop("annotations", "id"), r"annotation #0 has no 'id'"),
        ("lvis", _drop("categories", "frequency"), r"category #0 \(id 1028, 'purple-cross'\) has no 'frequency'"),
        ("lvis", _drop("images", "neg_category_ids", 1), r"image #1 \(id 51\).*'neg_category_ids'"),
        ("lvis", _drop("images", "not_exhaustive_category_ids", 3),
         r"image #3 \(id 53\).*'not_exhaustive_category_ids'"),
    ],
)
def test_ground_truth_the_evaluation_cannot_score_is_refused_before_inference(
    tmp_path, names, fmt, edit, match
):
    """These loaded (training needs none of them) and failed with a bare KeyError, after the
    whole inference or when the evaluator was built."""
    json_file = _write(tmp_path, 1000, lvis=fmt == "lvis", edit=edit)
    cfg, name = _register(names, json_file, tmp_path, fmt)
    with pytest.raises(ValueError, match=match) as info:
        build_glip_evaluator(cfg, name, str(tmp_path / "e"))
    assert json_file in str(info.value)
    if fmt == "lvis":
        with pytest.raises(ValueError, match=match):
            FixedAPEvaluator(name)


@pytest.mark.parametrize(
    "bad, match",
    [("Red_Square", "repeats names"), ("(unknown)", "empty after clean_name"),
     (" ".join(["word"] * 300), "tokens")],
)
def test_a_test_vocabulary_error_names_the_dataset_and_its_json(tmp_path, names, bad, match):
    from detectron2.modeling import build_model

    from tests.helpers import tiny_cfg

    def rename(data):
        data["categories"][0]["name"] = bad  # id 1028; "Red_Square" is id 1000's name too

    json_file = _write(tmp_path, 1000, edit=rename)
    cfg, name = _register(names, json_file, tmp_path)
    good = tmp_path / "good"
    good.mkdir()
    _, good_name = _register(names, _write(good, 1), good)
    model_cfg = tiny_cfg()
    model_cfg.MODEL.GLIP.VOCABULARY = []
    model = build_model(model_cfg)  # DATASETS.TEST empty: no vocabulary yet
    model_cfg.DATASETS.TEST = (name,)
    with pytest.raises(ValueError, match=match) as info:
        prompt_test_dataset(model_cfg, model, name)
    assert name in str(info.value) and json_file in str(info.value)
    # several test datasets: the bad one is found when the first is prompted, before any
    # inference (it failed after the inference on the datasets before it)
    model_cfg.DATASETS.TEST = (good_name, name)
    with pytest.raises(ValueError, match=match) as info:
        prompt_test_dataset(model_cfg, model, good_name)
    assert name in str(info.value) and json_file in str(info.value)
    assert model.vocabulary == NAMES  # the first dataset's names are the prompt


# ---- the trained demo model (random weights when no checkpoint): --eval-only and the predictor

CHECKPOINT = "output/demo_shapes/model_final.pth"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def _draw_images(folder):
    """Three 224x224 images of filled squares and a disc (one image blank)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    scenes = [
        [("red", "square", (20, 30, 80, 90)), ("blue", "circle", (120, 120, 190, 190))],
        [("yellow", "square", (60, 50, 150, 140))],
        [],
    ]
    for i, scene in enumerate(scenes):
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        for colour, shape, (x0, y0, x1, y1) in scene:
            if shape == "square":
                mask = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            else:
                cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            img[mask] = COLOURS[colour]
        Image.fromarray(img).save(folder / f"{i}.png")
    return scenes


def _assert_same_detections(mine, theirs):
    """The same (class, score, box) detections, matched one to one within 1e-4 in score and
    0.05 px per coordinate. Equal scores may come in either order (a random-weight model gives
    many: anchors clipped to the same box), and at the detections-per-image cut a tie may keep
    either of its boxes: only detections scored as the lowest kept one may stay unmatched."""
    left = list(theirs)
    unmatched = []
    for c, score, box in mine:
        hit = next((j for j, (c2, s2, b2) in enumerate(left) if c2 == c and abs(s2 - score) <= 1e-4
                    and np.allclose(b2, box, atol=0.05)), None)
        if hit is None:
            unmatched.append((c, score, box))
        else:
            left.pop(hit)
    lowest = min(s for _, s, _ in mine)
    assert len(unmatched) == len(left)
    assert all(abs(s - lowest) <= 1e-4 for _, s, _ in unmatched + left), (unmatched, left)


def _demo_cfg(protocol=None):
    from glip_d2 import model_zoo

    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file("configs/demo_glip_tiny_shapes.yaml")
    if protocol:
        model_zoo.apply_protocol(cfg, protocol)
    if os.path.isfile(CHECKPOINT):
        cfg.MODEL.WEIGHTS = CHECKPOINT
    else:  # random weights: the comparison still holds, with every box above threshold 0
        cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
        cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    return cfg


@pytest.mark.heavy(15)
@pytest.mark.parametrize("fmt, protocol", [("coco", None), ("coco", "coco"),
                                           ("lvis", "lvis_minival")])
def test_eval_only_and_predictor_give_the_same_boxes(tmp_path, names, fmt, protocol):
    """train_net's evaluation of two datasets in one run (ODinW style) and GLIPPredictor with the
    json's names on the same images: the same detections, class for class."""
    from glip_d2.predictor import GLIPPredictor
    from tests.reliability.helpers import load_train_net

    torch.manual_seed(0)
    _draw_images(tmp_path / "img")
    names_a = ["Red_Square", "blue circle (round)", "YELLOW   square", "Grün_Stern"]
    names_b = ["blue_circle", "red square"]
    jsons = []
    for tag, vocab in (("a", names_a), ("b", names_b)):
        def edit(data, vocab=vocab):
            data["categories"] = [dict(c, name=n) for c, n in zip(
                sorted(data["categories"], key=lambda c: c["id"]), vocab)]
            kept = {c["id"] for c in data["categories"]}
            data["annotations"] = [a for a in data["annotations"] if a["category_id"] in kept]
            data["images"] = data["images"][:3]
            keep_images = {im["id"] for im in data["images"]}
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep_images]
            for im in data["images"]:
                im["file_name"] = f"img/{im['file_name']}"
        folder = tmp_path / tag
        folder.mkdir()
        jsons.append(_write(folder, 1000, lvis=fmt == "lvis", edit=edit))
    cfg = _demo_cfg(protocol)
    dataset_names = [names(f"journey_{t}") for t in "ab"]
    cfg.DATASETS.CUSTOM = [[n, j, str(tmp_path)] + ([fmt] if fmt == "lvis" else [])
                           for n, j in zip(dataset_names, jsons)]
    cfg.DATASETS.TEST = tuple(dataset_names)
    cfg.TEST.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    register_datasets_from_config(cfg)
    predictor = GLIPPredictor(cfg)
    results = load_train_net().Trainer.test(cfg, predictor.model)
    assert set(results) == set(dataset_names)
    for name, vocab in zip(dataset_names, (names_a, names_b)):
        saved = torch.load(os.path.join(cfg.OUTPUT_DIR, "inference", name,
                                        "instances_predictions.pth"))
        assert [p["image_id"] for p in saved] == [50, 51, 52]  # the blank image too
        for i, p in enumerate(saved):
            out = predictor(str(tmp_path / "img" / f"{i}.png"), vocabulary=vocab)
            assert out["labels"] == vocab
            inst = out["instances"].to("cpu")
            mine = sorted(zip(inst.pred_classes.tolist(), inst.scores.tolist(),
                              inst.pred_boxes.tensor.tolist()), key=lambda r: -r[1])
            theirs = sorted(((r["category_id"], r["score"],
                              [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                               r["bbox"][1] + r["bbox"][3]]) for r in p["instances"]),
                            key=lambda r: -r[1])
            assert len(mine) == len(theirs) > 0
            _assert_same_detections(mine, theirs)
