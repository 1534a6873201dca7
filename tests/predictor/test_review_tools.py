"""Review of the tools around the library: the GPU benchmark suite's shell logic (driven by a stub
interpreter, no torch), the self-training demo script's paths, and pseudo-labelling resume."""

import os
import shutil
import stat
import subprocess
import time

import pytest

from tests.selftrain_script import run_demo_selftrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "benchmarks", "run_gpu_suite.sh")

needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"
)

# stand-in for python: log the call; "-c" is the suite's CUDA check; a benchmark run sleeps
# $STUB_SLEEP seconds in the same process (a run that takes long on the GPU)
SUITE_STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
if [ "$1" = -c ]; then exit 0; fi
case "$1" in *bench_*) exec sleep "${STUB_SLEEP:-0}" ;; esac
exit 0
"""


def _stub(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _suite(tmp_path, command, env=None, timeout=120):
    folder = tmp_path / "an interpreter folder"  # a path with a space
    folder.mkdir(exist_ok=True)
    stub = _stub(folder / "python", SUITE_STUB)
    log = tmp_path / "calls.log"
    log.write_text("")
    extra, env = env or {}, dict(os.environ)
    env.pop("GPU_SUITE_SECONDS", None)
    env.update(STUB_LOG=str(log), **extra)
    start = time.monotonic()
    proc = subprocess.run(
        command + [SUITE, str(stub)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, log.read_text().splitlines(), time.monotonic() - start


@needs_bash
def test_gpu_suite_takes_an_interpreter_path_with_spaces(tmp_path):
    # `$PY -c ...` unquoted split "/x/an interpreter folder/python" into two words: the CUDA check
    # failed and the suite said the interpreter has no GPU
    proc, calls, _ = _suite(tmp_path, ["bash"])
    assert proc.returncode == 0, proc.stderr
    assert len([c for c in calls if "benchmarks/bench_" in c]) == 11
    assert calls[-1] == "benchmarks/make_table.py"


@needs_bash
def test_gpu_suite_killed_by_its_time_limit_still_rebuilds_the_tables(tmp_path):
    # The README's device command runs the suite under `timeout`; it takes longer than that
    # (about 10 minutes, with torch.compile), so the limit killed it before make_table.py: the
    # README tables were never rebuilt from the runs that had finished.
    proc, calls, took = _suite(tmp_path, ["timeout", "3"], env={"STUB_SLEEP": "1"})
    assert proc.returncode != 0
    assert took < 20
    assert any("benchmarks/bench_" in c for c in calls)
    assert calls[-1] == "benchmarks/make_table.py"


@needs_bash
def test_gpu_suite_keeps_to_gpu_suite_seconds_and_rebuilds_the_tables(tmp_path):
    # GPU_SUITE_SECONDS=N: a run past the budget is stopped, the later ones skipped and named,
    # and the table rebuild (kept 20 s of the budget) still runs, all within N seconds
    proc, calls, took = _suite(
        tmp_path, ["bash"], env={"STUB_SLEEP": "60", "GPU_SUITE_SECONDS": "27"}
    )
    assert took < 27
    assert proc.returncode == 1
    benches = [c for c in calls if "benchmarks/bench_" in c]
    assert len(benches) == 1  # the first one was stopped, the others not started
    assert calls[-1] == "benchmarks/make_table.py"
    assert "GPU_SUITE_SECONDS=27 used up" in proc.stderr
    assert proc.stderr.count("skipped") == 10


@needs_bash
def test_gpu_suite_refuses_a_budget_that_is_not_a_number(tmp_path):
    proc, calls, _ = _suite(tmp_path, ["bash"], env={"GPU_SUITE_SECONDS": "9m"})
    assert proc.returncode == 2 and "GPU_SUITE_SECONDS" in proc.stderr
    assert not [c for c in calls if "benchmarks/" in c]


# ---------------------------------------------------------------- pseudo-labelling resume
from tests.roi.test_pseudo_label import _argv, collection  # noqa: E402,F401  (module fixture)


class _FakeSpacy:
    """spaCy stand-in: the whole caption is one noun chunk (the simple split cuts it at commas)."""

    class _Chunk:
        def __init__(self, start, end):
            self.start_char, self.end_char = start, end

    def __call__(self, text):
        doc = type("Doc", (), {})()
        doc.noun_chunks = [self._Chunk(0, len(text))]
        return doc


@pytest.mark.usefixtures("one_thread")
def test_pseudo_label_shards_with_and_without_spacy_are_not_merged(
    collection, tmp_path, monkeypatch
):
    # --nlp auto was recorded as "auto": a shard on a machine with spaCy and one without (or a
    # resume after installing it) extracted phrases differently and were merged without a word
    import glip_d2.nlp
    from glip_d2.pseudo_label import main

    out = tmp_path / "out"
    argv = _argv(collection, out, "--num-shards", "2")
    argv[argv.index("--nlp") + 1] = "auto"
    monkeypatch.setattr(glip_d2.nlp, "_spacy_pipeline", lambda: _FakeSpacy())
    assert main(argv + ["--shard", "0"]) is None
    monkeypatch.setattr(glip_d2.nlp, "_spacy_pipeline", lambda: None)
    with pytest.raises(ValueError, match="other settings.*nlp_backend.*spacy.*simple"):
        main(argv + ["--shard", "1"])
    assert not (out / "pseudo_labels.json").exists()


# ---------------------------------------------------------------- scripts/demo_selftrain.sh
SCRIPT_STUB = """#!/usr/bin/env bash
echo "$*|${DETECTRON2_DATASETS-unset}" >> "$STUB_LOG"
exit 0
"""


def _selftrain(tmp_path, **env):
    """scripts/demo_selftrain.sh with a stub python that logs its arguments and the datasets root
    it sees, and an existing teacher (nothing installed or trained)."""
    teacher = tmp_path / "teacher.pth"
    teacher.write_text("")
    proc, lines = run_demo_selftrain(tmp_path, SCRIPT_STUB, dict(TEACHER=str(teacher), **env))
    return proc, [line.split("|") for line in lines]


@needs_bash
def test_selftrain_script_expands_a_tilde_in_the_datasets_root_as_python_does(tmp_path):
    # DETECTRON2_DATASETS='~/data' (a Docker ENV, a quoted value): glip_d2 and Detectron2 expand
    # the "~", the script did not, so the pseudo-labeller was given "~/data/shapes/..." files that
    # do not exist (the shapes data were generated under $HOME/data)
    home = tmp_path / "home"
    home.mkdir()
    proc, calls = _selftrain(tmp_path, DETECTRON2_DATASETS="~/data", HOME=str(home))
    assert proc.returncode == 0, proc.stderr
    ((args, root),) = [c for c in calls if "glip_d2.pseudo_label" in c[0]]
    assert root == os.path.join(str(home), "data")  # what every Python process resolves
    assert f"--input {home}/data/shapes/train_captions.jsonl" in args
    assert f"--image-root {home}/data/shapes/train" in args
    assert all(r == root for _, r in calls)


@needs_bash
def test_selftrain_script_takes_an_empty_datasets_root_as_the_default(tmp_path):
    # DETECTRON2_DATASETS="": the script used "datasets/shapes", Python "" (the shapes data under
    # ./shapes): the captions were written to one folder and looked for in the other
    proc, calls = _selftrain(tmp_path, DETECTRON2_DATASETS="")
    assert proc.returncode == 0, proc.stderr
    ((args, root),) = [c for c in calls if "glip_d2.pseudo_label" in c[0]]
    assert root == "datasets" and "--input datasets/shapes/train_captions.jsonl" in args


@pytest.mark.usefixtures("one_thread")
def test_pseudo_label_bad_shard_numbers_are_refused_before_the_run_is_recorded(
    collection, tmp_path, monkeypatch
):
    # --num-shards 0 was written to run.json before the shard was checked: the corrected rerun
    # (--num-shards 2) was then refused as "other settings" until the folder was deleted; and
    # the teacher was built first, only to be thrown away
    from glip_d2.selftrain import pseudo_label

    built = []
    real_build = pseudo_label.build_teacher
    monkeypatch.setattr(pseudo_label, "build_teacher", lambda a: built.append(1) or real_build(a))
    out = tmp_path / "out"
    argv = _argv(collection, out)
    for bad in (["--num-shards", "0"], ["--shard", "2", "--num-shards", "2"], ["--shard", "-1"]):
        with pytest.raises(ValueError, match="0 <= shard < num_shards"):
            pseudo_label.main(argv + bad)
    assert not built and not (out / "run.json").exists()
    assert pseudo_label.main(argv + ["--shard", "1", "--num-shards", "2"]) is None
    assert len(built) == 1


# ---------------------------------------------------------------- glip_d2/data/visualize.py
def test_draw_dataset_dict_labels_a_grounding_mapper_output_by_its_phrases(monkeypatch):
    # GroundingDatasetMapper's output numbers a grounding image's boxes by phrase index
    # (gt_classes) and lists each phrase's spans in "phrase_spans"; the drawing named the boxes
    # thing_classes[phrase index] instead: here the red circle was labelled "blue square"
    import torch
    from detectron2.data import Metadata
    from detectron2.structures import Boxes, Instances

    from glip_d2.data import visualize

    drawn = {}
    monkeypatch.setattr(
        visualize,
        "draw_grounding",
        lambda image, boxes, labels, scale=1.0: drawn.setdefault("labels", labels),
    )
    caption = "a red circle next to a blue square and a blue square"
    inst = Instances((32, 48))
    inst.gt_boxes = Boxes(torch.tensor([[1.0, 1, 9, 9], [20, 2, 30, 12], [2, 20, 8, 30]]))
    inst.gt_classes = torch.tensor([0, 1, 0])
    d = {
        "image": torch.zeros(3, 32, 48, dtype=torch.uint8),
        "caption": caption,
        "phrase_spans": [[[0, 12]], [[21, 34], [39, 52]]],
        "instances": inst,
    }
    visualize.draw_dataset_dict(d, Metadata(thing_classes=["blue square", "red circle"]))
    assert drawn["labels"] == ["a red circle", "a blue square a blue square", "a red circle"]
    drawn.clear()  # a grounding dataset's single class name: no IndexError for phrase 1
    visualize.draw_dataset_dict(d, Metadata(thing_classes=["object"]))
    assert drawn["labels"][1] == "a blue square a blue square"
