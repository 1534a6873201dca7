"""Review round (following README.md and docs/ as a new user): the data-efficiency command's
--resume keeps only runs measured the way the current command would measure them."""
import json

import pytest

from glip_d2 import data_efficiency


def _fake_runs(monkeypatch):
    """No model, no dataset: _base_cfg gives a plain config with the --opts merged, run_one a
    record, _test_subset the name of the view."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    def base_cfg(args):
        cfg = add_glip_config(get_cfg())
        cfg.merge_from_list(args.opts)
        cfg.MODEL.WEIGHTS = args.weights
        return cfg

    calls = []

    def run_one(cfg, mode, k, seed, iters, *a, **kw):
        calls.append((mode or "zero-shot", k, seed, iters))
        return {"mode": mode or "zero-shot", "shots": k, "seed": seed, "AP": 1.0, "AP50": 2.0,
                "train_seconds": 0.0, "trainable_params": 1, "iters": iters if mode else 0}

    monkeypatch.setattr(data_efficiency, "_base_cfg", base_cfg)
    monkeypatch.setattr(data_efficiency, "write_outputs", lambda *a, **k: None)
    monkeypatch.setattr(data_efficiency, "run_one", run_one)
    monkeypatch.setattr(data_efficiency, "_test_subset",
                        lambda name, n, output_dir=None: f"{name}@first{n}" if n else name)
    return calls


def _argv(out, *extra):
    return ["--config-file", "x.yaml", "--train-dataset", "a", "--test-dataset", "b",
            "--output-dir", str(out), "--shots", "1", "--seeds", "0", "--modes", "prompt",
            *extra]


@pytest.mark.parametrize("changed", [
    ["--iters", "200"],                       # the README's quick run, then the full protocol
    ["--iters", "30", "--max-test-images", "0"],
    ["--iters", "30", "--max-test-images", "50", "--weights", "other.pth"],
    ["--iters", "30", "--max-test-images", "50", "--lr", "prompt=0.1"],
    ["--iters", "30", "--max-test-images", "50", "--opts", "MODEL.ATSS.INFERENCE_TH", "0.3"],
])
def test_resume_refuses_runs_measured_with_other_settings(tmp_path, monkeypatch, capsys, changed):
    """README: "quick: --shots 1 3 --seeds 0 --iters 30 --max-test-images 50". Continuing such a
    quick run's output dir with --resume and the full protocol used to keep the quick runs (30
    iterations, 50 test images) and table them as measured with 200 iterations on all images.
    The command now stops, naming results.json and what differs, before running anything."""
    calls = _fake_runs(monkeypatch)
    out = tmp_path / "out"
    data_efficiency.main(_argv(out, "--iters", "30", "--max-test-images", "50"))
    before = (out / "results.json").read_text()
    calls.clear()
    with pytest.raises(SystemExit) as exc:
        data_efficiency.main(_argv(out, "--resume", *changed))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "results.json" in err and "--resume" in err and "--output-dir" in err
    assert calls == [] and (out / "results.json").read_text() == before


def test_resume_with_the_same_settings_keeps_the_runs(tmp_path, monkeypatch):
    calls = _fake_runs(monkeypatch)
    out = tmp_path / "out"
    argv = _argv(out, "--iters", "30", "--max-test-images", "50")
    data_efficiency.main(argv)
    calls.clear()
    # more seeds and modes with the same measurement settings: only the new runs are run
    data_efficiency.main(argv[:-4] + ["--seeds", "0", "1", "--modes", "prompt", "linear",
                                      "--iters", "30", "--max-test-images", "50", "--resume"])
    assert calls == [("linear", 1, 0, 30), ("prompt", 1, 1, 30), ("linear", 1, 1, 30)]
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 5


def test_resume_with_another_lr_of_a_mode_not_in_the_file_keeps_the_runs(tmp_path, monkeypatch):
    """Only the settings a record was measured with count: --lr of the linear mode does not
    touch the prompt and zero-shot runs already in the file."""
    calls = _fake_runs(monkeypatch)
    out = tmp_path / "out"
    data_efficiency.main(_argv(out, "--iters", "30"))
    calls.clear()
    data_efficiency.main(_argv(out, "--iters", "30", "--lr", "linear=0.01", "--resume"))
    assert calls == []


def test_resume_refuses_a_results_file_without_settings(tmp_path, monkeypatch, capsys):
    """A results.json written before the settings were recorded cannot be checked: it is named,
    with what to do, instead of being mixed into the new table."""
    calls = _fake_runs(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps([
        {"mode": "zero-shot", "shots": 0, "seed": 0, "AP": 1.0, "AP50": 2.0, "iters": 0,
         "train_seconds": 0.0, "trainable_params": 0}]))
    with pytest.raises(SystemExit) as exc:
        data_efficiency.main(_argv(out, "--resume"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "results.json" in err and "settings" in err
    assert calls == []


# ---------------------------------------------------------------- scripts/pseudo_label_quality.py
def _quality_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "scripts", "pseudo_label_quality.py")
    spec = importlib.util.spec_from_file_location("pseudo_label_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _human_and_pseudo(tmp_path, pseudo_image):
    human = {
        "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}],
        "images": [{"id": 1, "file_name": "000000.png"}, {"id": 2, "file_name": "000001.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20]},
        ],
    }
    caption = "a blue square"
    pseudo = {
        "images": [dict(pseudo_image, caption=caption)],
        "annotations": [{"id": 1, "image_id": pseudo_image["id"], "bbox": [50, 50, 20, 20],
                         "score": 0.9, "tokens_positive": [[0, len(caption)]]}],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "human.json").write_text(json.dumps(human))
    (tmp_path / "pseudo.json").write_text(json.dumps(pseudo))
    return str(tmp_path / "pseudo.json"), str(tmp_path / "human.json")


def test_pseudo_label_quality_counts_the_human_boxes_of_the_labelled_images(tmp_path, capsys):
    """The script compares pseudo-labels "against the human boxes of the same images"
    (docs/self_training.md measured the first 150 captions: "these 150 images hold 353 human
    boxes"). A run over part of the images used to be measured against every human box of the
    json (covered 1/3 instead of 1/1), and images were paired by id, which a collection without
    the dataset's ids numbers afresh: here the pseudo image 1 is the human image 2 by file name."""
    module = _quality_module()
    module.main(*_human_and_pseudo(tmp_path, {"id": 1, "file_name": "000001.png"}))
    out = capsys.readouterr().out
    assert "pseudo boxes 1: 1 correct (100.0%); human boxes covered 1/1 (100.0%)" in out


def test_pseudo_label_quality_refuses_an_image_the_human_json_lacks(tmp_path):
    module = _quality_module()
    with pytest.raises(SystemExit, match="not in .*human.json .first: elsewhere.png"):
        module.main(*_human_and_pseudo(tmp_path, {"id": 1, "file_name": "elsewhere.png"}))
