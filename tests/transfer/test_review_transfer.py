"""Review round: few-shot warnings and record checks, the data-efficiency command's arguments,
and downloads from file URLs / into caches where the digest record cannot be written."""
import builtins
import hashlib
import os
import sys

import pytest

from glip_d2 import data_efficiency
from glip_d2.data.few_shot import sample_few_shot
from glip_d2.model_zoo import download, verify_cached
from tests.test_model_zoo import PAYLOAD, server  # noqa: F401  (the local HTTP server fixture)

DOWNLOAD = sys.modules["glip_d2.model_zoo.download"]


def _record(image_id, cats):
    return {"file_name": f"{image_id}.png", "image_id": image_id, "height": 10, "width": 10,
            "annotations": [{"category_id": c, "bbox": [0, 0, 5, 5], "bbox_mode": 1} for c in cats]}


# ---------------------------------------------------------------- few-shot
def test_official_mode_warns_about_categories_with_fewer_than_k_images(caplog):
    """Official mode counts images: a category whose six boxes are all in one image has one
    image, fewer than k = 3, and the log says so (its instance count, 6, is not what k counts)."""
    dicts = [_record(1, [0] * 6)] + [_record(i, [1]) for i in range(2, 8)]
    with caplog.at_level("WARNING", logger="glip_d2.data.few_shot"):
        subset = sample_few_shot(dicts, 3, mode="official")
    assert [d["image_id"] for d in subset] == [1, 2, 3, 4]
    assert "{0: 1}" in caplog.text and "fewer than 3 images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="glip_d2.data.few_shot"):
        sample_few_shot(dicts, 3, mode="instances")  # six instances: enough
    assert "fewer than" not in caplog.text


def test_official_mode_without_image_ids_is_a_clear_error():
    """Official mode orders images by image_id: a record without one (Detectron2 does not
    require it for training) is named in the error, not a bare KeyError."""
    dicts = [_record(1, [0]), _record(2, [1])]
    del dicts[1]["image_id"]
    with pytest.raises(ValueError, match=r"my set.*record 1 .*image_id.*FEW_SHOT_MODE instances"):
        sample_few_shot(dicts, 1, mode="official", source="my set")
    assert len(sample_few_shot(dicts, 1, mode="instances")) == 2  # needs no image ids
    mixed = [_record(1, [0]), _record("b", [1])]
    with pytest.raises(ValueError, match="image_id"):
        sample_few_shot(mixed, 1, mode="official")


# ---------------------------------------------------------------- data-efficiency arguments
@pytest.mark.parametrize("bad", [["--shots", "0"], ["--shots", "3", "-1"], ["--iters", "0"],
                                 ["--seeds", "-1"], ["--batch-size", "0"],
                                 ["--max-test-images", "-5"]])
def test_data_efficiency_refuses_arguments_that_would_mislabel_runs(
        tmp_path, monkeypatch, capsys, bad):
    """--shots 0 (few-shot off: all the data, tabled as "0-shot") or --iters 0 (an untrained
    model tabled as tuned) used to run and write wrong tables; now the command stops first."""
    calls = []
    monkeypatch.setattr(data_efficiency, "run_one", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(data_efficiency, "_base_cfg", lambda args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exc:
        data_efficiency.main(["--config-file", "x.yaml", "--train-dataset", "a",
                              "--test-dataset", "b", "--output-dir", str(tmp_path / "o")] + bad)
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- downloads and the cache
def test_download_from_a_file_url(tmp_path):
    """The docstring's file URL: urllib labels a file of unknown type text/plain, which is not a
    server's error page; the checkpoint is copied and checked."""
    src = tmp_path / "mirror" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(b"\x80\x02checkpoint bytes" * 100)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "weights.pth"
    assert download(src.as_uri(), str(dest), sha, progress=False) == str(dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="sha256"):
        download(src.as_uri(), str(tmp_path / "cache" / "other.pth"), "0" * 64, progress=False)
    assert not (tmp_path / "cache" / "other.pth").exists()


def _no_record_writes(monkeypatch):
    """The cache folder refuses new files (a read-only shared cache): writing <file>.sha256
    fails with PermissionError (root ignores chmod, so the refusal is simulated)."""
    real_open = builtins.open

    def guarded(path, mode="r", *args, **kwargs):
        if str(path).endswith(".sha256") and any(m in mode for m in "wax+"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(DOWNLOAD, "open", guarded, raising=False)


def test_a_verified_file_in_a_read_only_cache_is_usable(tmp_path, monkeypatch, caplog):
    path = tmp_path / "model.pth"
    path.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    _no_record_writes(monkeypatch)
    with caplog.at_level("WARNING", logger="glip_d2.model_zoo"):
        assert verify_cached(str(path), sha) == str(path)
    assert "hashed again" in caplog.text and not os.path.exists(str(path) + ".sha256")
    with pytest.raises(ValueError, match="Delete it"):  # a wrong file is still an error
        verify_cached(str(path), "0" * 64)


def test_a_download_whose_record_cannot_be_written_still_succeeds(server, tmp_path, monkeypatch):
    dest = tmp_path / "cache" / "weights.pth"
    _no_record_writes(monkeypatch)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(server + "weights.pth", str(dest), sha, progress=False) == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(os.listdir(dest.parent)) == ["weights.pth"]  # no temporary file left


def test_results_json_survives_an_interruption_while_it_is_written(tmp_path, monkeypatch):
    """results.json is what --resume continues from: a command stopped while writing it (Ctrl-C,
    a full disk) leaves the previous complete file, not a truncated one that --resume cannot
    read."""
    import json

    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    cfg = add_glip_config(get_cfg())
    monkeypatch.setattr(data_efficiency, "_base_cfg", lambda args: cfg)
    monkeypatch.setattr(data_efficiency, "write_outputs", lambda *a, **k: None)
    monkeypatch.setattr(data_efficiency, "run_one", lambda c, mode, k, seed, *a, **kw: {
        "mode": mode or "zero-shot", "shots": k, "seed": seed, "AP": 1.0, "AP50": 2.0,
        "train_seconds": 0.0, "trainable_params": 1})
    real_dump, calls = json.dump, []

    def dump(obj, f, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second save stops half-way
            f.write(json.dumps(obj)[:20])
            raise KeyboardInterrupt
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", dump)
    out = tmp_path / "out"
    argv = ["--config-file", "x.yaml", "--train-dataset", "a", "--test-dataset", "b",
            "--output-dir", str(out), "--shots", "1", "--seeds", "0", "--modes", "prompt"]
    with pytest.raises(KeyboardInterrupt):
        data_efficiency.main(argv)
    monkeypatch.setattr(json, "dump", real_dump)
    assert [r["mode"] for r in json.loads((out / "results.json").read_text())] == ["zero-shot"]
    data_efficiency.main(argv + ["--resume"])
    records = json.loads((out / "results.json").read_text())
    assert [(r["mode"], r["shots"]) for r in records] == [("zero-shot", 0), ("prompt", 1)]
    assert sorted(os.listdir(out)) == ["results.json"]
