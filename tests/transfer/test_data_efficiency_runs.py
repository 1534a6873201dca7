"""glip_d2.data_efficiency's runs: reproducible per seed, usable with a model whose losses log to
Detectron2's event storage (the mask head), --max-test-images views that keep their dataset's
classes and descriptions, and configs trained on several datasets by ratio."""
import os

import pytest
import torch

from glip_d2 import data_efficiency
from glip_d2.data import register_shapes_split
from glip_d2.data.shapes import NOVEL_CLASSES
from tests.helpers import tiny_cfg
from tests.transfer.test_data_efficiency import tiny_shapes_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(names, tmp_path):
    return tiny_shapes_cfg(names, tmp_path)[0]


def test_the_same_run_twice_gives_the_same_model(tmp_path, names):
    """One (mode, k, seed) point run twice in one process trains the same weights: the seed
    fixes the subset, the model's initialisation, the mapper and the order of the images."""
    cfg = _cfg(names, tmp_path)
    weights = []
    for i in range(2):
        out = str(tmp_path / f"run{i}")
        data_efficiency.run_one(cfg, "linear", 1, 0, 3, out, save_checkpoint=True)
        weights.append(torch.load(os.path.join(out, "model_final.pth"))["model"])
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differ == []


def test_a_mask_model_trains_outside_a_trainer(tmp_path, names):
    """The mask head's loss (Detectron2's mask_rcnn_loss) logs to the event storage; the
    command's own training loop must provide one, as Detectron2's trainers do."""
    cfg = _cfg(names, tmp_path)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    record = data_efficiency.run_one(cfg, "full", 1, 0, 2, str(tmp_path / "mask"))
    assert record["iters"] == 2 and record["trainable_params"] > 0


class _VocabularyRecorder(torch.nn.Module):
    """Stands in for the model in ``_evaluate``: records its test vocabulary, detects nothing."""

    def __init__(self):
        super().__init__()
        self.vocabulary = None

    def set_vocabulary(self, vocabulary):
        self.vocabulary = list(vocabulary)

    def forward(self, inputs):
        from detectron2.structures import Boxes, Instances

        out = []
        for x in inputs:
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.zeros(0, 4))
            inst.scores = torch.zeros(0)
            inst.pred_classes = torch.zeros(0, dtype=torch.long)
            out.append({"instances": inst})
        return out


def test_max_test_images_on_a_coco_json_keeps_its_classes(tmp_path, names):
    """``--max-test-images`` on a dataset registered from a COCO json (its thing_classes and id
    map are recorded when it is first loaded): the view of its first images has them too."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from glip_d2.engine.evaluation import set_test_vocabulary
    from tests.reliability.test_exact_resume import write_detection_dataset

    data = tmp_path / "data"
    data.mkdir()
    name = names("rv_de_coco")
    register_coco_instances(name, {}, write_detection_dataset(data, n=3), str(data))
    sub = data_efficiency._test_subset(name, 2)
    try:
        assert len(DatasetCatalog.get(sub)) == 2
        meta = MetadataCatalog.get(sub)
        assert meta.get("thing_classes", None) == ["red circle", "blue square", "green triangle"]
        assert meta.get("thing_dataset_id_to_contiguous_id", None) == {1: 0, 2: 1, 3: 2}
        model = _VocabularyRecorder()
        set_test_vocabulary(model, sub)
        assert model.vocabulary == ["red circle", "blue square", "green triangle"]
    finally:
        DatasetCatalog.remove(sub)
        MetadataCatalog.remove(sub)


def test_max_test_images_keeps_the_test_datasets_class_descriptions(tmp_path, names):
    """DATASETS.CLASS_DESCRIPTIONS of the test dataset also prompt its ``--max-test-images``
    view (else a prompt-tuning run is tested on another prompt than it learned)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = names("rv_de_desc")
    register_shapes_split(name, "val_novel", str(tmp_path / "data"), num_images=3, image_size=128,
                          vocabulary=NOVEL_CLASSES)
    sub = data_efficiency._test_subset(name, 2)
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = (sub,)
    second = NOVEL_CLASSES[1]
    cfg.DATASETS.CLASS_DESCRIPTIONS = [[name, '{"%s": {"suffix": ", a tile"}}' % second]]
    model = _VocabularyRecorder()
    try:
        data_efficiency._evaluate(cfg, model, str(tmp_path / "eval"))
    finally:
        DatasetCatalog.remove(sub)
        MetadataCatalog.remove(sub)
    assert model.vocabulary[0] == NOVEL_CLASSES[0]
    assert getattr(model.vocabulary[1], "suffix", None) == ", a tile"


def test_a_config_trained_on_several_datasets_by_ratio_is_usable(tmp_path, names):
    """A model config saved from a run on several datasets drawn by ratio
    (DATASETS.TRAIN_RATIOS, one ratio per DATASETS.TRAIN entry): the command trains on its one
    few-shot dataset, so the ratios must not outlive the datasets they belonged to."""
    from glip_d2.data import GroundingDatasetMapper, build_grounding_train_loader

    cfg = _cfg(names, tmp_path)
    train, test = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
    cfg.DATASETS.TRAIN = (train, test)
    cfg.DATASETS.TRAIN_RATIOS = (3, 1)
    config = tmp_path / "ratios.yaml"
    config.write_text(cfg.dump())
    args = data_efficiency.get_parser().parse_args(
        ["--config-file", str(config), "--train-dataset", train, "--test-dataset", test])
    base = data_efficiency._base_cfg(args)
    assert base.DATASETS.TRAIN == (train,)
    loader = build_grounding_train_loader(base, GroundingDatasetMapper(base, is_train=True))
    assert len(loader.dataset) == 4
