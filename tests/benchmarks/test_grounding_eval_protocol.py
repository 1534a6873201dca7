"""Flickr30k / RefCOCO evaluation details of MDETR's protocol (used by official GLIP): each
(image, sentence) / expression is scored once however often it was predicted, and k = -1 is
the upper bound (any of the phrase's boxes)."""

import pytest

from glip_d2.evaluation import FlickrEvaluator, RefExpEvaluator
from tests.benchmarks.test_flickr_refcoco_eval import (  # noqa: F401  (fixtures)
    _evaluate,
    _evaluate_on_two_ranks,
    _flickr_predictions,
    _refexp_predictions,
    flickr_dataset,
    refcoco_dataset,
)


def test_flickr_sentence_predicted_twice_counts_once(flickr_dataset, monkeypatch):
    # A sampler that pads the last batch (torch's DistributedSampler) gives rank 1 sentence 1
    # again. MDETR's evaluator: "multiple predictions found for sentence ...", the first counts.
    first, second = _flickr_predictions()
    res = _evaluate_on_two_ranks(lambda: FlickrEvaluator(flickr_dataset), [first, second], [second],
                                 monkeypatch)
    # As without the duplicate: 4 phrases, "a man" and "two dogs" at rank 1 (not 3 of 5).
    assert res["flickr_any_box"]["R@1"] == pytest.approx(50.0)
    assert res["flickr_merged_box"]["R@1"] == pytest.approx(25.0)


def test_refcoco_expression_predicted_twice_counts_once(refcoco_dataset, monkeypatch):
    preds = _refexp_predictions()
    # padding: rank 1 gets expression 0 again
    res = _evaluate_on_two_ranks(lambda: RefExpEvaluator(refcoco_dataset), preds, preds[:1],
                                 monkeypatch)["refexp"]
    assert res == pytest.approx({"Acc@1": 100 / 3, "Acc@5": 200 / 3, "Acc@10": 200 / 3})


def test_flickr_upper_bound_k_minus_1_uses_every_box(flickr_dataset):
    # Official GLIP's Flickr evaluator defaults to topk (1, 5, 10, -1); -1: any predicted box.
    res = _evaluate(FlickrEvaluator(flickr_dataset, topk=(1, -1)), _flickr_predictions())
    # Any-box: "a man" @1, "a dog" @2, "two dogs" @1; "the man" has no box. Merged: "a man",
    # "a dog" (the union, its 3rd box).
    assert res["flickr_any_box"] == pytest.approx({"R@1": 50.0, "R@-1": 75.0})
    assert res["flickr_merged_box"] == pytest.approx({"R@1": 25.0, "R@-1": 50.0})


def test_refcoco_upper_bound_k_minus_1_uses_every_box(refcoco_dataset):
    res = _evaluate(RefExpEvaluator(refcoco_dataset, topk=(1, -1)), _refexp_predictions())
    assert res["refexp"] == pytest.approx({"Acc@1": 100 / 3, "Acc@-1": 200 / 3})


@pytest.mark.parametrize("topk", [(0,), (1, -2)])
def test_grounding_topk_other_than_positive_or_minus_1_is_an_error(flickr_dataset, topk):
    with pytest.raises(ValueError, match="GROUNDING_TOPK"):
        FlickrEvaluator(flickr_dataset, topk=topk)
