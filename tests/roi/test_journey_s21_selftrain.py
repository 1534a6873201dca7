"""Self-training and RegionCLIP misuse found by a user journey: empty collections, an edited
collection on resume, wrong CLIP teacher folders, concept files, spatial concepts, the convert
step's projection width and its ``python -m`` warning."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg

from glip_d2.data.datasets.caption_collection import CaptionRecord, read_caption_collection
from glip_d2.selftrain import PartStore
from tests.helpers import save_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def clip_dir(module_tmp):
    return save_tiny_clip(str(module_tmp("s21_clip")), ["cat", "dog", "red", "circle"])


@pytest.mark.parametrize(
    "name, text", [("c.jsonl", ""), ("c.jsonl", "\n\n"), ("c.csv", "file_name,caption\n")]
)
def test_an_empty_collection_is_refused_before_any_work(tmp_path, name, text):
    """An empty dump made a 'finished' run of 0 images (and a concept pool error about
    CONCEPT_FILE for RegionCLIP) instead of naming the empty file."""
    from glip_d2.pseudo_label import main

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{name} holds no image-caption record"):
        read_caption_collection(str(path))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="holds no image-caption record"):
        main(["--config-file", "nothing.yaml", "--input", str(path), "--output-dir", str(out)])
    assert not out.exists()  # refused before the teacher, the run's settings or any part


def _records(captions):
    return [CaptionRecord(i, f"{i:06d}.png", c) for i, c in enumerate(captions)]


def _labelled(chunk):
    return [{"id": r.image_id, "file_name": r.file_name, "caption": r.caption} for r in chunk]


def test_resume_on_an_edited_collection_names_the_record_that_changed(tmp_path):
    store = PartStore(str(tmp_path), part_size=2)
    records = _records(["a cat", "a dog", "a red circle"])
    for k, chunk in enumerate(store.chunks(records)):
        store.write_part(0, k, chunk, _labelled(chunk))

    edited = _records(["a cat", "two dogs", "a red circle"])
    with pytest.raises(ValueError, match=r"part000000.json was computed .*\(image 2 of the part, "
                                         r"id 1: caption 'a dog' then, 'two dogs' now\)"):
        store.is_done(0, 0, store.chunks(edited)[0])
    moved = [records[0], CaptionRecord(1, "elsewhere/000001.png", "a dog"), records[2]]
    with pytest.raises(ValueError, match=r"file_name '000001.png' then, 'elsewhere/000001.png'"):
        store.is_done(0, 0, store.chunks(moved)[0])
    grown = records + _records(["a"] * 4)[3:]
    with pytest.raises(ValueError, match=r"the part labelled 1 images, the collection now puts 2"):
        store.is_done(0, 1, store.chunks(grown)[1])
    assert store.is_done(0, 0, store.chunks(records)[0])  # unchanged: resumed


def test_a_teacher_folder_without_a_complete_clip_is_refused(clip_dir, tmp_path):
    """A BERT folder loaded as CLIPModel with a warning and every weight random: the run went on
    with a random teacher. A folder without tokenizer failed with a bare TypeError."""
    import shutil

    from safetensors.torch import load_file, save_file

    from glip_d2.regionclip import CLIPRegionTeacher
    from glip_d2.text import packaged_model_dir

    assert CLIPRegionTeacher.from_pretrained(clip_dir).embed_dim == 16
    with pytest.raises(ValueError, match=r"TEACHER_PATH .* holds a 'bert' model, not a CLIP"):
        CLIPRegionTeacher.from_pretrained(str(packaged_model_dir()))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"TEACHER_PATH .*empty' has no config.json"):
        CLIPRegionTeacher.from_pretrained(str(empty))

    partial = tmp_path / "partial"
    shutil.copytree(clip_dir, partial)
    weights = load_file(str(partial / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")},
              str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"its weights lack \d+ tensors .*vision_model"):
        CLIPRegionTeacher.from_pretrained(str(partial))
    os.remove(partial / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"the CLIP model cannot be loaded"):
        CLIPRegionTeacher.from_pretrained(str(partial))

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(clip_dir, name), no_tokenizer / name)
    with pytest.raises(FileNotFoundError, match=r"has a CLIP model but no tokenizer that loads"):
        CLIPRegionTeacher.from_pretrained(str(no_tokenizer))


def _regionclip_cfg(concept_file):
    from glip_d2 import add_glip_config

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.MODEL.REGIONCLIP.CONCEPT_FILE = concept_file
    return cfg


def test_concept_file_errors_name_the_file(tmp_path):
    from glip_d2.regionclip.pretrainer import _concepts_from_config

    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"CONCEPT_FILE '.*nope.txt' does not exist"):
        _concepts_from_config(_regionclip_cfg(missing))

    path = tmp_path / "concepts.txt"
    path.write_text("\n# a comment\n   \n")
    with pytest.raises(ValueError, match=r"concept pool is empty \(MODEL.REGIONCLIP.CONCEPT_FILE "
                                         r"'.*concepts.txt'\)"):
        _concepts_from_config(_regionclip_cfg(str(path)))

    # CLIP's tokenizer lower-cases and collapses spaces: these are one concept twice
    path.write_text("Red circle\n\ndog\nred  circle\n")
    with pytest.raises(ValueError, match=r"concepts.txt'\) repeats \['Red circle'\], spelled "
                                         r"\[\['Red circle', 'red  circle'\]\]"):
        _concepts_from_config(_regionclip_cfg(str(path)))

    path.write_text("red circle\n\n\ndog\n")  # blank lines are skipped
    assert _concepts_from_config(_regionclip_cfg(str(path))) == ["red circle", "dog"]


def test_spatial_relation_nouns_are_not_concepts():
    """spaCy makes 'the right' of 'to the right of' a noun chunk: 'right' was the second most
    frequent concept of the shapes captions, while the simple split cuts the relation."""
    from glip_d2.nlp import resolve_backend
    from glip_d2.regionclip import build_concept_pool, extract_concepts

    captions = [
        "a green cross to the right of a red circle",
        "a blue star to the left of a red circle, in front of a dog",
        "a cat on top of a red top",
    ]
    backends = ["simple"] + (["spacy"] if resolve_backend("auto") == "spacy" else [])
    for backend in backends:
        pool = build_concept_pool(captions, backend=backend)
        assert pool[0] == "red circle" and not {"left", "right", "front", "top"} & set(pool), (
            backend, pool)
        assert "red top" in extract_concepts(captions[2], backend)  # a "top" that is a thing


def test_convert_says_how_to_keep_the_students_projection():
    """The shipped detector's EMBED_DIM (256) is not CLIP's projection_dim (512 for ViT-B/32):
    the projection was skipped, reported only as '2 skipped for shape'."""
    from detectron2.modeling import build_model

    import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401
    from glip_d2.regionclip.convert import projection_hint, regionclip_to_detector_state_dict
    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    fc_dim = cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    student = {"region_proj.weight": torch.zeros(16, fc_dim), "region_proj.bias": torch.zeros(16)}
    for embed_dim, expected in ((cfg.MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM, "EMBED_DIM 16 here"),
                                (16, None)):
        cfg.MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM = embed_dim
        detector = build_model(cfg)
        _, report = regionclip_to_detector_state_dict(student, detector)
        hint = projection_hint(student, detector, report)
        if expected is None:
            assert hint is None and "roi_heads.box_predictor.region_proj.weight" in report["loaded"]
        else:
            assert expected in hint and f"the detector's {embed_dim} " in hint


def test_convert_runs_as_a_module_without_a_runpy_warning():
    """The package imported `convert`, so `python -m glip_d2.regionclip.convert` warned
    "found in sys.modules ... may result in unpredictable behaviour" on every run."""
    proc = subprocess.run(
        [sys.executable, "-m", "glip_d2.regionclip.convert", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0 and "--detector-config" in proc.stdout, proc.stderr
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
    from glip_d2.regionclip import init_detector_from_regionclip  # still importable from here

    assert init_detector_from_regionclip.__module__ == "glip_d2.regionclip.convert"
