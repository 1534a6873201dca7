"""Review of self-training and RegionCLIP inputs: the demo script's teacher and pseudo-label
paths, the pseudo-labelling run's recorded output format, the teacher's box selection, and the
concept file's comment lines."""

import ast
import json
import os
import shutil

import pytest

from tests.selftrain_script import run_demo_selftrain


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# ---------------------------------------------------------------- scripts/demo_selftrain.sh
# stand-in for python and for the teacher's training script: one line per call, its arguments
# separated by \x1f (so a path with spaces or quotes comes back as it was given)
STUB = """#!/usr/bin/env bash
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf '\\x1f%s' "$a"; done; echo; } \
  >> "$STUB_LOG"
exit 0
"""


def _selftrain(tmp_path, **env):
    """scripts/demo_selftrain.sh with python and the teacher-training script stubs that log
    their arguments (nothing installed or trained). Returns (process, [argument list per call])."""
    proc, lines = run_demo_selftrain(tmp_path, STUB, env, teacher_train_stub=STUB)
    return proc, [line.split("\x1f") for line in lines]


@needs_bash
def test_selftrain_script_refuses_a_missing_teacher_it_was_given_before_any_work(tmp_path):
    # TEACHER=<a checkpoint that is not there>: the script trained the demo teacher into the
    # checkpoint's folder (as model_final.pth, not the file named), wrote the caption collection,
    # and only then the pseudo-labeller failed on the missing file (or, for a TEACHER named
    # model_final.pth, silently labelled with a freshly trained demo model instead of it)
    missing = tmp_path / "teachers" / "my_teacher.pth"
    proc, calls = _selftrain(tmp_path, TEACHER=str(missing))
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "TEACHER" in proc.stderr
    assert calls == []  # no training, no python process started


@needs_bash
def test_selftrain_script_still_trains_the_default_teacher_when_it_is_missing(tmp_path):
    proc, calls = _selftrain(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == ["demo_two_stage.sh"]
    assert any("glip_d2.pseudo_label" in c for c in calls)


@needs_bash
def test_selftrain_script_passes_a_pseudo_path_with_quotes_to_the_student_intact(tmp_path):
    # PSEUDO with a ' (or a backslash) broke the yacs list "[['shapes_train_pseudo', '$PSEUDO']]":
    # yacs kept the unparsable text as a string and the student's config was refused (or, with a
    # backslash, the path was read with an escape sequence in it)
    teacher = tmp_path / "teacher.pth"
    teacher.write_text("")
    pseudo = str(tmp_path / "it's a \\new run")
    proc, calls = _selftrain(tmp_path, TEACHER=str(teacher), PSEUDO=pseudo)
    assert proc.returncode == 0, proc.stderr
    (student,) = [c for c in calls if "train_net.py" in c]
    value = student[student.index("DATASETS.PSEUDO_LABELS") + 1]
    assert ast.literal_eval(value) == [["shapes_train_pseudo", pseudo]]
    (labeller,) = [c for c in calls if "glip_d2.pseudo_label" in c]
    assert labeller[labeller.index("--output-dir") + 1] == pseudo


# ---------------------------------------------------------------- python -m glip_d2.pseudo_label
from tests.roi.test_pseudo_label import _argv, collection  # noqa: E402,F401  (module fixture)


@pytest.mark.usefixtures("one_thread")
def test_pseudo_label_refuses_a_shard_with_another_format_and_finalizes_in_the_runs(
    collection, tmp_path
):
    # --format was no setting of the run: shard 0 with odvg, shard 1 (finishing last) with the
    # default mdetr wrote only pseudo_labels.json, and --finalize-only without --format wrote the
    # MDETR json of an ODVG run
    from glip_d2.pseudo_label import main

    out = tmp_path / "out"
    argv = _argv(collection, out, "--num-shards", "2")
    assert main(argv + ["--shard", "0", "--format", "odvg"]) is None
    with open(out / "run.json") as f:
        assert json.load(f)["output_format"] == "odvg"
    with pytest.raises(ValueError, match="other settings.*output_format.*--finalize-only"):
        main(argv + ["--shard", "1"])
    summary = main(argv + ["--shard", "1", "--format", "odvg"])
    assert summary["images"] == len(collection["images"])
    assert (out / "pseudo_labels.odvg.jsonl").exists() and not (out / "pseudo_labels.json").exists()
    (out / "pseudo_labels.odvg.jsonl").unlink()
    assert main(argv + ["--finalize-only"]) == summary  # the run's format
    assert (out / "pseudo_labels.odvg.jsonl").exists() and not (out / "pseudo_labels.json").exists()
    # another format of the finished parts, asked for: written beside it (the same labels)
    assert main(argv + ["--finalize-only", "--format", "mdetr"]) == summary
    assert (out / "pseudo_labels.json").exists()


# ---------------------------------------------------------------- RegionCLIP concept files
def test_concept_file_keeps_its_comment_lines_out_and_refuses_concepts_that_would_not_read_back(
    tmp_path,
):
    # read_concept_file skips '#' lines (comments, as its docstring says), but write_concept_file
    # wrote any concept: "#1 hit" (or one with a line break, or blank) came back dropped or split,
    # so the pool (the region classes) read back was not the pool written
    from glip_d2.regionclip import read_concept_file, write_concept_file

    path = tmp_path / "concepts.txt"
    path.write_text("# mined from CC3M\ncat\n  # an indented comment\n\ndog house\n")
    assert read_concept_file(str(path)) == ["cat", "dog house"]
    write_concept_file(str(path), ["cat", "dog house", "c# code"])
    assert read_concept_file(str(path)) == ["cat", "dog house", "c# code"]
    for bad in ("#1 hit", " #tag", "two\nlines", "", "  ", " padded "):
        with pytest.raises(ValueError, match="concept"):
            write_concept_file(str(path), ["cat", bad])
        assert read_concept_file(str(path)) == ["cat", "dog house", "c# code"]  # not rewritten


# ---------------------------------------------------------------- RegionCLIP losses, several processes
@pytest.mark.usefixtures("one_thread")
def test_regionclip_reports_the_same_losses_on_every_process(monkeypatch):
    # loss_image_text was left out of a batch without a captioned image: with several processes
    # (caption data mixed with detection data) one rank reported it and another not, and
    # Detectron2's metric averaging on rank 0 (all_metrics_dict[0]'s keys looked up in every
    # rank's dict) failed with a KeyError
    from detectron2.utils.events import EventStorage

    import glip_d2.regionclip.pretrainer as pretrainer
    from tests.roi.test_regionclip_inputs import _inputs, _student

    monkeypatch.setattr(pretrainer.comm, "get_world_size", lambda: 2)
    student = _student()
    with EventStorage():
        captioned = student(_inputs(["a cat on a sofa", "a dog"]))
        plain = student(_inputs([None, None]))
    assert set(plain) == set(captioned)
    assert plain["loss_image_text"].item() == 0.0 and captioned["loss_image_text"].item() > 0
    sum(plain.values()).backward()  # a zero in the graph, no error
    assert student.region_proj.weight.grad.abs().sum() > 0


def _without(argv, option):
    i = argv.index(option)
    return argv[:i] + argv[i + 2 :]


@pytest.mark.usefixtures("one_thread")
def test_pseudo_label_image_root_is_the_runs_for_every_shard_and_the_finalize(
    collection, tmp_path
):
    # the image root was no setting of the run: shard 1 run with another --image-root labelled
    # other images of the same names into the same merge, and --finalize-only without
    # --image-root recorded the collection's folder, where the student looked for the images
    from glip_d2.pseudo_label import main

    out = tmp_path / "out"
    argv = _argv(collection, out, "--num-shards", "2")
    other = tmp_path / "elsewhere"
    shutil.copytree(collection["image_root"], other)  # images of the same names
    assert main(argv + ["--shard", "0"]) is None
    moved = list(argv)
    moved[moved.index("--image-root") + 1] = str(other)
    with pytest.raises(ValueError, match="other settings.*image_root"):
        main(moved + ["--shard", "1"])
    summary = main(argv + ["--shard", "1"])
    (out / "pseudo_labels.json").unlink()
    assert os.path.dirname(collection["jsonl"]) != collection["image_root"]
    assert main(_without(argv, "--image-root") + ["--finalize-only"]) == summary
    for name in ("summary.json", "pseudo_labels.json"):
        with open(out / name) as f:
            info = json.load(f)
        assert (info if name == "summary.json" else info["info"])["image_root"] == collection[
            "image_root"
        ]
    # a root given to --finalize-only is the one written (the images moved since the run)
    assert main(argv[:] + ["--finalize-only"]) == summary
    assert main(moved + ["--finalize-only"]) == summary
    with open(out / "summary.json") as f:
        assert json.load(f)["image_root"] == str(other)


@pytest.mark.parametrize("thresh", ["-0.5", "1.5", "nan"])
def test_pseudo_label_refuses_a_score_thresh_outside_0_1_before_the_teacher(
    thresh, tmp_path, monkeypatch
):
    # scores are in [0, 1]: -0.5 was squared into ATSS.INFERENCE_TH 0.25 (the teacher dropped the
    # boxes a "keep everything" threshold asked for), 1.5 labelled the whole collection to keep
    # nothing
    assert_refused_before_the_teacher(monkeypatch, tmp_path, ["--score-thresh", thresh], "--score-thresh")


def assert_refused_before_the_teacher(monkeypatch, tmp_path, extra_args, match):
    """python -m glip_d2.pseudo_label with ``extra_args`` stops with a ValueError matching
    ``match`` before any teacher is built or output written."""
    import glip_d2.selftrain.pseudo_label as pl

    built = []
    monkeypatch.setattr(pl, "build_teacher", lambda args: built.append(args))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"file_name": "a.png", "caption": "a cat"}\n')
    argv = ["--config-file", "x.yaml", "--input", str(jsonl), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=match):
        pl.main(argv + list(extra_args))
    assert not built and not (tmp_path / "o").exists()


@pytest.mark.usefixtures("one_thread")
def test_pseudo_label_refuses_a_shard_whose_teacher_config_was_edited(collection, tmp_path):
    # run.json recorded the config file's path, not what it says: shard 1 run after the file was
    # edited (another NMS, test size or score aggregation) labelled its images with another
    # teacher, and the merge mixed both
    from glip_d2.pseudo_label import main

    config = tmp_path / "teacher.yaml"
    shutil.copy(collection["config"], config)
    out = tmp_path / "out"
    argv = _argv(collection, out, "--num-shards", "2")
    argv[argv.index("--config-file") + 1] = str(config)
    assert main(argv + ["--shard", "0"]) is None
    text = config.read_text()
    assert "    NMS_TH: 0.6\n" in text
    config.write_text(text.replace("    NMS_TH: 0.6\n", "    NMS_TH: 0.3\n"))
    with pytest.raises(ValueError, match="other settings.*teacher_config_sha256"):
        main(argv + ["--shard", "1"])
    config.write_text(text)  # the teacher's config back: the run goes on
    assert main(argv + ["--shard", "1"])["images"] == len(collection["images"])
