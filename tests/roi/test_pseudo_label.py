"""`python -m glip_d2.pseudo_label` on a few generated shapes images with their captions."""

import csv
import glob
import itertools
import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.shapes import generate_split
from glip_d2.pseudo_label import main, register_pseudo_labels
from glip_d2.selftrain import PartStore, read_caption_collection, shard_records
from tests.helpers import tiny_cfg

NUM_IMAGES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def collection(module_tmp):
    """Shapes images, a jsonl of (file_name, caption), and a tiny GLIP teacher on disk."""
    root = module_tmp("pseudo")
    json_file, image_root = generate_split(
        str(root), "val", num_images=NUM_IMAGES, image_size=128, seed=3
    )
    with open(json_file) as f:
        images = json.load(f)["images"]
    jsonl = root / "captions.jsonl"
    with open(jsonl, "w") as f:
        for im in images:
            f.write(json.dumps({"file_name": im["file_name"], "caption": im["caption"]}) + "\n")
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # an untrained teacher scores about the prior, 0.01
    torch.manual_seed(0)
    weights = root / "teacher.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    config = root / "teacher.yaml"
    config.write_text(cfg.dump())
    return {
        "root": root,
        "jsonl": str(jsonl),
        "image_root": image_root,
        "images": images,
        "config": str(config),
        "weights": str(weights),
    }


def _argv(c, out, *extra):
    return [
        "--config-file",
        c["config"],
        "--weights",
        c["weights"],
        "--input",
        c["jsonl"],
        "--image-root",
        c["image_root"],
        "--output-dir",
        str(out),
        "--score-thresh",
        "0.0",
        "--max-boxes-per-phrase",
        "2",
        "--part-size",
        "2",
        "--nlp",
        "simple",
        "--no-progress",
        *extra,
    ]


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(collection):
    out = collection["root"] / "full"
    summary = main(_argv(collection, out))
    return out, summary


def test_pseudo_label_writes_a_grounding_json(collection, uninterrupted):
    out, summary = uninterrupted
    with open(out / "pseudo_labels.json") as f:
        data = json.load(f)
    assert summary["images"] == NUM_IMAGES == len(data["images"])
    assert summary["boxes"] == len(data["annotations"]) > 0
    assert summary["phrases"] >= NUM_IMAGES  # every shapes caption names at least one object
    assert [im["id"] for im in data["images"]] == list(range(NUM_IMAGES))
    by_id = {im["id"]: im for im in data["images"]}
    per_phrase = {}
    for a in data["annotations"]:
        caption = by_id[a["image_id"]]["caption"]
        ((s, e),) = a["tokens_positive"]
        assert 0 <= s < e <= len(caption) and caption[s:e].strip() == caption[s:e]
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128.01 and y + h <= 128.01
        per_phrase.setdefault((a["image_id"], a["phrase_ids"]), []).append(a["score"])
    assert all(len(v) <= 2 and v == sorted(v, reverse=True) for v in per_phrase.values())
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))


def test_pseudo_label_resumes_an_interrupted_run_with_identical_output(collection, uninterrupted):
    from glip_d2.pseudo_label import build_teacher, parse_args

    out = collection["root"] / "interrupted"
    argv = _argv(collection, out)
    teacher = build_teacher(parse_args(argv))
    calls, fail_at = [], [4]
    real = teacher.__class__.__call__

    class Flaky(teacher.__class__):
        def __call__(self, record, image_root=None):
            calls.append(record.image_id)
            if len(calls) == fail_at[0]:  # killed inside the second part
                raise _Interrupt()
            return real(self, record, image_root)

    teacher.__class__ = Flaky
    with pytest.raises(_Interrupt):
        main(argv, teacher=teacher)
    parts = sorted(os.path.basename(p) for p in glob.glob(str(out / "parts" / "*" / "*")))
    assert parts == ["part000000.json"]  # the unfinished part left nothing behind
    assert (
        not glob.glob(str(out / "parts" / "*" / ".*")) and not (out / "pseudo_labels.json").exists()
    )

    calls.clear()
    fail_at[0] = None
    summary = main(argv, teacher=teacher)
    assert calls == [2, 3, 4, 5]  # finished images are not recomputed
    full, full_summary = uninterrupted
    assert summary == full_summary
    assert (out / "pseudo_labels.json").read_bytes() == (full / "pseudo_labels.json").read_bytes()


def test_pseudo_label_shards_merge_to_the_single_run_output(collection, uninterrupted):
    out = collection["root"] / "sharded"
    assert main(_argv(collection, out, "--shard", "1", "--num-shards", "2")) is None
    assert not (out / "pseudo_labels.json").exists()
    summary = main(_argv(collection, out, "--shard", "0", "--num-shards", "2"))
    full, full_summary = uninterrupted
    assert summary == full_summary
    assert (out / "pseudo_labels.json").read_bytes() == (full / "pseudo_labels.json").read_bytes()


def test_pseudo_label_refuses_to_resume_with_other_settings(collection, uninterrupted):
    full, _ = uninterrupted
    with pytest.raises(ValueError, match="other settings"):
        main(_argv(collection, full, "--score-thresh", "0.3"))


def test_pseudo_labels_register_and_map_as_grounding_data(collection, uninterrupted):
    full, summary = uninterrupted
    name = "pseudo_shapes_test"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_pseudo_labels(name, str(full))
    dicts = DatasetCatalog.get(name)
    assert (
        len(dicts) == NUM_IMAGES and sum(len(d["annotations"]) for d in dicts) == summary["boxes"]
    )
    mapper = GroundingDatasetMapper(
        is_train=True, augmentations=[], image_format="BGR", tokenizer="minilm"
    )
    d = next(d for d in dicts if d["annotations"])
    x = mapper(d)
    assert x["caption"] == d["caption"]
    assert x["instances"].gt_positive_map.any(dim=1).all()
    DatasetCatalog.remove(name)


def test_pseudo_label_odvg_output_registers_like_the_mdetr_json(collection, uninterrupted, tmp_path):
    import shutil

    from detectron2.structures import BoxMode

    full, summary = uninterrupted
    out = tmp_path / "odvg_run"
    shutil.copytree(full, out)
    os.remove(out / "pseudo_labels.json")
    os.remove(out / "summary.json")
    assert main(_argv(collection, out, "--finalize-only", "--format", "odvg")) == summary
    assert not (out / "pseudo_labels.json").exists()
    lines = [json.loads(l) for l in (out / "pseudo_labels.odvg.jsonl").read_text().splitlines()]
    assert [line["filename"] for line in lines] == [im["file_name"] for im in collection["images"]]
    assert sum(len(line["grounding"]["regions"]) for line in lines) == summary["boxes"]
    with open(out / "summary.json") as f:
        assert json.load(f)["image_root"] == collection["image_root"]

    dicts = {}
    for name, folder in (("pseudo_mdetr_cmp", full), ("pseudo_odvg_cmp", out)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        registered = register_pseudo_labels(name, str(folder))
        assert registered.endswith("odvg.jsonl") == (name == "pseudo_odvg_cmp")
        dicts[name] = DatasetCatalog.get(name)
        DatasetCatalog.remove(name)
    for a, b in zip(dicts["pseudo_mdetr_cmp"], dicts["pseudo_odvg_cmp"]):
        assert a["file_name"] == b["file_name"] and a["caption"] == b["caption"]
        assert len(a["annotations"]) == len(b["annotations"])
        for x, y in zip(a["annotations"], b["annotations"]):
            assert x["tokens_positive"] == y["tokens_positive"]
            box = BoxMode.convert(list(x["bbox"]), x["bbox_mode"], BoxMode.XYXY_ABS)
            assert y["bbox"] == pytest.approx(box, abs=1e-4)

    with pytest.raises(SystemExit):
        main(_argv(collection, out, "--finalize-only", "--format", "coco"))


def test_pseudo_labels_register_from_config_next_to_human_data(uninterrupted, tmp_path):
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config
    from glip_d2.data import build_grounding_train_loader
    from glip_d2.data.datasets import register_datasets_from_config

    full, summary = uninterrupted
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.PSEUDO_LABELS = [["pseudo_cfg_test", str(full)]]
    try:
        assert register_datasets_from_config(cfg) == ["pseudo_cfg_test"]
        assert register_datasets_from_config(cfg) == []  # idempotent
        dicts = DatasetCatalog.get("pseudo_cfg_test")
        assert sum(len(d["annotations"]) for d in dicts) == summary["boxes"]
        cfg.DATASETS.PSEUDO_LABELS = [["pseudo_cfg_test", str(tmp_path)]]
        with pytest.raises(ValueError, match="already registered"):
            register_datasets_from_config(cfg)
        cfg.DATASETS.PSEUDO_LABELS = [["only_a_name"]]
        with pytest.raises(ValueError, match=r"\[name, output_dir\]"):
            register_datasets_from_config(cfg)

        # human-labelled data (50 images) next to the pseudo-labels (6), drawn 1:3
        human = [
            {"file_name": f"human_{i}.png", "image_id": i, "height": 8, "width": 8,
             "caption": "a cat", "annotations": []}
            for i in range(50)
        ]
        DatasetCatalog.register("pseudo_cfg_human_test", lambda: human)
        cfg.DATASETS.PSEUDO_LABELS = []
        cfg.DATASETS.TRAIN = ("pseudo_cfg_human_test", "pseudo_cfg_test")
        cfg.DATASETS.TRAIN_RATIOS = (1, 3)
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
        cfg.SOLVER.IMS_PER_BATCH = 8
        cfg.SEED = 0
        cfg.DATASETS.CHECK_RECORDS = "none"  # the records name no real image files
        loader = build_grounding_train_loader(cfg, mapper=lambda d: d["file_name"])
        files = [f for b in itertools.islice(iter(loader), 25) for f in b]
        pseudo = {d["file_name"] for d in dicts}
        assert sum(f in pseudo for f in files) / len(files) == pytest.approx(0.75, abs=0.08)
    finally:
        for name in ("pseudo_cfg_test", "pseudo_cfg_human_test"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)


def test_pseudo_collection_reads_csv_and_shards_round_robin(tmp_path):
    path = tmp_path / "c.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i in range(5):
            w.writerow([f"im{i}.png", f"a cat {i}"])
    records = read_caption_collection(str(path))
    assert [r.image_id for r in records] == [0, 1, 2, 3, 4] and records[2].file_name == "im2.png"
    assert [r.image_id for r in shard_records(records, 1, 2)] == [1, 3]
    assert [len(c) for c in PartStore(str(tmp_path), part_size=2).chunks(records)] == [2, 2, 1]
    with pytest.raises(ValueError, match="caption"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"file_name": "x.png"}) + "\n")
        read_caption_collection(str(bad))


def test_pseudo_two_stage_teacher_grounds_phrases(collection):
    """A LanguageAwareRCNN teacher takes the same caption + phrase_spans inputs as GLIP."""
    import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401
    from glip_d2.selftrain import GroundingTeacher
    from tests.roi.roi_helpers import two_stage_cfg

    torch.manual_seed(0)
    model = build_model(two_stage_cfg("focal"))
    teacher = GroundingTeacher(model, min_size=128, max_size=128, score_thresh=0.0,
                               max_boxes_per_phrase=1, nlp_backend="simple")
    record = read_caption_collection(collection["jsonl"])[0]
    result = teacher(record, collection["image_root"])
    assert result["height"] == result["width"] == 128 and result["caption"] == record.caption
    assert len(result["phrases"]) >= 1
    assert sorted(b["phrase"] for b in result["boxes"]) == list(range(len(result["phrases"])))


def test_pseudo_label_warns_when_the_teacher_scores_phrases_by_their_weakest_token(caplog):
    """MIN suits class names, not noun phrases with articles: the demo GLIP grounded 9 % of the
    shapes phrases with it. The CLI says so and names the override."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config, add_two_stage_config
    from glip_d2.selftrain.pseudo_label import warn_on_weakest_token_scores

    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    assert not warn_on_weakest_token_scores(cfg)  # MEAN by default: silent
    for key in ("ATSS", "LANGUAGE_ROI_HEADS"):
        c = cfg.clone()
        getattr(c.MODEL, key).SCORE_AGG = "MIN"
        caplog.clear()
        with caplog.at_level("WARNING", logger="glip_d2"):
            assert warn_on_weakest_token_scores(c)
        assert f"MODEL.{key}.SCORE_AGG MEAN" in caplog.text


def _ema_checkpoint(collection, path):
    """The collection's teacher with an EMA entry that differs from its raw weights."""
    raw = torch.load(collection["weights"], weights_only=True)["model"]
    ema = {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    torch.save({"model": raw, "ema": ema}, path)
    return raw, ema


def test_pseudo_label_teacher_runs_the_weights_eval_only_evaluates(collection, tmp_path):
    """With TEST.USE_EMA the teacher is the checkpoint's EMA, as `train_net.py --eval-only`
    evaluates it (build_teacher read the raw weights only); without, the raw weights."""
    from glip_d2.pseudo_label import build_teacher, parse_args

    ckpt = tmp_path / "ema.pth"
    raw, ema = _ema_checkpoint(collection, ckpt)
    key = "head.scorer.bias0"
    for use_ema, weights, expected in (("True", "ema", ema), ("False", "model", raw)):
        argv = _argv(collection, tmp_path / "out", "--weights", str(ckpt), "TEST.USE_EMA", use_ema)
        teacher = build_teacher(parse_args(argv))
        assert torch.equal(teacher.model.state_dict()[key], expected[key])
        assert teacher.weights == weights


def test_pseudo_label_refuses_to_resume_with_other_teacher_weights(collection, tmp_path):
    """run.json records which weights the teacher ran: a rerun whose checkpoint now has an EMA
    (same arguments, so the other settings agree) would label with another model."""
    jsonl = tmp_path / "one.jsonl"
    with open(collection["jsonl"]) as f:
        jsonl.write_text(f.readline())
    ckpt, out = tmp_path / "teacher.pth", tmp_path / "out"
    raw = torch.load(collection["weights"], weights_only=True)["model"]
    torch.save({"model": raw}, ckpt)
    argv = _argv(dict(collection, jsonl=str(jsonl)), out, "--weights", str(ckpt),
                 "TEST.USE_EMA", "True")
    assert main(argv)["images"] == 1
    with open(out / "run.json") as f:
        assert json.load(f)["teacher_weights"] == "model"
    _ema_checkpoint(collection, ckpt)
    with pytest.raises(ValueError, match="other settings.*teacher_weights"):
        main(argv)


def test_pseudo_label_lowers_the_teachers_own_score_threshold(collection, tmp_path, caplog):
    """--score-thresh below ROI_HEADS.SCORE_THRESH_TEST (ATSS.INFERENCE_TH) kept nothing more:
    the model dropped the boxes first. build_teacher lowers the model's thresholds."""
    import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401
    from glip_d2.pseudo_label import build_teacher, parse_args
    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg("focal")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05  # an untrained model scores below it
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 128
    config = tmp_path / "two_stage.yaml"
    config.write_text(cfg.dump())
    argv = ["--config-file", str(config), "--input", collection["jsonl"], "--output-dir",
            str(tmp_path / "out"), "--score-thresh", "0.0", "--max-boxes-per-phrase", "0",
            "--nlp", "simple"]
    torch.manual_seed(0)
    teacher = build_teacher(parse_args(argv))
    assert teacher.model.roi_heads.box_predictor.test_score_thresh == 0.0
    record = read_caption_collection(collection["jsonl"])[0]
    scores = [b["score"] for b in teacher(record, collection["image_root"])["boxes"]]
    assert scores and min(scores) < 0.05

    # a teacher built around a model with the higher threshold says so
    from glip_d2.selftrain import GroundingTeacher

    with caplog.at_level("WARNING", logger="glip_d2"):
        GroundingTeacher(build_model(cfg), score_thresh=0.0, nlp_backend="simple")
    assert "MODEL.ROI_HEADS.SCORE_THRESH_TEST" in caplog.text

    # GLIP filters the label probability p, its score is sqrt(p x centerness): p >= s^2
    from glip_d2.selftrain.pseudo_label import lower_test_thresholds

    cfg.MODEL.ATSS.INFERENCE_TH = 0.05
    changed = lower_test_thresholds(cfg, 0.2)
    assert list(changed) == ["MODEL.ATSS.INFERENCE_TH"]
    assert changed["MODEL.ATSS.INFERENCE_TH"] == pytest.approx((0.05, 0.04))
    assert cfg.MODEL.ATSS.INFERENCE_TH == pytest.approx(0.04)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05  # never raised
    assert lower_test_thresholds(cfg, 0.5) == {}  # 0.25 and 0.5: above both, nothing to lower


def test_pseudo_label_records_a_relative_image_root_as_an_absolute_path(
    collection, uninterrupted, tmp_path, monkeypatch
):
    """A relative --image-root was recorded as given, so a student trained from another folder
    looked for the images there."""
    import shutil

    out = tmp_path / "relative_root"
    shutil.copytree(uninterrupted[0], out)
    os.remove(out / "summary.json")
    monkeypatch.chdir(collection["root"])
    argv = _argv(collection, out, "--finalize-only")
    argv[argv.index("--image-root") + 1] = os.path.relpath(collection["image_root"])
    assert not os.path.isabs(argv[argv.index("--image-root") + 1])
    main(argv)
    monkeypatch.chdir(tmp_path)
    with open(out / "summary.json") as f:
        assert json.load(f)["image_root"] == collection["image_root"]
    name = "pseudo_relative_root"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_pseudo_labels(name, str(out))
    first = DatasetCatalog.get(name)[0]["file_name"]
    DatasetCatalog.remove(name)
    assert os.path.isabs(first) and os.path.exists(first)
