"""Issue 15, item 8: pseudo_label input lines, DATASETS.CUSTOM with a missing json, AMP on CPU."""

import json

import pytest

from glip_d2.selftrain import read_caption_collection
from tests.reliability.helpers import fast_tiny_cfg, load_train_net, write_cfg


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"file_name": "b.png", "caption": "a cat"', r"c\.jsonl:3: not valid JSON"),
        ('["b.png", "a cat"]', r"c\.jsonl:3: a JSON list, not an object"),
        ('{"file_name": "b.png", "caption": "a cat", "id": "seven"}', r"c\.jsonl:3: id 'seven' is not an integer"),
        ('{"file_name": "b.png", "caption": "a cat", "id": 2.5}', r"c\.jsonl:3: id 2.5 is not an integer"),
    ],
)
def test_pseudo_label_input_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    good = json.dumps({"file_name": "a.png", "caption": "a dog", "id": 1})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_caption_collection(str(path))


def test_integer_ids_as_numbers_or_strings_still_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"file_name": "a.png", "caption": "a dog", "id": "4"}\n'
                    '{"file_name": "b.png", "caption": "a cat", "id": 5.0}\n')
    assert [r.image_id for r in read_caption_collection(str(path))] == [4, 5]


@pytest.fixture
def train_net(monkeypatch):
    """train_net.py, its model building made to fail (the checks must come first) and without
    Detectron2's default_setup."""
    module = load_train_net()

    def no_model(cfg):
        raise AssertionError("the model was built before the configuration was checked")

    monkeypatch.setattr(module.Trainer, "build_model", classmethod(lambda cls, cfg: no_model(cfg)))
    monkeypatch.setattr(module, "default_setup", lambda cfg, args: None)  # slow, global loggers
    return module


def test_custom_dataset_with_a_missing_json_is_one_clear_message(train_net, tmp_path, monkeypatch, capsys):
    from glip_d2.data.datasets import register_datasets_from_config

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    cfg = fast_tiny_cfg()
    cfg.DATASETS.CUSTOM = [["rel15_missing_json", "mine/train.json", "mine/images"]]
    expected = (
        "DATASETS.CUSTOM entry ['rel15_missing_json', 'mine/train.json', 'mine/images']: "
        f"{str(tmp_path / 'mine' / 'train.json')!r} does not exist (relative paths are taken "
        f"from the DETECTRON2_DATASETS root, now {str(tmp_path)!r})."
    )
    with pytest.raises(FileNotFoundError) as e:  # before: [Errno 2] from deep in the json loader
        register_datasets_from_config(cfg)
    assert str(e.value) == expected
    argv = ["--config-file", write_cfg(fast_tiny_cfg(), tmp_path / "c.yaml"),
            "DATASETS.CUSTOM", "[['rel15_missing_json', 'mine/train.json', 'mine/images']]",
            "DATASETS.TRAIN", "('rel15_missing_json',)", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train_net.cli(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {expected}\n"  # one line, no traceback


def test_amp_on_cpu_is_refused_before_the_model_is_built(train_net, tmp_path, capsys):
    from glip_d2.engine import check_training_device

    cfg = fast_tiny_cfg()
    cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE = True, "cpu"
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED is True but MODEL.DEVICE is 'cpu'"):
        check_training_device(cfg)
    cfg.SOLVER.AMP.ENABLED = False
    check_training_device(cfg)  # float32 on the CPU is fine
    argv = ["--config-file", write_cfg(fast_tiny_cfg(), tmp_path / "c.yaml"),
            "SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:  # before: AMPTrainer's assert after the model was built
        train_net.cli(argv)
    assert e.value.code == 2
    assert "error: SOLVER.AMP.ENABLED is True but MODEL.DEVICE is 'cpu'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs CUDA"):  # main() itself checks first too
        train_net.main(train_net.argument_parser().parse_args(argv))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config-file", "{tmp}/nope.yaml"], "nope.yaml"),
        (["DATASETS.TRAIN", "('rel15_not_registered',)"], "rel15_not_registered: not registered"),
    ],
)
def test_train_net_command_line_reports_setup_errors_in_one_line(train_net, tmp_path, capsys, args, message):
    argv = ["--config-file", write_cfg(fast_tiny_cfg(), tmp_path / "c.yaml")]
    argv = [a.format(tmp=tmp_path) for a in args] if args[0] == "--config-file" else argv + args
    with pytest.raises(SystemExit) as e:
        train_net.cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_eval_only_without_weights_is_refused_and_needs_no_training_data(train_net, tmp_path, capsys):
    """--eval-only with an empty MODEL.WEIGHTS would evaluate random weights (Detectron2 only logs
    it); and evaluating needs only the test sets, not the config's training data."""
    cfg_file = write_cfg(fast_tiny_cfg(), tmp_path / "c.yaml")
    argv = ["--config-file", cfg_file, "--eval-only", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train_net.cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --eval-only needs weights: set MODEL.WEIGHTS")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last_checkpoint").write_text("model_final.pth")
    resumed = train_net.argument_parser().parse_args(["--resume"] + argv)
    train_net.check_setup(train_net.load_cfg(resumed), resumed)  # a training checkpoint: accepted
    # a training-only entry whose file is absent: refused for training, ignored for evaluation
    missing = ["DATASETS.PSEUDO_LABELS", "[['rel_missing_pseudo', '" + str(tmp_path / "nowhere") + "']]",
               "MODEL.WEIGHTS", "w.pth"]
    with pytest.raises((FileNotFoundError, ValueError)):
        train_net.load_cfg(train_net.argument_parser().parse_args(["--config-file", cfg_file] + missing))
    cfg = train_net.load_cfg(train_net.argument_parser().parse_args(["--config-file", cfg_file, "--eval-only"]
                                                                    + missing))
    assert cfg.DATASETS.PSEUDO_LABELS == [["rel_missing_pseudo", str(tmp_path / "nowhere")]]
