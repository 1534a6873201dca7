"""Flickr30k Recall@k (any-box / merged-box, per phrase type) and RefCOCO Acc@k, by hand."""

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from glip_d2.data.datasets import register_flickr30k, register_refexp
from glip_d2.evaluation import FlickrEvaluator, RefExpEvaluator
from glip_d2.evaluation.flickr import parse_entities_boxes, parse_entities_sentences
from tests.benchmarks.helpers import instances, write_json
from tests.benchmarks.test_mdetr import flickr_json, refexp_json

B1, B2A, B2B = [10, 10, 40, 50], [50, 50, 60, 60], [70, 60, 90, 80]  # XYXY
UNION2 = [50, 50, 90, 80]  # the merged box of entity 2
FAR = [0, 70, 20, 95]

SENTENCES = (
    "[/EN#1/people a man] with [/EN#2/animals a dog] and [/EN#1/people the man] 's "
    "[/EN#3/clothing hat]\n[/EN#2/animals two dogs]\n"
)
XML = """<annotation><size><width>100</width><height>100</height><depth>3</depth></size>
<object><name>1</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>50</ymax>
</bndbox></object>
<object><name>2</name><bndbox><xmin>50</xmin><ymin>50</ymin><xmax>60</xmax><ymax>60</ymax>
</bndbox></object>
<object><name>2</name><bndbox><xmin>70</xmin><ymin>60</ymin><xmax>90</xmax><ymax>80</ymax>
</bndbox></object>
<object><name>3</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>"""


def _entities(tmp_path):
    folder = tmp_path / "flickr30k_entities"
    (folder / "Sentences").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    (folder / "Sentences" / "100.txt").write_text(SENTENCES)
    (folder / "Annotations" / "100.xml").write_text(XML)
    return str(folder)


def _flickr_predictions():
    """Sentence 0: "a man" right at rank 1; "a dog" wrong, then one of its boxes, then the
    merged box; "the man" nothing. Sentence 1: "two dogs" one of its two boxes."""
    phrase_spans0 = [[[0, 5]], [[11, 16]], [[21, 28]]]
    out0 = instances([B1, FAR, B2B, UNION2], [0.9, 0.8, 0.7, 0.6], [0, 1, 1, 1])
    out1 = instances([B2A, FAR], [0.9, 0.3], [0, 5])  # class 5 is no phrase: ignored
    return [
        ({"image_id": 0, "phrase_spans": phrase_spans0}, out0),
        ({"image_id": 1, "phrase_spans": [[[0, 8]]]}, out1),
    ]


def _evaluate(evaluator, predictions):
    evaluator.reset()
    for inp, out in predictions:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def _evaluate_on_two_ranks(make_evaluator, rank0_items, rank1_items, monkeypatch):
    """Rank 0's result when rank 0 processed ``rank0_items`` and rank 1 ``rank1_items``
    (``comm.gather`` hands rank 0 both ranks' predictions)."""
    rank0, rank1 = make_evaluator(), make_evaluator()
    for evaluator, items in ((rank0, rank0_items), (rank1, rank1_items)):
        evaluator.reset()
        for inp, out in items:
            evaluator.process([inp], [out])
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, rank1._predictions])
    return rank0.evaluate()


@pytest.fixture
def flickr_dataset(tmp_path, names):
    name = names("flickr30k")
    register_flickr30k(name, write_json(tmp_path / "f.json", flickr_json()), str(tmp_path))
    return name


def test_flickr_entities_files_are_parsed(tmp_path):
    folder = _entities(tmp_path)
    sentences = parse_entities_sentences(f"{folder}/Sentences/100.txt")
    assert [[(p["entity"], p["types"], p["phrase"]) for p in s] for s in sentences] == [
        [
            ("1", ["people"], "a man"),
            ("2", ["animals"], "a dog"),
            ("1", ["people"], "the man"),
            ("3", ["clothing"], "hat"),
        ],
        [("2", ["animals"], "two dogs")],
    ]
    boxes = parse_entities_boxes(f"{folder}/Annotations/100.xml")
    assert sorted(boxes) == ["1", "2"]  # entity 3 has no box
    assert boxes["2"].tolist() == [B2A, B2B]


def test_flickr_recall_any_box_and_merged_box_counted_by_hand(flickr_dataset):
    res = _evaluate(FlickrEvaluator(flickr_dataset), _flickr_predictions())
    # 4 phrases. Any-box hits: "a man" @1, "a dog" @2 (B2B), "two dogs" @1 (B2A).
    assert res["flickr_any_box"] == pytest.approx({"R@1": 50.0, "R@5": 75.0, "R@10": 75.0})
    # Merged box: "a man" @1 (one box); "a dog" @3 (the union); B2A alone misses the union of
    # "two dogs" (IoU 100/1200).
    assert res["flickr_merged_box"] == pytest.approx({"R@1": 25.0, "R@5": 50.0, "R@10": 50.0})


def test_flickr_recall_per_phrase_type_with_the_entities_release(tmp_path, names):
    name = names("flickr30k")
    register_flickr30k(
        name,
        write_json(tmp_path / "f.json", flickr_json()),
        str(tmp_path),
        entities_dir=_entities(tmp_path),
    )
    evaluator = FlickrEvaluator(name, entities_dir=MetadataCatalog.get(name).flickr_entities_dir)
    res = _evaluate(evaluator, _flickr_predictions())
    any_box = res["flickr_any_box"]
    assert any_box["R@1"] == pytest.approx(50.0) and any_box["R@5"] == pytest.approx(75.0)
    # people: "a man" hit @1, "the man" never; animals: "two dogs" @1, "a dog" @2.
    assert any_box["R@1 people"] == pytest.approx(50.0)
    assert any_box["R@5 people"] == pytest.approx(50.0)
    assert any_box["R@1 animals"] == pytest.approx(50.0)
    assert any_box["R@5 animals"] == pytest.approx(100.0)
    assert "R@1 clothing" not in any_box  # the hat has no box: not evaluated
    assert res["flickr_merged_box"]["R@5 animals"] == pytest.approx(50.0)


def test_flickr_release_and_json_disagreeing_is_an_error(tmp_path, names):
    data = flickr_json()
    data["images"][1]["tokens_positive_eval"] = [[[0, 3]], [[4, 8]]]
    data["annotations"][3]["tokens_positive"] = [[0, 3]]
    data["annotations"][4]["tokens_positive"] = [[4, 8]]
    name = names("flickr30k")
    register_flickr30k(name, write_json(tmp_path / "f.json", data), str(tmp_path))
    evaluator = FlickrEvaluator(name, entities_dir=_entities(tmp_path))
    with pytest.raises(ValueError, match="1 phrases with boxes .* but 2 in tokens_positive_eval"):
        _evaluate(evaluator, _flickr_predictions())


def test_flickr_gathers_predictions_of_all_ranks(flickr_dataset, monkeypatch):
    first, second = _flickr_predictions()
    res = _evaluate_on_two_ranks(lambda: FlickrEvaluator(flickr_dataset), [first], [second], monkeypatch)
    assert res["flickr_any_box"]["R@1"] == pytest.approx(50.0)


@pytest.fixture
def refcoco_dataset(tmp_path, names):
    name = names("refcoco")
    register_refexp(name, write_json(tmp_path / "r.json", refexp_json()), str(tmp_path))
    return name


def _refexp_predictions():
    return [
        # right at rank 1
        ({"image_id": 0}, instances([[0, 0, 20, 40], [60, 60, 90, 90]], [0.9, 0.5], [0, 0])),
        # wrong first, right second (IoU 0.75 with [50, 50, 80, 70])
        ({"image_id": 1}, instances([[0, 0, 10, 10], [50, 50, 80, 65]], [0.9, 0.8], [0, 0])),
        # only wrong boxes for phrase 0; a right box for another class does not count
        ({"image_id": 2}, instances([[10, 60, 30, 80], [70, 0, 90, 10]], [0.99, 0.2], [1, 0])),
    ]


def test_refcoco_top1_accuracy_counted_by_hand(refcoco_dataset):
    res = _evaluate(RefExpEvaluator(refcoco_dataset), _refexp_predictions())["refexp"]
    assert res == pytest.approx({"Acc@1": 100 / 3, "Acc@5": 200 / 3, "Acc@10": 200 / 3})


def test_refcoco_iou_threshold_is_inclusive_at_half(refcoco_dataset):
    # [50, 50, 80, 60] covers half of the referred [50, 50, 80, 70]: IoU exactly 0.5 -> correct.
    preds = [({"image_id": 1}, instances([[50, 50, 80, 60]], [0.9], [0]))]
    assert _evaluate(RefExpEvaluator(refcoco_dataset), preds)["refexp"]["Acc@1"] == 100.0


def test_refcoco_gathers_predictions_of_all_ranks(refcoco_dataset, monkeypatch):
    rank0, rank1 = RefExpEvaluator(refcoco_dataset), RefExpEvaluator(refcoco_dataset)
    rank0.reset(), rank1.reset()
    preds = _refexp_predictions()
    rank0.process([preds[0][0]], [preds[0][1]])
    for inp, out in preds[1:]:
        rank1.process([inp], [out])
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, rank1._predictions])
    assert rank0.evaluate()["refexp"]["Acc@5"] == pytest.approx(200 / 3)


def test_refcoco_counts_by_giou_as_mdetr_unless_iou_is_asked(refcoco_dataset):
    """MDETR's and official GLIP's RefExp evaluator compare the generalized IoU with 0.5: a box
    at IoU 0.531 but GIoU 0.491 with the referred [50, 50, 80, 70] is a miss there, a hit by
    the plain IoU criterion (TEST.BENCHMARK.REFCOCO_MATCH iou)."""
    import torch
    from torchvision.ops import generalized_box_iou as torch_giou

    from glip_d2.evaluation.phrases import generalized_box_iou

    box, target = [[54.0, 54.0, 84.0, 74.0]], [[50.0, 50.0, 80.0, 70.0]]
    ours = generalized_box_iou(np.array(box), np.array(target))
    assert ours[0, 0] == pytest.approx(torch_giou(torch.tensor(box), torch.tensor(target)).item())
    assert ours[0, 0] == pytest.approx(0.4914, abs=1e-4)
    preds = [({"image_id": 1}, instances(box, [0.9], [0]))]
    assert _evaluate(RefExpEvaluator(refcoco_dataset), preds)["refexp"]["Acc@1"] == 0.0
    iou = RefExpEvaluator(refcoco_dataset, match="iou")
    assert _evaluate(iou, preds)["refexp"]["Acc@1"] == 100.0
    with pytest.raises(ValueError, match="REFCOCO_MATCH must be 'giou' or 'iou'"):
        RefExpEvaluator(refcoco_dataset, match="dice")


def test_refcoco_says_when_it_scores_part_of_the_expressions(refcoco_dataset, caplog):
    """Accuracy over the predicted expressions only: a run that lost some (the official
    evaluator raises) is logged with the counts; a complete one is not."""
    import logging

    preds = _refexp_predictions()
    with caplog.at_level(logging.WARNING, logger="glip_d2"):
        _evaluate(RefExpEvaluator(refcoco_dataset), preds)
        assert "expressions" not in caplog.text
        res = _evaluate(RefExpEvaluator(refcoco_dataset), preds[:1])
    assert res["refexp"]["Acc@1"] == 100.0
    assert "scored 1 of its 3 expressions" in caplog.text
