"""Review round: data and text defects found in review (each test failed before its fix)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from glip_d2.text import mentions_left_right, swap_left_right

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- left/right swap, Unicode case
@pytest.mark.parametrize(
    "caption, expected",
    [
        ("the r\u0131ght dog", "the left dog"),  # dotless i: re.IGNORECASE matches it
        ("the R\u0130GHT dog", "the LEFT dog"),  # dotted capital I: lower() is six characters
    ],
)
def test_swap_left_right_unicode_case_variants(caption, expected):
    assert mentions_left_right(caption)
    new_caption, spans = swap_left_right(caption, [[(4, 13)], [(0, 3)]])
    assert new_caption == expected
    assert spans == [[(4, 12)], [(0, 3)]]
    assert new_caption[4:12].lower() == "left dog"


# ---------------------------------------------------------------- annotation files are UTF-8
_LOADERS = textwrap.dedent(
    """
    import json, locale, sys
    from glip_d2.data.datasets.coco_json import parse_detection_json
    from glip_d2.data.datasets.mdetr import parse_mdetr_json
    from glip_d2.data.datasets.odvg import parse_odvg_jsonl, read_label_map
    from glip_d2.data.register import _json_thing_classes

    folder = sys.argv[1]
    out = {"encoding": locale.getpreferredencoding(False)}
    odvg = parse_odvg_jsonl(folder + "/a.odvg.jsonl")["records"][0]
    out["odvg"] = [odvg["caption"], odvg["annotations"][0]["tokens_positive"]]
    out["label_map"] = read_label_map(folder + "/labels.json")
    mdetr = parse_mdetr_json(folder + "/mdetr.json")[0]
    out["mdetr"] = [mdetr["caption"], mdetr["annotations"][0]["tokens_positive"]]
    out["coco"] = [n for _, n in parse_detection_json(folder + "/coco.json")["categories"]]
    out["register"] = _json_thing_classes(folder + "/coco.json")[0]
    print(json.dumps(out))
    """
)


def test_json_readers_decode_utf8_whatever_the_locale(tmp_path):
    """JSON is UTF-8 (RFC 8259); under a non-UTF-8 locale the readers used the locale's codec:
    a UnicodeDecodeError (ASCII), or (Latin-1) captions whose character spans point elsewhere."""
    caption = "un caf\u00e9 cr\u00e8me \u00e0 gauche"
    span = [caption.index("cr\u00e8me"), caption.index("cr\u00e8me") + 5]
    odvg = {
        "filename": "a.jpg",
        "height": 4,
        "width": 4,
        "grounding": {
            "caption": caption,
            "regions": [{"bbox": [0, 0, 2, 2], "phrase": "cr\u00e8me", "tokens_positive": [span]}],
        },
    }
    (tmp_path / "a.odvg.jsonl").write_bytes(json.dumps(odvg, ensure_ascii=False).encode() + b"\n")
    (tmp_path / "labels.json").write_bytes('{"0": "th\u00e9i\u00e8re"}'.encode())
    mdetr = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4, "caption": caption}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 2, 2], "tokens_positive": [span]}],
    }
    (tmp_path / "mdetr.json").write_bytes(json.dumps(mdetr, ensure_ascii=False).encode())
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
        "annotations": [],
        "categories": [{"id": 1, "name": "th\u00e9i\u00e8re"}],
    }
    (tmp_path / "coco.json").write_bytes(json.dumps(coco, ensure_ascii=False).encode())
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", GLIP_D2_CACHE_DIR="")
    env.pop("PYTHONUTF8", None)
    result = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", _LOADERS, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if "utf" in out["encoding"].lower().replace("-", ""):
        pytest.skip("this platform gives a UTF-8 locale encoding even under LC_ALL=C")
    assert out["odvg"] == [caption, [span]]
    assert out["mdetr"] == [caption, [span]]
    assert out["label_map"] == ["th\u00e9i\u00e8re"]
    assert out["coco"] == ["th\u00e9i\u00e8re"]
    assert out["register"] == ["th\u00e9i\u00e8re"]


# ---------------------------------------------------------------- integral float sizes
def test_grounding_loaders_take_integral_float_sizes(tmp_path, monkeypatch):
    """COCO-format jsons take ``"height": 4.0`` as 4 (check_int); the MDETR and ODVG loaders
    kept the float, and the record check then refused every record ("not positive integers")."""
    from glip_d2.data.datasets._utils import DatasetFormatError
    from glip_d2.data.datasets.mdetr import load_mdetr_json
    from glip_d2.data.datasets.odvg import load_odvg_jsonl
    from glip_d2.data.validate import check_training_records

    monkeypatch.setenv("GLIP_D2_CACHE_DIR", "")
    (tmp_path / "a.jpg").write_bytes(b"")
    mdetr = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 4.0, "width": 6.0, "caption": "a dog"}
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [0, 0, 2, 2], "tokens_positive": [[2, 5]]}
        ],
    }
    (tmp_path / "mdetr.json").write_text(json.dumps(mdetr))
    odvg = {
        "filename": "a.jpg",
        "height": 4.0,
        "width": 6.0,
        "grounding": {"caption": "a dog", "regions": [{"bbox": [0, 0, 2, 2], "phrase": "dog"}]},
    }
    (tmp_path / "a.odvg.jsonl").write_text(json.dumps(odvg) + "\n")
    for dicts in (
        load_mdetr_json(str(tmp_path / "mdetr.json"), str(tmp_path)),
        load_odvg_jsonl(str(tmp_path / "a.odvg.jsonl"), str(tmp_path)),
    ):
        assert [(d["height"], d["width"]) for d in dicts] == [(4, 6)]
        assert all(type(d["height"]) is int and type(d["width"]) is int for d in dicts)
        assert check_training_records(dicts, "test", level="quick") == dicts

    odvg["height"] = "4"
    (tmp_path / "b.odvg.jsonl").write_text(json.dumps(odvg) + "\n")
    with pytest.raises(DatasetFormatError, match=r"b\.odvg\.jsonl:1: height '4' is not an integer"):
        load_odvg_jsonl(str(tmp_path / "b.odvg.jsonl"), str(tmp_path))


# ---------------------------------------------------------------- "skip" mode, a nested flip
def test_skip_mode_swaps_after_a_flip_it_could_not_leave_out(tmp_path):
    """"skip" only removes top-level T.RandomFlip; a flip inside T.RandomApply still flipped the
    image while the caption kept "left" (the box now on the right)."""
    import cv2
    import numpy as np
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode

    from glip_d2.data.mapper import GroundingDatasetMapper

    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.zeros((32, 48, 3), dtype=np.uint8))
    caption = "the dog on the left"
    record = {
        "file_name": path,
        "height": 32,
        "width": 48,
        "image_id": 1,
        "caption": caption,
        "annotations": [
            {"bbox": [2, 4, 10, 8], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0,
             "tokens_positive": [[4, 7]]}
        ],
    }
    for mode in ("skip", "swap"):
        mapper = GroundingDatasetMapper(
            True,
            augmentations=[T.RandomApply(T.RandomFlip(prob=1.0), prob=1.0)],
            image_format="BGR",
            flip_left_right=mode,
            category_names={0: "dog"},
        )
        out = mapper(record)
        assert out["instances"].gt_boxes.tensor.tolist() == [[36.0, 4.0, 46.0, 12.0]]  # flipped
        assert out["caption"] == "the dog on the right"
        assert out["phrase_spans"] == [[[4, 7]]]


# ---------------------------------------------------------------- resume with a subset sampler
def test_resume_keeps_the_random_subset_of_the_records():
    """RandomSubsetTrainingSampler (DATALOADER.SAMPLER_TRAIN) draws its subset once, from a seed
    shared at start (random unless given): the state kept only the shuffle seed, so a resumed
    run drew from another subset of the records."""
    import itertools

    from detectron2.data.samplers import RandomSubsetTrainingSampler, TrainingSampler

    from glip_d2.data.stream import ResumableTrainLoader

    records = [{"image_id": i, "height": 4, "width": 6} for i in range(40)]

    def loader(seed_subset):
        sampler = RandomSubsetTrainingSampler(40, 0.25, seed_shuffle=3, seed_subset=seed_subset)
        return ResumableTrainLoader(records, sampler, lambda r: dict(r), batch_size=2, seed=5)

    def ids(batches):
        return [[d["image_id"] for d in b] for b in batches]

    reference = ids(itertools.islice(iter(loader(11)), 12))
    assert len({i for b in reference for i in b}) == 10  # a subset of 10 of the 40 records
    first = loader(11)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    resumed = loader(12)  # a new process: another shared random seed for the subset
    resumed.load_state_dict(state)
    assert ids(itertools.islice(iter(resumed), 8)) == reference[4:]

    plain = ResumableTrainLoader(records, TrainingSampler(40, seed=3), dict, batch_size=2, seed=5)
    assert plain.state_dict()["sampler_subset"] is None
    with pytest.raises(ValueError, match="RandomSubsetTrainingSampler"):
        plain.load_state_dict(state)


# ---------------------------------------------------------------- caption collections with a BOM
@pytest.mark.parametrize(
    "name, content",
    [
        ("c.csv", "file_name,caption\na.jpg,un caf\u00e9\n"),
        ("c.jsonl", json.dumps({"file_name": "a.jpg", "caption": "un caf\u00e9"}) + "\n"),
    ],
)
def test_caption_collection_with_a_byte_order_mark(tmp_path, name, content):
    """UTF-8 files saved by spreadsheet programs start with a BOM: the CSV's first column was
    "\\ufefffile_name" (no image path found) and the jsonl's first line was not JSON."""
    from glip_d2.data.datasets.caption_collection import read_caption_collection

    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    records = read_caption_collection(str(path))
    assert [(r.image_id, r.file_name, r.caption) for r in records] == [(0, "a.jpg", "un caf\u00e9")]
