"""Resume and merge correctness of sharded pseudo-labelling (glip_d2/selftrain)."""

import json

import pytest
import torch

from glip_d2.pseudo_label import main
from tests.roi.test_pseudo_label import _argv, collection  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_teacher_retrained_at_the_same_path_is_refused_by_the_next_shard(collection, tmp_path):
    """run.json recorded the weights' path (and raw vs EMA) only: shard 1 run after the
    checkpoint at that path was replaced by a retrained one labelled its images with another
    teacher, and the merge mixed both."""
    ckpt, out = tmp_path / "teacher.pth", tmp_path / "out"
    raw = torch.load(collection["weights"], weights_only=True)["model"]
    torch.save({"model": raw}, ckpt)
    argv = _argv(collection, out, "--weights", str(ckpt), "--num-shards", "2")
    assert main(argv + ["--shard", "0"]) is None  # shard 1 still to do
    with open(out / "run.json") as f:
        assert len(json.load(f)["teacher_weights_sha256"]) == 64
    retrained = {k: v + 0.25 if v.is_floating_point() else v for k, v in raw.items()}
    torch.save({"model": retrained}, ckpt)  # same path, same raw/EMA choice, new weights
    with pytest.raises(ValueError, match="other settings.*teacher_weights_sha256"):
        main(argv + ["--shard", "1"])
    assert not (out / "pseudo_labels.json").exists()
    torch.save({"model": raw}, ckpt)  # the original teacher back: the run goes on
    assert main(argv + ["--shard", "1"])["images"] == len(collection["images"])


def _without(argv, option):
    i = argv.index(option)
    return argv[:i] + argv[i + 2 :]


def test_finalize_only_reads_the_runs_part_size_and_refuses_another(collection, tmp_path):
    """--finalize-only with the default --part-size (64) looked for parts of 64 images in a run
    made with 2: the first part's fingerprint differed and the error said the input changed."""
    out = tmp_path / "out"
    argv = _argv(collection, out)  # --part-size 2
    summary = main(argv)
    with open(out / "pseudo_labels.json") as f:
        merged = json.load(f)
    (out / "pseudo_labels.json").unlink()
    assert main(_without(argv, "--part-size") + ["--finalize-only"]) == summary
    with open(out / "pseudo_labels.json") as f:
        assert json.load(f) == merged
    with pytest.raises(ValueError, match="--part-size 3.*made with 2"):
        main(_without(argv, "--part-size") + ["--finalize-only", "--part-size", "3"])


def test_shards_started_together_cannot_record_different_settings(tmp_path, monkeypatch):
    """Two shards that both find no run.json (started at the same time) both wrote theirs with a
    rename: the last one silently replaced the first's, and both ran with their own settings."""
    from glip_d2.selftrain import PartStore
    from glip_d2.selftrain import parts as parts_module

    PartStore(str(tmp_path)).check_settings({"score_thresh": 0.5})
    real_exists = parts_module.os.path.exists
    monkeypatch.setattr(  # the second shard checked before the first one wrote
        parts_module.os.path,
        "exists",
        lambda p: False if str(p).endswith("run.json") else real_exists(p),
    )
    with pytest.raises(ValueError, match="other settings.*score_thresh"):
        PartStore(str(tmp_path)).check_settings({"score_thresh": 0.3})
    PartStore(str(tmp_path)).check_settings({"score_thresh": 0.5})  # the same ones: fine
    monkeypatch.undo()
    with open(tmp_path / "run.json") as f:
        assert json.load(f)["score_thresh"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
