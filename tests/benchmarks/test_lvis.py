"""LVIS v1 minival: registration, standard AP (Detectron2's LVISEvaluator), FixedAP, chunks."""

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.utils import comm

from glip_d2.data.datasets import register_lvis
from glip_d2.evaluation import FixedAPEvaluator, StandardLVISEvaluator, fixed_ap, lvis_numpy_compat
from glip_d2.text import chunk_vocabulary, count_tokens, load_tokenizer
from tests.benchmarks.helpers import instances, write_json

# lvis 0.5.3 logs with the deprecated Logger.warn.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")

# Real LVIS v1 ids: 2 "air_conditioner" (frequent), 1 "aerosol_can" (common), 13 "applesauce"
# (rare); contiguous id = id - 1.
A, B, C = 2, 1, 13
BOX = {A: [10, 10, 20, 20], B: [50, 50, 20, 20], C: [0, 0, 30, 30]}  # XYWH


def _xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _lvis_json():
    cat = lambda i, n, f: {"id": i, "name": n, "frequency": f, "synonyms": [n], "image_count": 1}
    return {
        "categories": [
            cat(B, "aerosol_can", "c"),
            cat(A, "air_conditioner", "f"),
            cat(C, "applesauce", "r"),
        ],
        "images": [
            # minival style: file name with its folder; LVIS style: only coco_url.
            {
                "id": 1,
                "file_name": "val2017/000000000001.jpg",
                "height": 100,
                "width": 100,
                "neg_category_ids": [C],
                "not_exhaustive_category_ids": [],
            },
            {
                "id": 2,
                "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg",
                "height": 100,
                "width": 100,
                "neg_category_ids": [A],
                "not_exhaustive_category_ids": [B],
            },
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": A, "bbox": BOX[A], "area": 400},
            {"id": 2, "image_id": 1, "category_id": B, "bbox": BOX[B], "area": 400},
            {"id": 3, "image_id": 2, "category_id": C, "bbox": BOX[C], "area": 900},
        ],
    }


@pytest.fixture
def lvis_dataset(tmp_path, names):
    name = names("lvis")
    register_lvis(name, write_json(tmp_path / "lvis_minival.json", _lvis_json()), str(tmp_path))
    return name


def test_lvis_minival_registration_keeps_vocabulary_and_frequency(lvis_dataset, tmp_path):
    meta = MetadataCatalog.get(lvis_dataset)
    assert meta.evaluator_type == "lvis"
    assert len(meta.thing_classes) == 1203 and meta.thing_classes[A - 1] == "air_conditioner"
    assert (
        "bull" in meta.thing_classes and "horned_cow" not in meta.thing_classes
    )  # the category "name" (Detectron2: "horned_cow")
    assert [meta.thing_frequency[i - 1] for i in (A, B, C)] == ["f", "c", "r"]
    assert meta.thing_dataset_id_to_contiguous_id[C] == C - 1
    dicts = DatasetCatalog.get(lvis_dataset)
    assert [d["file_name"] for d in dicts] == [
        str(tmp_path / "val2017" / "000000000001.jpg"),
        str(tmp_path / "train2017" / "000000000002.jpg"),
    ]
    assert dicts[1]["neg_category_ids"] == [A] and dicts[1]["not_exhaustive_category_ids"] == [B]
    assert [(a["category_id"], a["bbox"]) for a in dicts[0]["annotations"]] == [
        (A - 1, [10.0, 10.0, 20.0, 20.0]),
        (B - 1, [50.0, 50.0, 20.0, 20.0]),
    ]


def _predictions():
    """Image 1: a correct A box (0.999) followed by 300 duplicates of it (0.99 .. 0.96: false
    positives that fill a 300-per-image budget), then B wrong (0.8), B right (0.7), C (0.6, a
    false positive: C is a verified negative of image 1). Image 2: C right (0.95), A (0.5, a
    false positive: A is a negative of image 2)."""
    far = [80, 80, 95, 95]
    img1 = [(_xyxy(BOX[A]), 0.999, A)] + [(_xyxy(BOX[A]), 0.99 - i * 1e-4, A) for i in range(300)]
    img1 += [(far, 0.8, B), (_xyxy(BOX[B]), 0.7, B), ([60, 0, 70, 10], 0.6, C)]
    img2 = [(_xyxy(BOX[C]), 0.95, C), ([50, 50, 60, 60], 0.5, A)]
    out = []
    for image_id, dets in ((1, img1), (2, img2)):
        boxes, scores, classes = zip(*dets)
        out.append(({"image_id": image_id}, instances(boxes, scores, [c - 1 for c in classes])))
    return out


def _run(evaluator):
    evaluator.reset()
    for inp, out in _predictions():
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def test_lvis_standard_ap_caps_300_detections_per_image(lvis_dataset):
    res = _run(StandardLVISEvaluator(lvis_dataset, max_dets_per_image=300))["bbox"]
    # By hand: image 1 keeps its 300 best (the A box and 299 duplicates), so B and C lose their
    # image-1 detections. A: TP first -> AP 1. B: no detection -> 0. C: TP only -> 1.
    assert res["APf"] == pytest.approx(100.0)
    assert res["APc"] == pytest.approx(0.0)
    assert res["APr"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx(200.0 / 3)
    # The same numbers as Detectron2's LVISEvaluator storing every detection.
    assert res == pytest.approx(_plain_lvis_evaluator_results(lvis_dataset))


def _plain_lvis_evaluator_results(name):
    evaluator = LVISEvaluator(name, max_dets_per_image=300)
    with lvis_numpy_compat():
        return _run(evaluator)["bbox"]


def test_fixedap_has_no_per_image_cap_and_matches_lvis_api(lvis_dataset):
    res = _run(FixedAPEvaluator(lvis_dataset, max_dets_per_category=10000))["fixed_ap"]
    # By hand: B keeps its FP (0.8) then TP (0.7): precision 1/2 at recall 1 -> AP 0.5; A and C 1.
    assert res["APc"] == pytest.approx(50.0)
    assert res["APf"] == pytest.approx(100.0) and res["APr"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx(250.0 / 3)

    # Independently: every detection (no cap binds) through the LVIS API without an image cap.
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS(MetadataCatalog.get(lvis_dataset).json_file)
    dets = []
    for inp, out in _predictions():
        inst = out["instances"]
        for box, score, c in zip(
            inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            dets.append(
                {
                    "image_id": inp["image_id"],
                    "category_id": c + 1,
                    "score": score,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    with lvis_numpy_compat():
        ev = LVISEval(gt, LVISResults(gt, dets, max_dets=-1), "bbox")
        ev.run()
    assert res["AP"] == pytest.approx(ev.get_results()["AP"] * 100)


def test_fixedap_cuts_detections_per_category_over_the_dataset(lvis_dataset):
    # k = 1: B keeps only its best detection, the false positive -> APc 0; A keeps the TP, C the
    # TP (0.95 beats the 0.6 FP).
    res = _run(FixedAPEvaluator(lvis_dataset, max_dets_per_category=1))["fixed_ap"]
    assert res["APc"] == pytest.approx(0.0)
    assert res["AP"] == pytest.approx(200.0 / 3)


def test_fixedap_gathers_predictions_of_all_ranks(lvis_dataset, monkeypatch):
    rank0 = FixedAPEvaluator(lvis_dataset)
    rank1 = FixedAPEvaluator(lvis_dataset)
    rank0.reset(), rank1.reset()
    (inp1, out1), (inp2, out2) = _predictions()
    rank0.process([inp1], [out1])
    rank1.process([inp2], [out2])
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, rank1._parts])
    res = rank0.evaluate()["fixed_ap"]
    assert res["AP"] == pytest.approx(250.0 / 3)


def _stream(n_images=64):
    """``n_images`` images (ids 1, 2, 1, ...) of 4 detections each (A, B, C, A), boxes jittered
    around the ground truth, scores in steps of 0.05 (ties across images)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_images):
        classes = [A, B, C, A]
        boxes = [_xyxy(np.add(BOX[c], rng.integers(-4, 5, 4)).tolist()) for c in classes]
        scores = (rng.integers(1, 20, 4) * 0.05).tolist()
        out.append(({"image_id": 1 + i % 2}, instances(boxes, scores, [c - 1 for c in classes])))
    return out


def test_fixedap_prunes_after_the_stored_detections_doubled(lvis_dataset, monkeypatch):
    sizes, top_per_category = [], fixed_ap.top_per_category  # rows given to each prune

    def counting(columns, k):
        sizes.append(len(columns["score"]))
        return top_per_category(columns, k)

    monkeypatch.setattr(fixed_ap, "top_per_category", counting)

    def run(prune_rows, k):
        monkeypatch.setattr(fixed_ap, "_PRUNE_ROWS", prune_rows)
        evaluator = FixedAPEvaluator(lvis_dataset, max_dets_per_category=k, distributed=False)
        evaluator.reset()
        sizes.clear()
        for inp, out in _stream():
            evaluator.process([inp], [out])
        prunes = list(sizes)
        return evaluator.evaluate()["fixed_ap"], prunes

    # k above every category's count (LVIS: 1203 x 10,000 rows can survive a prune, more than
    # _PRUNE_ROWS): a prune keeps all rows, so the next waits for twice as many. Pruning again at
    # every image once past the threshold (12, 16, ..., 256 rows: 62 prunes) is quadratic.
    res, prunes = run(prune_rows=10, k=1000)
    assert prunes == [12, 28, 60, 124, 252]
    unpruned, none = run(prune_rows=10**9, k=1000)
    assert none == [] and res == unpruned
    # k = 2: prunes cut rows (at most 6 kept), yet the numbers are those of one cut at the end.
    res, prunes = run(prune_rows=10, k=2)
    assert len(prunes) > 10 and max(prunes) <= 14
    unpruned, none = run(prune_rows=10**9, k=2)
    assert none == [] and res == unpruned
    assert res != run(prune_rows=10**9, k=1000)[0]  # the cut matters for these numbers


def test_lvis_vocabulary_in_chunks_of_40_names_gives_31_prompts():
    names = MetadataCatalog.get("lvis_v1_val").thing_classes
    assert len(names) == 1203
    tokenizer = load_tokenizer("bert-base-uncased")
    chunks = chunk_vocabulary(names, tokenizer, chunk_size=40, max_len=256)
    assert len(chunks) == 31
    assert [len(c.label_ids) for c in chunks] == [40] * 30 + [3]
    assert [i for c in chunks for i in c.label_ids] == list(range(1203))
    assert all(count_tokens(tokenizer, c.caption) + 2 <= 256 for c in chunks)


def test_register_lvis_refuses_own_names_with_lvis_v1_ids(tmp_path, names):
    """Names without their id map (or an id map without names) would be scored against LVIS
    v1's category ids: refused, naming the missing key."""
    json_file = write_json(tmp_path / "own.json", _lvis_json())
    with pytest.raises(ValueError, match="gives thing_classes without thing_dataset_id_to_contiguous_id"):
        register_lvis(names("own_names"), json_file, str(tmp_path), metadata={"thing_classes": ["a"]})
    with pytest.raises(ValueError, match="gives thing_dataset_id_to_contiguous_id without thing_classes"):
        register_lvis(names("own_ids"), json_file, str(tmp_path),
                      metadata={"thing_dataset_id_to_contiguous_id": {1: 0}})
