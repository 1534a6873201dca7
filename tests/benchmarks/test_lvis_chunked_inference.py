"""LVIS-style chunked prompts: splitting the vocabulary over several prompts changes nothing else.

A real text encoder gives every token features that depend on the whole prompt (self-attention,
position embeddings), so chunked and unchunked scores differ by design, as in official GLIP.
With a context-free text encoder (a token embedding table) and no early fusion, each name's
score is the same in any prompt, so the two must give the same detections: this checks the
chunk bookkeeping (label ids of each chunk, the merge with class-wise NMS, the per-image cap).
"""

import json

import pytest
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from torch import nn

from glip_d2.data.datasets import register_custom_coco
from glip_d2.engine import fast_coco_eval_available
from glip_d2.modeling.language import LANGUAGE_BACKBONE_REGISTRY
from tests.benchmarks.helpers import coco_json, write_json

from tests.helpers import tiny_cfg

VOCABULARY = ["red circle", "blue square", "green triangle", "yellow star", "purple cross"]


class ContextFreeText(nn.Module):
    """Token features from an embedding table: the same token has the same features anywhere."""

    def __init__(self, cfg):
        super().__init__()
        self.language_dim = cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM
        self.table = nn.Embedding(30522, self.language_dim)  # the uncased BERT vocabulary
        nn.init.normal_(self.table.weight, 0, 1.0)

    def forward(self, input_ids, attention_mask):
        features = self.table(input_ids)
        embedded = features * attention_mask.unsqueeze(-1).to(features.dtype)
        return {"hidden": features, "embedded": embedded, "masks": attention_mask}


if "ContextFreeText" not in LANGUAGE_BACKBONE_REGISTRY:
    LANGUAGE_BACKBONE_REGISTRY.register(ContextFreeText)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_cfg(fuse=False)
    cfg.MODEL.LANGUAGE_BACKBONE.NAME = "ContextFreeText"
    cfg.MODEL.ATSS.PRE_NMS_TOP_N = 100000  # a per-prompt top-k must not bind on either side
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 30  # the per-image cap does bind
    cfg.MODEL.ATSS.INFERENCE_TH = 0.3
    m = build_model(cfg).eval()
    with torch.no_grad():  # varied token scores around 0.5 instead of the 0.01 prior
        m.head.scorer.bias0.zero_()
    return m


def _detect(model, chunk_size, images):
    model.test_chunk_size = chunk_size
    model.set_vocabulary(VOCABULARY)
    with torch.no_grad():
        out = model.inference(images)
    return len(model._chunks), [o["instances"] for o in out]


def _sorted(inst):
    order = sorted(
        range(len(inst)), key=lambda i: (-float(inst.scores[i]), int(inst.pred_classes[i]))
    )
    return inst[torch.as_tensor(order, dtype=torch.long)]


def test_lvis_chunked_and_unchunked_inference_give_the_same_detections(model):
    g = torch.Generator().manual_seed(1)
    images = [
        {
            "image": torch.randint(0, 255, (3, 64, 96), generator=g, dtype=torch.uint8),
            "height": 128,
            "width": 192,
        }  # detections rescaled to the original size, like COCO
        for _ in range(2)
    ]
    n_one, whole = _detect(model, 0, images)
    n_many, chunked = _detect(model, 2, images)
    assert (n_one, n_many) == (1, 3)
    for a, b in zip(whole, chunked):
        a, b = _sorted(a), _sorted(b)
        assert len(a) == 30  # enough detections that the cap and the merge matter
        assert len(set(a.pred_classes.tolist())) >= 3  # from several chunks
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(a.scores, b.scores)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_coco_evaluator_maps_glip_pred_classes_to_dataset_ids(model, tmp_path, names):
    """The meta-architecture's contiguous pred_classes go through COCOEvaluator unchanged."""
    ids = [3, 7, 11, 13, 20]  # non-contiguous json ids of VOCABULARY
    data = coco_json(list(zip(ids, VOCABULARY)), [(42, "x.jpg")], [(42, 11, [10, 10, 30, 20])])
    name = names("coco")
    register_custom_coco(name, write_json(tmp_path / "val.json", data), str(tmp_path))
    g = torch.Generator().manual_seed(2)
    image = {
        "image": torch.randint(0, 255, (3, 64, 96), generator=g, dtype=torch.uint8),
        "height": 100,
        "width": 100,
        "image_id": 42,
    }
    _, (instances,) = _detect(model, 2, [image])
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "out"),
                              use_fast_impl=fast_coco_eval_available())
    evaluator.reset()
    evaluator.process([image], [{"instances": instances}])
    assert "bbox" in evaluator.evaluate()
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert len(written) == len(instances) > 0
    assert [d["category_id"] for d in written] == [ids[c] for c in instances.pred_classes.tolist()]
