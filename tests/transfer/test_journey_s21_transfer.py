"""Session 21 journey: adapting a GLIP to one's own COCO-format task with train_net's Trainer:
class descriptions (file and inline JSON), prompt tuning and its checkpoint, few-shot subsets,
and descriptions that do not fit the dataset."""
import json
import logging
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from glip_d2.checkpoint import GLIPCheckpointer
from tests.helpers import no_text_encoder, tiny_cfg

CLASSES = ["red circle", "blue square", "green triangle"]
TRAIN, VAL = "_s21_journey_train", "_s21_journey_val"
# the test set's descriptions (inline JSON): those of the training set's yaml, as a list
DESCRIBED = [{"prefix": "a ", "name": "red circle", "suffix": ", a round red disc"}, "blue square",
             {"name": "green triangle", "suffix": ", a shape with three corners"}]


def _write_split(folder, n, seed):
    """A COCO json of n rendered 96 px shapes images (ids 1..n) of CLASSES, with the images."""
    from glip_d2.data.shapes import render_image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n):
        image, objects = render_image(rng, 96, CLASSES)
        cv2.imwrite(str(folder / f"{i}.png"), image[:, :, ::-1])
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 96, "width": 96})
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0,
                                "category_id": CLASSES.index(o["category"]) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": o["area"]})
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    path = folder.parent / f"{folder.name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return [str(path), str(folder)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Registers TRAIN (12 images) and VAL (4) as train_net's DATASETS.CUSTOM does."""
    from detectron2.data import DatasetCatalog

    from glip_d2.data.datasets import register_datasets_from_config

    root = tmp_path_factory.mktemp("s21_data")
    custom = [[TRAIN, *_write_split(root / "train", 12, 0)], [VAL, *_write_split(root / "val", 4, 1)]]
    if TRAIN not in DatasetCatalog.list():
        cfg = _cfg()
        cfg.DATASETS.CUSTOM = custom
        register_datasets_from_config(cfg)
    return root


def _cfg(**datasets):
    """tiny_cfg on TRAIN / VAL at 96 px, 2 iterations of batch 2; DATASETS keys from ``datasets``."""
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.GLIP.VOCABULARY = []  # the test set's own names (and descriptions) as the prompt
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 96
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 96
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (TRAIN,), (VAL,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.TEST.EVAL_PERIOD = 0
    for key, value in datasets.items():
        setattr(cfg.DATASETS, key, value)
    return cfg


@pytest.mark.parametrize(
    "descriptions, where, what",
    [
        ('["red circle", "blue square"]', "file", "2 class descriptions for 3 classes"),
        ('{"red circel": ", a round disc"}', "inline JSON", r"\['red circel'\] match no class"),
    ],
)
@pytest.mark.parametrize("dataset", [TRAIN, VAL])
def test_descriptions_that_do_not_fit_the_classes_fail_before_training_naming_the_entry(
    data, tmp_path, descriptions, where, what, dataset
):
    """Was: a training dataset's wrong-length descriptions failed at the first training step as
    a 'bad training record' (image_id ...; 'set DATASETS.SKIP_BAD_RECORDS True'), a test
    dataset's at the model's build without naming the dataset or the file."""
    from detectron2.modeling import build_model

    from glip_d2.data import GroundingDatasetMapper
    from glip_d2.data.class_descriptions import class_descriptions_from_config

    source = descriptions
    if where == "file":
        (tmp_path / "d.json").write_text(descriptions)
        source = str(tmp_path / "d.json")
    cfg = _cfg(CLASS_DESCRIPTIONS=[[dataset, source]])
    named = (f"DATASETS.CLASS_DESCRIPTIONS entry for dataset '{dataset}' "
             f"\\({repr(source) if where == 'file' else where}\\) does not fit its classes: ")
    classes = "'red circle', 'blue square', 'green triangle'"
    for build in (class_descriptions_from_config, GroundingDatasetMapper, build_model):
        with pytest.raises(ValueError, match=named + ".*" + what) as e:
            build(cfg)
        assert classes in str(e.value)
    # train_net's checks before any process starts: one "error:" line, exit 2
    from tests.reliability.helpers import load_train_net

    train_net = load_train_net()
    with pytest.raises(ValueError, match=named + ".*" + what):
        train_net.check_setup(cfg, train_net.argument_parser().parse_args(["--config-file", "c"]))
    # descriptions that fit are taken as they are
    cfg.DATASETS.CLASS_DESCRIPTIONS = [[dataset, json.dumps(DESCRIBED)]]
    assert class_descriptions_from_config(cfg)[dataset][0]["suffix"] == ", a round red disc"


def test_prompt_tuning_with_described_classes_trains_only_the_prompt_and_its_checkpoint_evaluates(
    data, tmp_path
):
    """train_net's route: MODEL.GLIP.TUNING prompt, DATASETS.CLASS_DESCRIPTIONS from a file
    (training set) and inline JSON (test set): the training prompt carries the descriptions,
    only prompt_tuning.* changes, and a model built with the same config evaluates the test set
    with the tuned prompt, without its text encoder; a model built without TUNING prompt refuses
    the checkpoint for inference."""
    from detectron2.modeling import build_model

    from glip_d2.engine.evaluation import prompt_test_dataset
    from tests.reliability.helpers import load_train_net

    Trainer = load_train_net().Trainer
    (tmp_path / "train.yaml").write_text(
        'red circle: {prefix: "a ", suffix: ", a round red disc"}\n'
        'green triangle: ", a shape with three corners"\n'
    )
    cfg = _cfg(CLASS_DESCRIPTIONS=[[TRAIN, str(tmp_path / "train.yaml")], [VAL, json.dumps(DESCRIBED)]])
    cfg.MODEL.GLIP.TUNING = "prompt"
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert "prompt_tuning.offset" in changed
    assert {k.split(".")[0] for k in changed} == {"prompt_tuning"}
    tuned = trainer.model.prompt_tuning
    prompt = trainer.model.tokenizer.decode(tuned.input_ids[: int(tuned.length)], skip_special_tokens=True)
    assert prompt == "a red circle, a round red disc. blue square. green triangle, a shape with three corners"

    final = str(tmp_path / "out" / "model_final.pth")
    model = build_model(cfg).eval()
    GLIPCheckpointer(model).load(final)
    prompt_test_dataset(cfg, model, VAL)  # what Trainer.test does before evaluating VAL
    assert model.untuned_prompts() == []
    model.language_backbone.forward = no_text_encoder
    image = torch.as_tensor(cv2.imread(str(data / "val" / "0.png")).transpose(2, 0, 1).copy())
    with torch.no_grad():
        got = model([{"image": image, "height": 96, "width": 96}])[0]["instances"]
        trained = trainer.model.eval()([{"image": image, "height": 96, "width": 96}])[0]["instances"]
    torch.testing.assert_close(got.scores, trained.scores)

    cfg.MODEL.GLIP.TUNING = "full"
    with pytest.raises(ValueError, match="carries a tuned prompt"):
        GLIPCheckpointer(build_model(cfg)).load(final)


@pytest.mark.parametrize("mode", ["official", "instances"])
def test_few_shot_subsets_of_a_coco_json_have_k_per_class_and_repeat_per_seed(data, mode, caplog):
    from glip_d2.data.build import load_checked_train_dicts

    def subset(k, seed):
        cfg = _cfg(FEW_SHOT=k, FEW_SHOT_SEED=seed, FEW_SHOT_MODE=mode)
        (part,) = load_checked_train_dicts(cfg, mapper=None)
        return part

    def shots(part):  # what k counts: images per class ("official") or instances
        if mode == "official":
            return Counter(c for d in part for c in {a["category_id"] for a in d["annotations"]})
        return Counter(a["category_id"] for d in part for a in d["annotations"])

    everything = subset(1000, 0)
    unit = "images" if mode == "official" else "instances"
    for k in (1, 2):
        for seed in (0, 1):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="glip_d2.data.few_shot"):
                part = subset(k, seed)
            assert [d["image_id"] for d in part] == [d["image_id"] for d in subset(k, seed)]
            assert all(shots(part)[c] >= k for c in range(3)) and len(part) < len(everything)
            # the log reports per category what k counts (it gave instances in official mode)
            low, high = min(shots(part).values()), max(shots(part).values())
            assert f"{unit} per category: {low}-{high}." in caplog.text
    with caplog.at_level(logging.WARNING, logger="glip_d2.data.few_shot"):
        assert len(subset(100, 1)) == 12  # k beyond the data: all of it, with a warning
    assert f"have fewer than 100 {unit}" in caplog.text
