"""Second review of the engine, train_net's command line and the diagnostics in tools/."""

import importlib
import math

import pytest
import torch
from detectron2.config import get_cfg

from glip_d2 import add_glip_config
from glip_d2.engine import build_glip_lr_scheduler
from tests.reliability.helpers import fast_tiny_cfg, load_train_net, write_cfg


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def _official_lr(it, base_lr, warmup_iters, warmup_factor, method, steps, gamma=0.1):
    """Official GLIP's WarmupMultiStepLR at iteration ``it`` (its ``last_epoch``)."""
    factor = 1.0
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor = warmup_factor if method == "constant" else warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** sum(s <= it for s in steps)


@pytest.mark.parametrize(
    "max_iter, warmup_iters, method", [(2_000_000, 2000, "constant"), (1_200_000, 3000, "linear")]
)
def test_warmup_ends_on_its_iteration_in_runs_of_millions(max_iter, warmup_iters, method):
    """Beyond a million iterations fvcore's 1e-6 ended the warmup an iteration early: the last
    warmup iteration ran at the full LR (1000x with a constant warmup)."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 1e-4, max_iter
    cfg.SOLVER.STEPS = (int(0.67 * max_iter), int(0.89 * max_iter))
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_METHOD = (
        warmup_iters,
        1e-3,
        method,
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = build_glip_lr_scheduler(cfg, optimizer)
    for it in (
        0,
        1,
        warmup_iters - 2,
        warmup_iters - 1,
        warmup_iters,
        warmup_iters + 1,
        cfg.SOLVER.STEPS[0] - 1,
        cfg.SOLVER.STEPS[0],
    ):
        scheduler.last_epoch = it - 1
        scheduler.step()  # the LR of iteration `it`
        expected = _official_lr(it, 1e-4, warmup_iters, 1e-3, method, cfg.SOLVER.STEPS)
        assert math.isclose(optimizer.param_groups[0]["lr"], expected, rel_tol=1e-9), it


@pytest.fixture
def cli(train_net, monkeypatch, capsys):
    """train_net.cli on argv: (exit code, stderr); fails if it would start processes."""

    def no_launch(*args, **kwargs):
        raise AssertionError("train_net launched its processes")

    monkeypatch.setattr(train_net, "launch", no_launch)
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: None)

    def run(argv):
        with pytest.raises(SystemExit) as e:
            train_net.cli(argv)
        return e.value.code, capsys.readouterr().err

    return run


def test_misspelt_keys_and_bad_yaml_are_one_line_errors_before_launch(cli, tmp_path):
    """A misspelt key in the config file (yacs KeyError) or in the overrides (yacs
    AssertionError), overrides of odd length and a yaml syntax error were tracebacks (exit 1);
    they are configuration errors, one message and exit 2 like a type mismatch."""
    good = write_cfg(fast_tiny_cfg(), tmp_path / "good.yaml")
    text = (tmp_path / "good.yaml").read_text()
    assert "SOLVER:\n" in text
    (tmp_path / "typo.yaml").write_text(text.replace("SOLVER:\n", "SOLVER:\n  BASE_LRR: 0.1\n", 1))
    (tmp_path / "broken.yaml").write_text("MODEL: [1,\n")
    cases = [
        (["--config-file", str(tmp_path / "typo.yaml")], ["typo.yaml", "SOLVER.BASE_LRR"]),
        (["--config-file", str(tmp_path / "broken.yaml")], ["broken.yaml"]),
        (
            ["--config-file", good, "SOLVER.BASE_LRR", "0.1"],
            ["SOLVER.BASE_LRR", "Non-existent key"],
        ),
        (["--config-file", good, "SOLVER.BASE_LR"], ["SOLVER.BASE_LR", "odd length"]),
    ]
    for argv, words in cases:
        code, err = cli(argv)
        assert code == 2 and err.startswith("error: "), (argv, err)
        assert "Traceback" not in err and all(w in err for w in words), (argv, err)


def test_a_device_this_machine_lacks_is_refused_before_launch(cli, tmp_path, monkeypatch):
    """MODEL.DEVICE cuda without CUDA (AMP off) stopped each process when the model was moved to
    the GPU; more --num-gpus than GPUs stopped each process in Detectron2's launch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg_file = write_cfg(fast_tiny_cfg(), tmp_path / "c.yaml")
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    for argv in (
        ["--config-file", cfg_file, "MODEL.DEVICE", "cuda"] + out,
        ["--config-file", cfg_file, "--num-gpus", "2", "MODEL.DEVICE", "cuda"] + out,
        ["--config-file", cfg_file, "--eval-only", "MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", "w.pth"]
        + out,
    ):
        code, err = cli(argv)
        assert code == 2 and err == (
            "error: MODEL.DEVICE is 'cuda', but CUDA is not available here. Set MODEL.DEVICE cpu "
            "(and SOLVER.AMP.ENABLED False to train) to run on the CPU.\n"
        ), (argv, err)
    code, err = cli(["--config-file", cfg_file, "MODEL.DEVICE", "gpu"] + out)
    assert code == 2 and err.startswith("error: MODEL.DEVICE 'gpu' is not a torch device")
    # with CUDA: as many processes as GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, err = cli(["--config-file", cfg_file, "--num-gpus", "4", "MODEL.DEVICE", "cuda"] + out)
    assert code == 2 and err.startswith("error: --num-gpus 4, but this machine has 2 GPU(s)")
    code, err = cli(["--config-file", cfg_file, "MODEL.DEVICE", "cuda:2"] + out)
    assert code == 2 and err.startswith(
        "error: MODEL.DEVICE is 'cuda:2', but this machine has 2 GPU(s)"
    )


@pytest.fixture
def tools_module(monkeypatch):
    """Import a script of tools/ as it runs (tools/ on sys.path)."""
    monkeypatch.syspath_prepend("tools")

    def load(name):
        return importlib.import_module(name)

    return load


def test_loss_gradients_runs_with_a_frozen_backbone(tools_module, monkeypatch, capsys):
    """With MODEL.GLIP.FREEZE_BACKBONE (or a tuning mode that freezes it) the FPN features need no
    gradient and tools/loss_gradients.py stopped with "One of the differentiated Tensors does not
    require grad"; the norms are what each loss asks of those features, as with a trained one."""
    import json

    from detectron2.modeling import build_model

    from tests.helpers import make_input, tiny_cfg

    tool = tools_module("loss_gradients")
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.FREEZE_BACKBONE = True
    torch.manual_seed(0)
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    batch = [make_input(model, "red circle. blue square.", [[10, 20, 90, 100]], [(0, 10)])]
    monkeypatch.setattr(tool, "load_cpu_model", lambda *a, **k: (cfg, model))
    monkeypatch.setattr(tool, "GroundingDatasetMapper", lambda *a, **k: None)
    monkeypatch.setattr(tool, "build_grounding_train_loader", lambda *a, **k: [batch])
    monkeypatch.setattr(
        "sys.argv", ["loss_gradients.py", "--config-file", "unused.yaml", "--batches", "1"]
    )
    tool.main()
    norms = json.loads(capsys.readouterr().out)
    for loss in ("loss_cls", "loss_box_reg", "loss_centerness"):
        assert norms[f"fpn/{loss}"] > 0 and norms[f"tower/{loss}"] > 0, norms
        assert math.isfinite(norms[f"value/{loss}"])


class _Parsed(Exception):
    """Raised where a tool starts its work: its arguments were accepted."""


def _raise_parsed(*args, **kwargs):
    raise _Parsed()


@pytest.mark.parametrize(
    "name, argv, message",
    [
        (
            "name_accuracy",
            ["--num-images", "0"],
            "argument --num-images: must be at least 1, got 0",
        ),
        (
            "name_accuracy",
            ["--num-images", "-5"],
            "argument --num-images: must be at least 1, got -5",
        ),
        ("name_accuracy", ["--batch", "0"], "argument --batch: must be at least 1, got 0"),
        ("loss_gradients", ["--batches", "0"], "argument --batches: must be at least 1, got 0"),
        ("visualize_shapes", ["--num", "-1"], "argument --num: must be above 0, got -1"),
        ("visualize_shapes", ["--cols", "0"], "argument --cols: must be above 0, got 0"),
        ("visualize_shapes", ["--scale", "0"], "argument --scale: must be above 0, got 0.0"),
    ],
)
def test_tools_refuse_counts_below_one_before_any_work(
    tools_module, monkeypatch, capsys, name, argv, message
):
    """A count of 0 stopped the tools with a traceback after loading the model or the data
    (ZeroDivisionError, max() of nothing, torch.cat of nothing); a negative one, as a slice end,
    silently dropped images. argparse refuses them (exit 2) with the argument's name."""
    tool = tools_module(name)
    if name == "visualize_shapes":
        monkeypatch.setattr(
            tool, "DatasetCatalog", type("Catalog", (), {"get": staticmethod(_raise_parsed)})
        )
    else:
        monkeypatch.setattr(tool, "load_cpu_model", _raise_parsed)
    config = [] if name == "visualize_shapes" else ["--config-file", "unused.yaml"]
    monkeypatch.setattr("sys.argv", [f"{name}.py"] + config + argv)
    with pytest.raises(SystemExit) as e:
        tool.main()
    assert e.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", [f"{name}.py"] + config)  # the defaults are accepted
    with pytest.raises(_Parsed):
        tool.main()


def test_visualize_shapes_refuses_a_split_without_images(tools_module, monkeypatch, capsys):
    """An empty split stopped with "max() arg is an empty sequence"."""
    tool = tools_module("visualize_shapes")
    monkeypatch.setattr(
        tool, "DatasetCatalog", type("Catalog", (), {"get": staticmethod(lambda name: [])})
    )
    monkeypatch.setattr("sys.argv", ["visualize_shapes.py", "--split", "empty_split"])
    with pytest.raises(SystemExit) as e:
        tool.main()
    assert (
        e.value.code == 2
        and "dataset 'empty_split' has no images to draw" in capsys.readouterr().err
    )


def _official_weight_decays(steps, gamma, ratio, wd, iterations):
    """Official trainer.py: after each iteration's scheduler.step(), at most one drop, for the
    next milestone whose ratio the run has reached."""
    target, out = 0, {}
    for n in range(1, iterations + 1):  # scheduler.last_epoch after iteration n
        nxt = steps[target] if target < len(steps) else float("inf")
        if n >= nxt * ratio:
            wd *= gamma
            target += 1
        out[n] = wd
    return out


@pytest.mark.parametrize("steps, ratio", [((3, 4), 0.667), ((300, 450), 0.667), ((5, 6, 9), 0.5)])
def test_weight_decay_drops_once_per_step_as_official_when_thresholds_meet(steps, ratio):
    """Two LR steps whose 0.667 falls in one iteration (3 x 0.667 = 2.001 and 4 x 0.667 = 2.668:
    both after the 3rd) dropped the weight decay once (a set of iterations); official drops
    once per step, the second at the next iteration."""
    from types import SimpleNamespace

    from glip_d2.engine import WeightDecaySchedule

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], weight_decay=0.01)
    hook = WeightDecaySchedule(optimizer, steps, gamma=0.1, ratio=ratio)
    hook.trainer = SimpleNamespace(iter=0)
    expected = _official_weight_decays(steps, 0.1, ratio, 0.01, 2 * max(steps))
    for it in range(2 * max(steps)):
        hook.trainer.iter = it
        hook.after_step()
        assert math.isclose(
            optimizer.param_groups[0]["weight_decay"], expected[it + 1], rel_tol=1e-9
        ), (it + 1)


def test_tools_register_the_configs_own_datasets(tools_module, monkeypatch, tmp_path):
    """A DATASETS.CUSTOM entry of the config was never registered by tools/ (train_net.py
    registers it), so loss_gradients' training loader and name_accuracy's --dataset stopped
    with "not registered"."""
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog

    tool = tools_module("name_accuracy")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "red circle"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    cfg = fast_tiny_cfg()
    name = "review_engine2_tool_custom"
    cfg.DATASETS.CUSTOM = [[name, str(tmp_path / "train.json"), str(tmp_path)]]
    cfg_file = write_cfg(cfg, tmp_path / "c.yaml")
    monkeypatch.setattr(tool, "build_model", lambda cfg: torch.nn.Linear(1, 1))
    try:
        got, _ = tool.load_cpu_model(cfg_file, [], "")
        assert got.DATASETS.CUSTOM == [[name, str(tmp_path / "train.json"), str(tmp_path)]]
        assert [d["file_name"] for d in DatasetCatalog.get(name)] == [str(tmp_path / "a.png")]
    finally:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
