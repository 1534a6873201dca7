"""Flickr30k Entities phrase grounding: Recall@k at IoU 0.5 under MDETR's two protocols.

For every evaluated phrase of every (image, sentence) pair, the model's boxes for that phrase
are ranked by score; Recall@k is the fraction of phrases for which one of the first k boxes has
IoU >= 0.5 with the ground truth:

* **any-box** ("separate GT"): with any of the phrase's ground-truth boxes;
* **merged-box**: with the smallest box enclosing all of them (Plummer et al.'s protocol).

Ground truth, as in MDETR's evaluator, comes from the Flickr30k Entities release
(``Annotations/<image>.xml`` boxes, ``Sentences/<image>.txt`` phrases and their types) when
``entities_dir`` is known; the evaluated phrases are then those of the sentence whose entity has
a box, in order, which is the order of the json's ``tokens_positive_eval`` (the "phrases" view of
:mod:`glip_d2.data.datasets.mdetr`), and recall is also reported per phrase type (people,
clothing, bodyparts, animals, vehicles, instruments, scene, other). Without the release the
ground truth is the dataset's own boxes per phrase (MDETR merged boxes of one entity that
overlapped with IoU >= 0.95 when it built the jsons, so numbers can differ slightly) and only the
overall recall is reported.

The same evaluator scores any grounding dataset (``evaluator_type="grounding"``): its phrases
are numbered like ``GroundingDatasetMapper`` numbers them (see :mod:`.phrases`).
"""

import functools
import os
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog

from .phrases import hits_at_k, phrase_boxes
from .ranked import RankedPhraseEvaluator

__all__ = ["FlickrEvaluator", "parse_entities_sentences", "parse_entities_boxes", "recall_at_k"]

# "[/EN#18/people A man]": entity id, "/"-separated types, the words.
_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)*)\s+([^\]]*)\]")


def parse_entities_sentences(path: str) -> List[List[dict]]:
    """Phrases of each sentence of a Flickr30k Entities ``Sentences/<image>.txt``.

    Returns:
        per sentence (line), ``[{"entity": str, "types": [str], "phrase": str}]`` in order.
    """
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    return [
        [
            {
                "entity": m.group(1),
                "types": [t for t in m.group(2).split("/") if t],
                "phrase": m.group(3),
            }
            for m in _PHRASE.finditer(line)
        ]
        for line in lines
    ]


def parse_entities_boxes(path: str) -> Dict[str, np.ndarray]:
    """Boxes (``(n, 4)`` XYXY) of each entity id in a Flickr30k Entities ``Annotations/*.xml``."""
    boxes = defaultdict(list)
    for obj in ET.parse(path).getroot().findall("object"):
        box = obj.find("bndbox")
        if box is None or len(box) == 0:
            continue  # "scene" / "nobndbox" entities have no box
        xyxy = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        for name in obj.findall("name"):
            boxes[name.text].append(xyxy)
    return {k: np.asarray(v, dtype=np.float64) for k, v in boxes.items()}


def _merged(boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return boxes
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None]


def recall_at_k(
    predictions: Sequence[List[np.ndarray]],
    ground_truth: Sequence[List[dict]],
    topk: Sequence[int],
    thresh: float,
) -> Dict[str, Dict[str, float]]:
    """Recall@k (percent) per protocol and phrase type.

    Args:
        predictions: per evaluated item, per phrase, its ranked boxes.
        ground_truth: per item, per phrase, ``{"boxes": (n, 4), "types": [str]}``.
        topk: the k's.
        thresh: IoU threshold.

    Returns:
        ``{"any_box": {"R@1": ..., "R@1 people": ...}, "merged_box": {...}}``.
    """
    hits = {p: defaultdict(int) for p in ("any_box", "merged_box")}
    totals = defaultdict(int)
    for preds, phrases in zip(predictions, ground_truth):
        for j, phrase in enumerate(phrases):
            boxes = preds[j] if j < len(preds) else np.zeros((0, 4))
            groups = ["all"] + list(phrase.get("types", ()))
            for group in groups:
                totals[group] += 1
            for protocol, targets in (
                ("any_box", phrase["boxes"]),
                ("merged_box", _merged(phrase["boxes"])),
            ):
                for k, hit in hits_at_k(boxes, targets, topk, thresh).items():
                    for group in groups:
                        hits[protocol][(k, group)] += hit
    results = OrderedDict()
    for protocol in ("any_box", "merged_box"):
        metrics = OrderedDict()
        for group in ["all"] + sorted(g for g in totals if g != "all"):
            for k in topk:
                key = f"R@{k}" if group == "all" else f"R@{k} {group}"
                metrics[key] = 100.0 * hits[protocol][(k, group)] / max(totals[group], 1)
        results[protocol] = metrics
    return results


class FlickrEvaluator(RankedPhraseEvaluator):
    """Phrase-grounding Recall@k (Flickr30k Entities protocols), gathered like Detectron2's
    evaluators.

    Results: ``{"<task>_any_box": {"R@1", "R@5", "R@10", "R@1 people", ...},
    "<task>_merged_box": {...}}`` with ``task`` "flickr" (or "grounding").
    """

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        entities_dir: Optional[str] = None,
        task: str = "flickr",
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered grounding dataset; its dicts give the phrases (and
                ``original_img_id`` / ``sentence_id`` to find a sentence in the release).
            topk: the k's of Recall@k.
            iou_thresh: IoU for a hit.
            entities_dir: Flickr30k Entities folder (``Annotations/``, ``Sentences/``); None =
                ground truth from the dataset's own boxes.
            task: prefix of the result keys.
            distributed: gather the predictions of all ranks to rank 0.
        """
        super().__init__(dataset_name, topk, iou_thresh, distributed)
        self._entities_dir = entities_dir
        self._task = task

    def _ground_truth(self, image_ids) -> Dict[object, List[dict]]:
        records = {r["image_id"]: r for r in DatasetCatalog.get(self._dataset_name)}
        missing = [i for i in image_ids if i not in records]
        if missing:
            raise KeyError(f"Predicted images {missing[:5]} are not in {self._dataset_name}.")
        if self._entities_dir is None:
            return {
                i: [{"boxes": b, "types": []} for b in phrase_boxes(records[i])] for i in image_ids
            }
        sentences = functools.lru_cache(maxsize=None)(
            lambda img: parse_entities_sentences(
                os.path.join(self._entities_dir, "Sentences", f"{img}.txt")
            )
        )
        entity_boxes = functools.lru_cache(maxsize=None)(
            lambda img: parse_entities_boxes(
                os.path.join(self._entities_dir, "Annotations", f"{img}.xml")
            )
        )
        gt = {}
        for i in image_ids:
            record = records[i]
            if "original_img_id" not in record or "sentence_id" not in record:
                raise KeyError(
                    f"Image {i!r} of {self._dataset_name} has no original_img_id / sentence_id; "
                    "the Flickr30k Entities protocol needs MDETR's flickr jsons."
                )
            img = record["original_img_id"]
            boxes = entity_boxes(img)
            phrases = [
                p for p in sentences(img)[int(record["sentence_id"])] if p["entity"] in boxes
            ]
            expected = len(record.get("tokens_positive_eval", phrases))
            if len(phrases) != expected:
                raise ValueError(
                    f"Image {i!r} (Flickr {img}, sentence {record['sentence_id']}): "
                    f"{len(phrases)} phrases with boxes in {self._entities_dir} but "
                    f"{expected} in tokens_positive_eval; the json and the release disagree."
                )
            gt[i] = [{"boxes": boxes[p["entity"]], "types": p["types"]} for p in phrases]
        return gt

    def _score(self, predictions):
        image_ids = [i for i, _ in predictions]
        gt = self._ground_truth(image_ids)
        results = recall_at_k(
            [p for _, p in predictions], [gt[i] for i in image_ids], self._topk, self._thresh
        )
        return OrderedDict((f"{self._task}_{k}", v) for k, v in results.items())
