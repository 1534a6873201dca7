"""Issue 15, item 1: no load path runs code from a checkpoint; item 8: atomic checkpoint writes."""

import ast
import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glip_d2.checkpoint import GLIPCheckpointer, convert, load_pickle_weights
from tests.reliability.helpers import fast_tiny_cfg, load_train_net, write_cfg, write_evil_pkl

ROOT = Path(__file__).resolve().parents[2]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    return write_evil_pkl(tmp_path / "model_final.pkl", marker), marker


def test_checkpointer_refuses_a_pkl_payload_and_runs_nothing(evil):
    path, marker = evil
    with pytest.raises(RuntimeError, match=r"refused to unpickle.*references.*--trust-pickle"):
        GLIPCheckpointer(_net()).load(path)
    assert not marker.exists()


def test_resume_from_a_last_checkpoint_naming_a_pkl_runs_nothing(evil, tmp_path):
    path, marker = evil
    (tmp_path / "last_checkpoint").write_text(os.path.basename(path))
    checkpointer = GLIPCheckpointer(_net(), save_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="refused to unpickle"):
        checkpointer.resume_or_load("", resume=True)
    assert not marker.exists()


def test_convert_command_refuses_a_pkl_payload(evil, tmp_path, capsys):
    path, marker = evil
    out = tmp_path / "out.pth"
    assert convert.main([path, str(out)]) == 1
    assert "refused to unpickle" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_predictor_refuses_a_pkl_payload(evil):
    from glip_d2.predictor import GLIPPredictor

    path, marker = evil
    cfg = fast_tiny_cfg()
    cfg.MODEL.WEIGHTS = path
    with pytest.raises(RuntimeError, match="refused to unpickle"):
        GLIPPredictor(cfg)
    assert not marker.exists()


def test_pseudo_label_teacher_refuses_a_pkl_payload(evil, tmp_path):
    from glip_d2 import pseudo_label

    path, marker = evil
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"file_name": "a.png", "caption": "a red circle"}) + "\n")
    cfg_file = write_cfg(fast_tiny_cfg(), tmp_path / "teacher.yaml")
    argv = ["--config-file", cfg_file, "--weights", path, "--input", str(captions),
            "--output-dir", str(tmp_path / "pseudo"), "--no-progress"]
    with pytest.raises(RuntimeError, match="refused to unpickle"):
        pseudo_label.main(argv)
    assert not marker.exists()


def test_train_net_eval_only_refuses_a_pkl_payload(evil, tmp_path):
    train_net = load_train_net()
    path, marker = evil
    cfg = fast_tiny_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg_file = write_cfg(cfg, tmp_path / "eval.yaml")
    from detectron2.engine import default_argument_parser

    args = default_argument_parser().parse_args(
        ["--config-file", cfg_file, "--eval-only", "MODEL.WEIGHTS", path]
    )
    with pytest.raises(RuntimeError, match="refused to unpickle"):
        train_net.main(args)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_model_zoo_pkl_of_numpy_arrays_still_loads(tmp_path, protocol):
    net = _net()
    weights = {k: np.full(tuple(v.shape), i + 0.5, dtype=np.float32)
               for i, (k, v) in enumerate(net.state_dict().items())}
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    GLIPCheckpointer(net).load(str(path))
    for i, (k, v) in enumerate(net.state_dict().items()):
        assert torch.equal(v, torch.full_like(v, i + 0.5)), k
    # the explicit opt-in reads the same file the plain way
    assert set(load_pickle_weights(str(path), trust_pickle=True)["model"]) == set(weights)


def test_a_detectron1_blobs_pkl_goes_through_name_matching(tmp_path):
    """Caffe2-era files ("blobs", C2 names) are matched by Detectron2's heuristics, as before."""
    net = nn.Module()
    net.stem = nn.Module()
    net.stem.conv1 = nn.Conv2d(3, 4, 3, bias=False)  # C2 "conv1_w" is renamed to this
    path = tmp_path / "c2.pkl"
    blobs = {"conv1_w": np.ones((4, 3, 3, 3), np.float32), "conv1_w_momentum": np.zeros(1)}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    GLIPCheckpointer(net).load(str(path))
    assert torch.equal(net.stem.conv1.weight, torch.ones(4, 3, 3, 3))


def _unsafe_loads(tree, rel):
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def guarded_by_opt_in(node):  # inside `if trust_pickle:` (the explicit, documented opt-in)
        while node in parents:
            parent = parents[node]
            if isinstance(parent, ast.If) and "trust_pickle" in ast.unparse(parent.test) \
                    and node in parent.body:
                return True
            node = parent
        return False

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        where = f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}"
        if name == "torch.load":
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if kw.get("weights_only") not in ("True", "not trust_pickle"):
                yield where
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler") \
                and not guarded_by_opt_in(node):
            yield where
        elif name.endswith("DetectionCheckpointer"):
            yield where


def test_no_unrestricted_unpickling_in_the_sources():
    """Every torch.load passes weights_only (True, or the explicit opt-in), every plain pickle
    load sits in an `if trust_pickle` branch, and nothing builds Detectron2's own checkpointer
    (whose .pkl loader is a plain pickle.load)."""
    sources = [ROOT / "train_net.py"] + sorted((ROOT / "glip_d2").rglob("*.py"))
    sources += sorted((ROOT / "tools").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    problems = []
    for path in sources:
        rel = path.relative_to(ROOT)
        problems += list(_unsafe_loads(ast.parse(path.read_text()), rel))
    assert problems == []


def test_a_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    net = _net()
    checkpointer = GLIPCheckpointer(net, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"\x00" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000002")
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000001")  # overwriting: the old file must survive
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good


def test_convert_writes_atomically(tmp_path, monkeypatch):
    src = tmp_path / "in.pth"
    torch.save({"model": _net().state_dict()}, src)
    out = tmp_path / "out.pth"

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"\x00" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert convert.main([str(src), str(out)]) == 1
    assert sorted(os.listdir(tmp_path)) == ["in.pth"]


def test_a_tampered_parse_cache_file_runs_nothing_and_is_parsed_again(tmp_path, parse_cache):
    from glip_d2.data.datasets._utils import _cache_file, cached_parse

    source = tmp_path / "ann.json"
    source.write_text("{}")
    assert cached_parse(str(source), "t", lambda: {"records": [1, 2]}) == {"records": [1, 2]}
    marker = tmp_path / "PWNED"
    write_evil_pkl(_cache_file(str(source), "t"), marker)
    assert cached_parse(str(source), "t", lambda: {"records": [3]}) == {"records": [3]}
    assert not marker.exists()
