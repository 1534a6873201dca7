"""`python -m glip_d2.demo`, run in-process on tiny generated images with a tiny random model."""

import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from glip_d2 import demo
from glip_d2.nlp import find_noun_phrases
from glip_d2.vocabularies import COCO_CATEGORY_IDS
from tests.helpers import tiny_cfg

NAMES = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def setup(module_tmp):
    """A config file, its checkpoint, a checkpoint of another variant, and a folder of images
    (good, unusual and broken ones)."""
    root = module_tmp("demo")
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # a random model scores below the default 0.05
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 3
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 112
    cfg.MODEL.DYHEAD.NUM_CONVS = 1  # one fusion block: fast tests
    model = build_model(cfg)
    sd = model.state_dict()
    torch.save({"model": sd}, root / "model.pth")
    wrong = dict(sd, **{"backbone.bottom_up.patch_embed.proj.weight": torch.zeros(48, 3, 4, 4)})
    torch.save({"model": wrong}, root / "other_variant.pth")
    (root / "tiny.yaml").write_text(cfg.dump())

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "a_rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(images / "b_gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(images / "c_rgba.png")
    Image.fromarray((rgb[:, :, 1].astype(np.uint16) * 257)).save(images / "d_sixteen.png")
    Image.fromarray(rgb[:1, :1]).save(images / "e_one_pixel.png")
    Image.fromarray(rgb).save(images / "f_photo.jpg")
    data = (images / "a_rgb.png").read_bytes()
    (images / "g_truncated.png").write_bytes(data[: len(data) // 2])
    (images / "h_broken.jpg").write_bytes(b"this is not a jpeg")
    (images / "notes.txt").write_text("not an image: ignored")
    return {
        "root": root,
        "config": str(root / "tiny.yaml"),
        "weights": str(root / "model.pth"),
        "wrong": str(root / "other_variant.pth"),
        "images": images,
        "rgb": rgb,
    }


def _run(setup, *args, weights=None):
    argv = [
        "--config-file",
        setup["config"],
        *args,
        "--opts",
        "MODEL.WEIGHTS",
        weights or setup["weights"],
    ]
    return demo.main(argv)


def test_directory_with_unusual_and_broken_images(setup, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _run(
        setup,
        "--input",
        str(setup["images"]),
        "--output",
        str(out),
        "--vocabulary",
        "custom",
        "--custom-vocabulary",
        " red circle, blue square,",
        "--confidence-threshold",
        "0",
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "g_truncated.png: cannot be decoded, the file is truncated or corrupt" in err
    assert "h_broken.jpg: not an image file" in err
    assert "b_gray.png: grayscale image (mode L): copied to 3 channels" in err
    assert "c_rgba.png: image with transparency (mode RGBA): alpha channel ignored" in err
    assert "d_sixteen.png: high bit depth grayscale image (mode I;16" in err
    assert "e_one_pixel.png: tiny image (1x1 pixels)" in err
    assert "glip_d2 demo" in err and "notes.txt" not in err  # the progress bar; non-images ignored
    good = ["a_rgb", "b_gray", "c_rgba", "d_sixteen", "e_one_pixel", "f_photo"]
    assert sorted(os.listdir(out)) == sorted([g + ".png" for g in good] + ["detections.json"])
    # drawings of small images are scaled up (x8 here) so labels can be read
    assert Image.open(out / "a_rgb.png").size == (480, 320)
    assert Image.open(out / "e_one_pixel.png").size == (8, 8)
    results = json.loads((out / "detections.json").read_text())
    by_file = {}
    for r in results:
        assert set(r) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        assert (
            r["category_name"] in NAMES and r["category_id"] == NAMES.index(r["category_name"]) + 1
        )
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and 0 <= r["score"] <= 1
        by_file.setdefault(os.path.basename(r["file_name"]), set()).add(r["image_id"])
    assert sorted(by_file) == sorted(g + (".jpg" if g == "f_photo" else ".png") for g in good)
    assert all(len(ids) == 1 for ids in by_file.values())
    assert len(results) == 3 * len(good)  # DETECTIONS_PER_IMG, nothing filtered at threshold 0


def test_caption_grounding_with_a_glob_and_a_file(setup, tmp_path, capsys):
    out = tmp_path / "out"
    caption = "a red circle and a blue square"
    rc = _run(
        setup,
        "--input",
        str(setup["images"] / "a_*.png"),
        str(setup["images"] / "f_photo.jpg"),
        str(setup["images"] / "a_rgb.png"),
        "--caption",
        caption,
        "--output",
        str(out),
        "--confidence-threshold",
        "0",
    )
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "detections.json").read_text())
    phrases = [p.text for p in find_noun_phrases(caption)]
    assert {r["image_id"] for r in results} == {1, 2}  # a_rgb.png once, though given twice
    assert all(r["phrase"] == r["category_name"] and r["phrase"] in phrases for r in results)
    assert sorted(os.listdir(out)) == ["a_rgb.png", "detections.json", "f_photo.png"]


def test_coco_vocabulary_uses_coco_category_ids_and_the_default_threshold(setup, capsys):
    rc = _run(setup, "--input", str(setup["images"] / "a_rgb.png"), "--vocabulary", "coco")
    err = capsys.readouterr().err
    assert rc == 0 and "a_rgb.png: 0 detections" in err  # random weights score below 0.3
    cfg = tiny_cfg()
    assert demo._category_ids({"vocabulary": "coco"}, 80, cfg) == list(COCO_CATEGORY_IDS)
    assert demo._category_ids({"vocabulary": None}, 3, cfg) == [1, 2, 3]  # MODEL.GLIP.VOCABULARY
    # the config's test dataset: its json ids
    cfg.MODEL.GLIP.VOCABULARY, cfg.DATASETS.TEST = [], ("shapes_val",)
    meta = MetadataCatalog.get("shapes_val")
    expected = [
        next(d for d, c in meta.thing_dataset_id_to_contiguous_id.items() if c == k)
        for k in range(25)
    ]
    assert demo._category_ids({"vocabulary": None}, 25, cfg) == expected


def test_exit_status_is_nonzero_only_when_no_image_was_processed(setup, capsys):
    rc = _run(
        setup,
        "--input",
        str(setup["images"] / "g_truncated.png"),
        str(setup["root"] / "missing.png"),
        str(setup["root"] / "*.webp"),
        "--vocabulary",
        "coco",
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "missing.png: no such file" in err and "*.webp: the pattern matches no file" in err
    assert "error: no image could be processed" in err


def test_checkpoint_of_another_variant_is_a_clear_error(setup, capsys):
    rc = _run(setup, "--input", str(setup["images"] / "a_rgb.png"), weights=setup["wrong"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "checkpoint is a custom GLIP (Swin embed dim 48" in err
    assert "config builds a custom GLIP (Swin embed dim 32" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--vocabulary", "custom"], "--vocabulary custom needs --custom-vocabulary"),
        (["--caption", "a cat", "--vocabulary", "coco"], "do not combine it with --vocabulary"),
        (["--phrases", "a cat"], "--phrases needs --caption"),
        (["--custom-vocabulary", " , "], "--custom-vocabulary gave no name"),
        (["--confidence-threshold", "2"], r"must lie in \[0, 1\]"),
        (["--vocabulary", "voc"], "invalid choice: 'voc'"),
    ],
)
def test_argument_errors(setup, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", setup["config"], "--input", "x.png", *args])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_config_and_bad_query_are_reported(setup, capsys):
    assert demo.main(["--config-file", "nope.yaml", "--input", str(setup["images"])]) == 2
    assert "Config file 'nope.yaml' does not exist" in capsys.readouterr().err
    rc = _run(
        setup,
        "--input",
        str(setup["images"] / "a_rgb.png"),
        "--caption",
        "a cat",
        "--phrases",
        "dog",
    )
    assert rc == 2 and "Phrase 'dog' is not in the caption 'a cat'" in capsys.readouterr().err


def test_read_image_file(setup, tmp_path):
    images = setup["images"]
    rgb, notes = demo.read_image_file(str(images / "a_rgb.png"))
    assert notes == [] and rgb.dtype == np.uint8 and np.array_equal(rgb, setup["rgb"])
    sixteen, notes = demo.read_image_file(str(images / "d_sixteen.png"))
    assert np.array_equal(sixteen[:, :, 2], setup["rgb"][:, :, 1]) and "16-bit PNG" in notes[0]
    gray, _ = demo.read_image_file(str(images / "b_gray.png"))
    assert gray.shape == (40, 60, 3) and (gray == setup["rgb"][:, :, :1]).all()
    rgba, _ = demo.read_image_file(str(images / "c_rgba.png"))
    assert np.array_equal(rgba, setup["rgb"])
    pal = tmp_path / "pal.png"
    Image.fromarray(setup["rgb"]).convert("P").save(pal)
    assert demo.read_image_file(str(pal))[0].shape == (40, 60, 3)
    for path, message in [
        (tmp_path / "none.png", "no such file"),
        (tmp_path, "not a file"),
        (images / "g_truncated.png", "truncated or corrupt"),
        (images / "h_broken.jpg", "not an image file"),
    ]:
        with pytest.raises(demo.ImageReadError, match=message):
            demo.read_image_file(str(path))


def test_collect_inputs(setup, tmp_path):
    images = setup["images"]
    paths, errors = demo.collect_inputs([str(images), str(images / "a_rgb.png"), str(tmp_path)])
    assert [os.path.basename(p) for p in paths] == [
        "a_rgb.png",
        "b_gray.png",
        "c_rgba.png",
        "d_sixteen.png",
        "e_one_pixel.png",
        "f_photo.jpg",
        "g_truncated.png",
        "h_broken.jpg",
    ]
    assert errors == [
        f"{tmp_path}: the directory has no image files ({', '.join(demo.IMAGE_EXTENSIONS)})"
    ]


def test_output_that_would_overwrite_an_input_is_refused(setup, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    original = (setup["images"] / "a_rgb.png").read_bytes()
    (folder / "a_rgb.png").write_bytes(original)
    (folder / "photo.jpg").write_bytes((setup["images"] / "f_photo.jpg").read_bytes())
    link = tmp_path / "link"
    link.symlink_to(folder)
    # the drawing of a_rgb.png (a_rgb.png) would replace it: the folder itself, or through a link
    for output in (folder, link):
        rc = _run(setup, "--input", str(folder), "--output", str(output), "--vocabulary", "coco")
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"--output {str(output)!r} would overwrite the input" in err and "a_rgb.png" in err
        assert "choose another --output folder" in err
        assert (folder / "a_rgb.png").read_bytes() == original
        assert sorted(os.listdir(folder)) == ["a_rgb.png", "photo.jpg"]
    # a drawing beside its (non-PNG) input is fine
    rc = _run(setup, "--input", str(folder / "photo.jpg"), "--output", str(folder))
    assert rc == 0, capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["a_rgb.png", "detections.json", "photo.jpg", "photo.png"]


def test_opts_key_without_value_is_reported(setup, capsys):
    argv = ["--config-file", setup["config"], "--input", str(setup["images"] / "a_rgb.png")]
    assert demo.main(argv + ["--opts", "MODEL.WEIGHTS"]) == 2
    err = capsys.readouterr().err
    assert "--opts takes KEY VALUE pairs, but 'MODEL.WEIGHTS' has no value" in err
    assert "Traceback" not in err


def test_file_names_with_glob_characters_are_files(setup, tmp_path):
    for name in ("photo[1].png", "what?.png", "star*.png"):
        (tmp_path / name).write_bytes((setup["images"] / "a_rgb.png").read_bytes())
    (tmp_path / "photo1.png").write_bytes(b"")  # what the glob "photo[1].png" would match
    names = [str(tmp_path / n) for n in ("photo[1].png", "what?.png", "star*.png")]
    assert demo.collect_inputs(names) == (names, [])
    # a pattern that names no file is still a glob
    paths, errors = demo.collect_inputs([str(tmp_path / "photo?.png")])
    assert paths == [str(tmp_path / "photo1.png")] and errors == []


def test_float_image_files_are_scaled_by_their_range(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)).save(path)
    rgb, notes = demo.read_image_file(path)
    assert rgb[:, :, 0].tolist() == [[0, 64], [128, 255]]  # x 255, not clipped to 0 / 1
    assert notes[0] == (
        "floating-point grayscale image (mode F): scaled to 8 bits by its range (0..1 -> x255, "
        "0..255 kept, else min..max -> 0..255) and copied to 3 channels"
    )
