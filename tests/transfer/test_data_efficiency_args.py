"""README claims of "Transfer to your task" checked literally: the data-efficiency command on any
registered detection dataset (an LVIS-format json too, with --max-test-images) and arguments
that would table one setting as another."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from glip_d2 import data_efficiency
from tests.helpers import tiny_cfg

# image id -> (category id, XYWH box) of the LVIS-format json below
_GT = {
    1: (1, [4.0, 4.0, 12.0, 10.0]),
    2: (2, [10.0, 8.0, 14.0, 16.0]),
    3: (1, [6.0, 20.0, 10.0, 12.0]),
}


def _write_lvis_json(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    images, annos = [], []
    for image_id, (category, box) in _GT.items():
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 40, "width": 40,
                       "neg_category_ids": [], "not_exhaustive_category_ids": []})
        annos.append({"id": image_id, "image_id": image_id, "category_id": category, "bbox": box,
                      "area": box[2] * box[3]})
    cats = [{"id": 1, "name": "red circle", "frequency": "f"},
            {"id": 2, "name": "blue square", "frequency": "c"}]
    path = folder / "lvis_format.json"
    path.write_text(json.dumps({"images": images, "annotations": annos, "categories": cats}))
    return str(path)


class _GroundTruthModel(torch.nn.Module):
    """Stands in for the model in ``_evaluate``: answers each image with its ground-truth box."""

    def set_vocabulary(self, vocabulary):
        self.vocabulary = list(vocabulary)

    def forward(self, inputs):
        from detectron2.structures import Boxes, Instances

        out = []
        for x in inputs:
            category, (x0, y0, w, h) = _GT[x["image_id"]]
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[x0, y0, x0 + w, y0 + h]]))
            inst.scores = torch.ones(1)
            inst.pred_classes = torch.tensor([category - 1])
            out.append({"instances": inst})
        return out


def test_max_test_images_on_an_lvis_format_json_scores_those_images(tmp_path, names):
    """``--max-test-images`` on an LVIS-format dataset (``DATASETS.CUSTOM [..., "lvis"]``, which
    the README says evaluates with the LVIS protocol). Before: the view had no json_file and
    LVISEvaluator failed with an AttributeError before the first run; the LVIS API scores against
    the json, so the view needs a json of its own images (with the whole json a perfect answer on
    the first 2 images would miss image 3's box)."""
    from glip_d2.data.datasets.custom import register_custom_lvis

    name = names("rc_b_lvis")
    register_custom_lvis(name, _write_lvis_json(tmp_path / "data"), str(tmp_path / "data"))
    sub = data_efficiency._test_subset(name, 2)
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = (sub,)
    cfg.TEST.BENCHMARK.LVIS_FIXED_AP = True  # FixedAP reads the json too
    try:
        result = data_efficiency._evaluate(cfg, _GroundTruthModel(), str(tmp_path / "eval"))
        with open(MetadataCatalog.get(sub).json_file) as f:
            subset = json.load(f)
    finally:
        DatasetCatalog.remove(sub)
        MetadataCatalog.remove(sub)
    assert sorted(i["id"] for i in subset["images"]) == [1, 2]
    assert sorted(a["image_id"] for a in subset["annotations"]) == [1, 2]
    assert [c["id"] for c in subset["categories"]] == [1, 2]
    assert result["AP"] == pytest.approx(100.0) and result["AP50"] == pytest.approx(100.0)


@pytest.mark.parametrize("lr", ["prompt=0", "linear=-1e-3", "full=nan", "prompt=abc"])
def test_a_learning_rate_that_trains_nothing_is_refused(tmp_path, monkeypatch, capsys, lr):
    """``--lr MODE=0`` (or negative, NaN) leaves the zero-shot model to be tabled as tuned, as
    --iters 0 would (refused); a value that is no number is a usage error too, not a traceback."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    ran = []
    monkeypatch.setattr(data_efficiency, "_base_cfg", lambda args: cfg)
    monkeypatch.setattr(data_efficiency, "write_outputs", lambda *a, **k: None)
    monkeypatch.setattr(data_efficiency, "run_one", lambda c, mode, k, seed, *a, **kw: ran.append(
        mode) or {"mode": mode or "zero-shot", "shots": k, "seed": seed, "AP": 1.0, "AP50": 2.0,
                  "train_seconds": 0.0, "trainable_params": 1})
    argv = ["--config-file", "x.yaml", "--train-dataset", "a", "--test-dataset", "b",
            "--output-dir", str(tmp_path / "out"), "--shots", "1", "--seeds", "0", "--lr", lr]
    with pytest.raises(SystemExit) as e:
        data_efficiency.main(argv)
    assert e.value.code == 2 and ran == []
    assert "--lr" in capsys.readouterr().err


def test_a_run_without_detections_scores_0_and_an_undefined_ap_is_not_a_seed():
    """Detectron2's evaluators return no "bbox" when the model detected nothing: that run
    scored NaN and was left out of the mean, which then stood on the better seeds only."""
    from glip_d2.data_efficiency import _box_ap, summarize

    assert _box_ap({}) == {"AP": 0.0, "AP50": 0.0}
    assert _box_ap({"bbox": {"AP": 40.0, "AP50": 80.0}}) == {"AP": 40.0, "AP50": 80.0}
    runs = [dict(mode="prompt", shots=1, seed=s, train_seconds=1.0, **_box_ap(res))
            for s, res in enumerate([{"bbox": {"AP": 30.0, "AP50": 60.0}}, {}])]
    cell = summarize(runs)["modes"]["prompt"][1]
    assert (cell["AP"], cell["AP_std"], cell["seeds"]) == (15.0, 15.0, 2)
    nan = dict(mode="prompt", shots=1, seed=2, AP=float("nan"), AP50=float("nan"), train_seconds=1.0)
    assert summarize(runs + [nan])["modes"]["prompt"][1]["seeds"] == 2
