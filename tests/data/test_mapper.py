"""GroundingDatasetMapper on a tiny in-memory dataset of generated images."""

import random
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from glip_d2.config import add_glip_config
from glip_d2.data.mapper import GroundingDatasetMapper
from glip_d2.text import load_tokenizer
from tests.conftest import forget

H, W = 32, 48
CAPTION = "a dog on the left of a red ball"  # tokens: [CLS] a dog on the left of a red ball [SEP]
DOG, BALL = [0, 5], [21, 31]
NAMES = {0: "dog", 1: "cat", 2: "traffic_light", 3: "ball"}


@pytest.fixture(scope="module")
def image_file(module_tmp):
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    path = str(module_tmp("images") / "img.png")
    cv2.imwrite(path, image)
    return path, image


def _box(x, y, w, h, **extra):
    return {"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0, **extra}


def _grounding_dict(path, caption=CAPTION):
    return {
        "file_name": path,
        "height": H,
        "width": W,
        "image_id": 7,
        "caption": caption,
        "annotations": [
            _box(2, 4, 10, 8, tokens_positive=[DOG]),
            _box(5, 5, 4, 4, tokens_positive=[DOG], iscrowd=1),  # crowd: dropped in training
            _box(20, 10, 0, 5, tokens_positive=[BALL]),  # empty box: filtered with its spans
            _box(30, 6, 12, 12, tokens_positive=[BALL]),
        ],
    }


def _detection_dict(path, annotations=None):
    annos = [_box(2, 4, 10, 8, category_id=2), _box(30, 6, 12, 12, category_id=0)]
    return {
        "file_name": path,
        "height": H,
        "width": W,
        "image_id": 8,
        "annotations": annos if annotations is None else annotations,
    }


def _mapper(is_train=True, augmentations=(), **kwargs):
    kwargs.setdefault("category_names", NAMES)
    return GroundingDatasetMapper(
        is_train,
        augmentations=[T.Resize((2 * H, 2 * W)), *augmentations],
        image_format="BGR",
        **kwargs,
    )


def _rows(positive_map):
    return [row.nonzero().flatten().tolist() for row in positive_map]


def test_grounding_training_sample(image_file):
    path, image = image_file
    original = _grounding_dict(path)
    out = _mapper()(original)
    assert original == _grounding_dict(path)  # input untouched (deep copy)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 2 * H, 2 * W)
    resized = T.ResizeTransform(H, W, 2 * H, 2 * W).apply_image(image)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), resized)
    inst = out["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[4, 8, 24, 24], [60, 12, 84, 36]]
    assert inst.gt_classes.tolist() == [0, 1]  # phrase indices
    assert inst.gt_positive_map.dtype == torch.bool and inst.gt_positive_map.shape == (2, 256)
    assert _rows(inst.gt_positive_map) == [[1, 2], [7, 8, 9]]
    assert out["caption"] == CAPTION and out["phrase_spans"] == [[DOG], [BALL]]


def test_flip_swaps_left_and_right_and_moves_spans(image_file):
    path, _ = image_file
    out = _mapper(augmentations=[T.RandomFlip(prob=1.0)])(_grounding_dict(path))
    assert out["caption"] == "a dog on the right of a red ball"
    assert [out["caption"][s:e] for (s, e), in out["phrase_spans"]] == ["a dog", "a red ball"]
    assert out["phrase_spans"][1] == [[22, 32]]
    inst = out["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[72, 8, 92, 24], [12, 12, 36, 36]]
    assert _rows(inst.gt_positive_map) == [[1, 2], [7, 8, 9]]


def test_flip_skip_mode(image_file):
    path, image = image_file
    mapper = _mapper(augmentations=[T.RandomFlip(prob=1.0)], flip_left_right="skip")
    out = mapper(_grounding_dict(path))  # mentions "left": not flipped
    assert out["caption"] == CAPTION
    assert out["instances"].gt_boxes.tensor.tolist()[0] == [4, 8, 24, 24]
    out = mapper(_grounding_dict(path, caption="a dog near a cat and a red ball"))
    assert out["instances"].gt_boxes.tensor.tolist()[0] == [72, 8, 92, 24]  # flipped
    with pytest.raises(ValueError, match="'sideways' is not one of"):
        _mapper(flip_left_right="sideways")


def test_detection_sample_gets_a_training_prompt(image_file):
    path, _ = image_file
    random.seed(0)
    mapper = _mapper(num_negatives=1)
    tokenizer = load_tokenizer("bert-base-uncased")
    for _ in range(3):
        out = mapper(_detection_dict(path))
        caption = out["caption"]
        assert caption.count(". ") == 2  # 2 positives + 1 negative
        assert "dog" in caption and "traffic light" in caption
        inst = out["instances"]
        assert inst.gt_classes.tolist() == [2, 0]
        tokens = tokenizer(caption).tokens()
        rows = _rows(inst.gt_positive_map)
        assert [tokens[i] for i in rows[0]] == ["traffic", "light"]
        assert [tokens[i] for i in rows[1]] == ["dog"]


def test_empty_image_and_crowd_only_give_no_instances(image_file):
    path, _ = image_file
    for annos in ([], [_box(2, 4, 10, 8, category_id=1, iscrowd=1)]):
        out = _mapper()(_detection_dict(path, annos))
        assert len(out["instances"]) == 0
        assert out["instances"].gt_positive_map.shape == (0, 256)
        assert out["caption"]  # negatives only
    out = _mapper()({**_grounding_dict(path), "annotations": []})
    assert len(out["instances"]) == 0 and out["caption"] == CAPTION


def test_span_outside_caption_names_the_image(image_file):
    path, _ = image_file
    bad = _grounding_dict(path)
    bad["annotations"][0]["tokens_positive"] = [[25, 40]]
    with pytest.raises(ValueError, match=r"\[25, 40\) of image 7 lies outside its caption"):
        _mapper()(bad)


def test_spans_past_the_token_limit_are_dropped(image_file):
    path, _ = image_file
    caption = "a dog " + "and more words " * 10 + "a red ball"
    d = _grounding_dict(path, caption)
    d["annotations"] = [
        d["annotations"][0],
        _box(30, 6, 12, 12, tokens_positive=[[len(caption) - 10, len(caption)]]),
    ]
    out = _mapper(max_query_len=16)(d)
    assert len(out["instances"]) == 1 and _rows(out["instances"].gt_positive_map) == [[1, 2]]
    assert out["instances"].gt_positive_map.shape == (1, 16)


def test_inference_keeps_caption_only_for_grounding(image_file):
    path, _ = image_file
    mapper = _mapper(is_train=False)
    out = mapper(_grounding_dict(path))
    assert out["caption"] == CAPTION and out["phrase_spans"] == [[DOG], [BALL]]
    assert "instances" not in out and "annotations" not in out
    out = mapper(_detection_dict(path))
    assert "caption" not in out and "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 2 * H, 2 * W)


def test_from_config_reads_glip_keys(image_file):
    path, _ = image_file
    name = f"test_mapper_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=["person", "traffic_light"])
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.GROUNDING.RANDOM_SAMPLE_NEG = 0
    cfg.INPUT.GROUNDING.SEPARATION_TOKENS = " ; "
    cfg.INPUT.GROUNDING.FLIP_LEFT_RIGHT = "skip"
    cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 64
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    assert (mapper.max_query_len, mapper.separator, mapper.num_negatives) == (64, " ; ", 0)
    assert mapper.flip_left_right == "skip" and mapper.tokenizer.is_fast
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds == [T.ResizeShortestEdge, T.RandomFlip]
    d = _detection_dict(path, [_box(2, 4, 10, 8, category_id=1)])
    out = mapper(d)
    assert out["caption"] == "traffic light"  # names from the metadata, no negatives
    assert out["image"].shape[1] == 64
    assert _rows(out["instances"].gt_positive_map) == [[1, 2]]
    MetadataCatalog.remove(name)


def test_mapper_keeps_masks_only_when_asked(tmp_path):
    """Two-stage Mask R-CNN heads need gt_masks; the one-stage GLIP drops segmentations."""
    import cv2
    import numpy as np

    from glip_d2.data import GroundingDatasetMapper
    from glip_d2.text import load_tokenizer

    img = np.zeros((40, 60, 3), np.uint8)
    path = str(tmp_path / "m.png")
    cv2.imwrite(path, img)
    d = {"file_name": path, "image_id": 1, "height": 40, "width": 60, "caption": "a red square",
         "annotations": [{"bbox": [10, 10, 20, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
                          "tokens_positive": [[2, 12]],
                          "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]}
    kw = dict(augmentations=[], image_format="BGR", tokenizer=load_tokenizer("minilm"))
    with_masks = GroundingDatasetMapper(True, use_instance_mask=True, **kw)(d)["instances"]
    without = GroundingDatasetMapper(True, **kw)(d)["instances"]
    assert with_masks.has("gt_masks") and not without.has("gt_masks")
    assert with_masks.gt_masks.area()[0] == 400


def test_an_image_whose_annotations_have_masks_only_in_part_is_refused(tmp_path):
    """Detectron2 reads the first annotation only: a bare KeyError, or (a box-only annotation
    first) all the image's masks silently dropped."""
    import cv2
    import numpy as np

    from glip_d2.data import GroundingDatasetMapper
    from glip_d2.text import load_tokenizer

    path = str(tmp_path / "m.png")
    cv2.imwrite(path, np.zeros((40, 60, 3), np.uint8))
    masked = {"bbox": [10, 10, 20, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
              "tokens_positive": [[2, 12]], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    box_only = {"bbox": [35, 5, 20, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
                "tokens_positive": [[2, 12]]}
    mapper = GroundingDatasetMapper(True, use_instance_mask=True, augmentations=[],
                                    image_format="BGR", tokenizer=load_tokenizer("minilm"))
    for annos in ([masked, box_only], [box_only, masked]):
        d = {"file_name": path, "image_id": 5, "height": 40, "width": 60,
             "caption": "a red square", "annotations": [dict(a) for a in annos]}
        with pytest.raises(ValueError, match=r"Image 5: 1 of its 2 annotations have no "
                                             r"segmentation.*all or none"):
            mapper(d)
    d = {"file_name": path, "image_id": 6, "height": 40, "width": 60, "caption": "a red square",
         "annotations": [dict(box_only)]}
    assert not mapper(d)["instances"].has("gt_masks")  # box-only images still train on boxes


def test_phrase_map_names_every_category_of_the_prompt(image_file):
    path, _ = image_file
    random.seed(1)
    tokenizer = load_tokenizer("bert-base-uncased")
    out = _mapper(num_negatives=-1, phrase_maps=True)(_detection_dict(path))
    tokens = tokenizer(out["caption"]).tokens()
    phrases = sorted(" ".join(tokens[i] for i in row) for row in _rows(out["phrase_map"]))
    assert phrases == ["ball", "cat", "dog", "traffic light"]  # positives and negatives
    # every box's tokens are one of the phrases
    rows = [tuple(r) for r in _rows(out["phrase_map"])]
    assert all(tuple(r) in rows for r in _rows(out["instances"].gt_positive_map))
    assert "phrase_map" not in _mapper(num_negatives=-1)(_detection_dict(path))  # off by default


@pytest.fixture
def two_vocabularies():
    """Two registered datasets with different names for category 1, and one without names."""
    made = {f"test_vocab_{k}_{uuid.uuid4().hex[:8]}": c for k, c in
            (("a", ["person", "sneakers"]), ("b", ["person", "bicycle"]), ("none", None))}
    for name, classes in made.items():
        if classes:
            MetadataCatalog.get(name).set(thing_classes=classes)
    yield list(made)
    forget(*made)


def test_each_dataset_is_prompted_with_its_own_names(image_file, two_vocabularies):
    path, _ = image_file
    a, b, unnamed = two_vocabularies
    mapper = _mapper(category_names=None, num_negatives=0, dataset_names=[a, b])
    d = _detection_dict(path, [_box(2, 4, 10, 8, category_id=1)])
    assert mapper({**d, "dataset_name": a})["caption"] == "sneakers"
    assert mapper({**d, "dataset_name": b})["caption"] == "bicycle"
    # Untagged, with two datasets: whose names? Never silently the first dataset's.
    untagged = r"Image 8 has no caption and no 'dataset_name' tag.*2 datasets"
    with pytest.raises(ValueError, match=untagged):
        mapper(d)
    # Tagged with a dataset that has no names: an error, not another dataset's names.
    with pytest.raises(ValueError, match=f"dataset '{unnamed}' has no thing_classes"):
        _mapper(category_names=None, num_negatives=0, dataset_names=[a, unnamed])(
            {**d, "dataset_name": unnamed}
        )
    # One dataset: untagged dicts are that dataset's.
    only_b = _mapper(category_names=None, num_negatives=0, dataset_names=[b])
    assert only_b(d)["caption"] == "bicycle"


def test_null_iscrowd_is_a_clear_error_not_a_phrase_mismatch(image_file):
    path, _ = image_file
    d = _grounding_dict(path)
    d["annotations"][3]["iscrowd"] = None
    with pytest.raises(ValueError, match="Image 7: an annotation has iscrowd None; it must be 0"):
        _mapper()(d)
    det = _detection_dict(path, [_box(2, 4, 10, 8, category_id=1, iscrowd=2)])
    with pytest.raises(ValueError, match="Image 8: an annotation has iscrowd 2"):
        _mapper()(det)


def test_a_crop_with_masks_recomputes_the_boxes_from_the_cropped_masks(tmp_path):
    from pycocotools import mask as mask_util

    path = str(tmp_path / "img40.png")
    cv2.imwrite(path, np.zeros((40, 40, 3), np.uint8))
    triangle = np.zeros((40, 40), np.uint8)
    for y in range(20):
        triangle[y, : 20 - y] = 1  # corners (0, 0), (20, 0), (0, 20)
    rle = mask_util.encode(np.asfortranarray(triangle))
    rle["counts"] = rle["counts"].decode()
    d = {"file_name": path, "height": 40, "width": 40, "image_id": 1,  # a loose box
         "annotations": [_box(0, 0, 24, 24, category_id=0, segmentation=rle)]}
    kw = dict(image_format="BGR", use_instance_mask=True, instance_mask_format="bitmask",
              category_names={0: "triangle"}, num_negatives=0)
    crop = T.CropTransform(10, 0, 30, 40)  # keeps x >= 10: the triangle's part above y = 10
    cropped = GroundingDatasetMapper(True, augmentations=[crop], **kw)(d)["instances"]
    assert cropped.gt_boxes.tensor.tolist() == [[0.0, 0.0, 10.0, 10.0]]  # the cut box: 14 x 24
    assert cropped.gt_masks.get_bounding_boxes().tensor.tolist() == [[0.0, 0.0, 10.0, 10.0]]
    # without a crop the annotated box stays, as in Detectron2
    whole = GroundingDatasetMapper(True, augmentations=[], **kw)(d)["instances"]
    assert whole.gt_boxes.tensor.tolist() == [[0.0, 0.0, 24.0, 24.0]]


def test_categories_that_read_the_same_give_one_phrase_row(image_file):
    """Two categories that read the same share one span of the training prompt; the phrase map
    had a row per category, so the phrase loss counted that phrase twice."""
    path, _ = image_file
    random.seed(1)
    names = {0: "bow_(weapon)", 1: "cat", 2: "bow_(decorative_ribbons)", 3: "traffic light"}
    annos = [_box(2, 4, 10, 8, category_id=0), _box(30, 6, 12, 12, category_id=2)]
    out = _mapper(num_negatives=-1, phrase_maps=True, category_names=names)(
        _detection_dict(path, annos))
    tokens = load_tokenizer("bert-base-uncased")(out["caption"]).tokens()
    phrases = sorted(" ".join(tokens[i] for i in row) for row in _rows(out["phrase_map"]))
    assert phrases == ["bow", "cat", "traffic light"]
    boxes = _rows(out["instances"].gt_positive_map)
    assert len(boxes) == 2 and boxes[0] == boxes[1]  # both boxes ground the one "bow"
