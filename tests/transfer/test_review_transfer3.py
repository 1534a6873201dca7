"""Review round 3 (transfer): the data-efficiency command's test prompt (a fixed vocabulary, the
prompt a prompt-tuning run is evaluated with), repeated points, and a tuned prompt loaded with
the weights that differs from the training prompt."""
import pytest
import torch
from detectron2.modeling import build_model

from glip_d2 import data_efficiency
from glip_d2.data import register_shapes_split
from glip_d2.data.shapes import NOVEL_CLASSES
from tests.helpers import make_input, tiny_cfg
from tests.transfer.test_data_efficiency import tiny_shapes_cfg
from tests.transfer.test_data_efficiency_runs import _VocabularyRecorder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_fixed_vocabulary_that_is_not_the_test_class_list_is_refused(tmp_path, names):
    """With MODEL.GLIP.VOCABULARY set, the model prompts with it and the evaluator reads each
    label as the test dataset's class index: another list (here the novel names reversed) gave
    an AP for the wrong classes without an error; train_net refuses it, so must the command."""
    name = names("rv3_fixed")
    register_shapes_split(name, "val_novel", str(tmp_path / "data"), num_images=2,
                          image_size=128, vocabulary=NOVEL_CLASSES)
    cfg = tiny_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = (name,)
    cfg.MODEL.GLIP.VOCABULARY = list(reversed(NOVEL_CLASSES))
    with pytest.raises(ValueError, match="MODEL.GLIP.VOCABULARY"):
        data_efficiency._evaluate(cfg, _VocabularyRecorder(), str(tmp_path / "eval"))
    cfg.MODEL.GLIP.VOCABULARY = list(NOVEL_CLASSES)  # the dataset's own list is fine
    assert set(data_efficiency._evaluate(cfg, _VocabularyRecorder(), str(tmp_path / "eval2"))) == {
        "AP", "AP50"}  # no detections: NaN AP, but evaluated


def test_a_prompt_run_tested_with_another_prompt_than_it_tunes_is_refused(tmp_path, names):
    """The test set names the training set's classes in another order: the tuned prompt is not
    the test prompt, which the text encoder scores (the zero-shot model). The run used to be
    tabled as prompt tuning; now it stops after the first step, naming both prompts' source."""
    cfg, train, _ = tiny_shapes_cfg(names, tmp_path)
    test = names("rv3_reordered")
    register_shapes_split(test, "val_novel", str(tmp_path / "data"), num_images=2,
                          image_size=128, vocabulary=tuple(reversed(NOVEL_CLASSES)))
    cfg.DATASETS.TEST = (test,)
    with pytest.raises(ValueError, match=r"prompt k=1 seed=0: the test prompt .*zero-shot"):
        data_efficiency.run_one(cfg, "prompt", 1, 0, 2, str(tmp_path / "prompt"))
    # the other modes train the model for the test prompt and are evaluated with it
    record = data_efficiency.run_one(cfg, "linear", 1, 0, 1, str(tmp_path / "linear"))
    assert record["iters"] == 1


def test_untuned_prompts_lists_the_vocabulary_prompts_the_tuned_prompt_does_not_cover():
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.GLIP.TUNING = "prompt"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.untuned_prompts() == []  # nothing learned yet
    chunk = model._chunks[0]
    model([make_input(model, chunk.caption, [[10, 10, 60, 70]], [chunk.spans[0]])])
    assert model.untuned_prompts() == []  # the vocabulary is the tuned prompt
    model.set_vocabulary(["red circle", "blue square", "green triangle"], chunk_size=2)
    assert model.untuned_prompts() == [c.caption for c in model._chunks] and len(model._chunks) == 2
    model.set_vocabulary(["blue square", "red circle", "green triangle"])  # another order
    assert model.untuned_prompts() == [model._chunks[0].caption]
    model.set_vocabulary(["red circle", "blue square", "green triangle"])
    assert model.untuned_prompts() == []


@pytest.mark.parametrize("repeat", [["--seeds", "0", "0"], ["--shots", "1", "3", "1"],
                                    ["--modes", "prompt", "prompt"]])
def test_repeated_points_are_refused(tmp_path, monkeypatch, capsys, repeat):
    """``--seeds 0 0`` ran seed 0 twice and tabled the copies as two seeds (mean over
    duplicates, std 0 between them); the command now stops before any run."""
    monkeypatch.setattr(data_efficiency, "run_one", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.setattr(data_efficiency, "_base_cfg", lambda args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exc:
        data_efficiency.main(["--config-file", "x.yaml", "--train-dataset", "a",
                              "--test-dataset", "b", "--output-dir", str(tmp_path / "o")] + repeat)
    assert exc.value.code == 2 and "more than once" in capsys.readouterr().err


def test_a_tuned_prompt_loaded_with_the_weights_names_the_checkpoint_as_the_cause():
    """A model that holds a tuned prompt for other classes (MODEL.WEIGHTS prompt-tuned on another
    task) meets a training prompt of identical captions: the error said the training captions
    differ, which they do not; it now names the loaded prompt."""
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.GLIP.TUNING = "prompt"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    chunk = model._chunks[0]
    model([make_input(model, chunk.caption, [[10, 10, 60, 70]], [chunk.spans[0]])])
    other = make_input(model, "purple star", [[10, 10, 60, 70]], [(0, 11)])
    with pytest.raises(ValueError, match="already holds a tuned prompt") as exc:
        model([other, other])
    assert "captions differ" not in str(exc.value)
    with pytest.raises(ValueError, match="training captions differ"):  # still refused
        model([other, make_input(model, chunk.caption, [[10, 10, 60, 70]], [chunk.spans[0]])])
