import numpy as np
import pytest
import torch
import yaml
from detectron2.modeling import build_model
from PIL import Image

from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.nlp import find_noun_phrases
from glip_d2.predictor import GLIPPredictor, locate_phrases, to_rgb_uint8
from glip_d2.vocabularies import get_vocabulary
from tests.helpers import tiny_cfg

VOCAB = ["red circle", "blue square", "green triangle"]  # tiny_cfg's MODEL.GLIP.VOCABULARY


@pytest.fixture(scope="module")
def trained(module_tmp):
    """A tiny model's weights saved to disk, and its config pointing at them."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 20
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # a random model scores below the default 0.05
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 112  # small inputs: fast tests
    cfg.MODEL.DYHEAD.NUM_CONVS = 1  # one fusion block: fast tests
    model = build_model(cfg)
    path = module_tmp("predictor") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    cfg.MODEL.WEIGHTS = str(path)
    return cfg, model.state_dict()


@pytest.fixture(scope="module")
def predictor(trained):
    return GLIPPredictor(trained[0])


@pytest.fixture
def pred(predictor):
    """The module's predictor, its defaults restored after each test."""
    yield predictor
    predictor.input_format = "BGR"
    predictor.confidence_threshold = 0.0


def _image(h=100, w=150, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Counter:
    """Counts forward calls of a module and records the batch size of its first input."""

    def __init__(self, module):
        self.batches = []
        self.handle = module.register_forward_pre_hook(
            lambda m, args: self.batches.append(tuple(args[0].shape))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_weights_and_runs_in_eval_mode(predictor, trained):
    own = predictor.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained[1].items())
    assert not predictor.model.training and predictor.cfg.is_frozen()
    assert predictor.default_vocabulary == VOCAB


def test_detection_resizes_and_returns_boxes_in_image_coordinates(pred):
    image = _image(100, 150)
    with Counter(pred.model.backbone) as seen:
        out = pred(image, vocabulary=["red circle", "blue square"])
    # ResizeShortestEdge(64, max 112): 100x150 -> 64x96, already a multiple of 32
    assert seen.batches == [(1, 3, 64, 96)]
    inst = out["instances"]
    assert out["labels"] == ["red circle", "blue square"]
    assert inst.image_size == (100, 150) and 0 < len(inst) <= 20
    assert inst.pred_classes.max() < 2 and (inst.scores[:-1] >= inst.scores[1:]).all()
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 150).all() and (boxes[:, 3] <= 100).all()
    # the confidence threshold, per call and as the predictor's default
    t = float(inst.scores[len(inst) // 2])
    kept = pred(image, vocabulary=["red circle", "blue square"], confidence_threshold=t)[
        "instances"
    ]
    assert 0 < len(kept) < len(inst) and (kept.scores >= t).all()
    pred.confidence_threshold = t
    assert len(pred(image, vocabulary=["red circle", "blue square"])["instances"]) == len(kept)


def test_default_vocabulary_is_the_configs(pred):
    out = pred(_image())
    assert out["labels"] == VOCAB and out["instances"].pred_classes.max() < 3


def test_bgr_rgb_and_pil_inputs_give_the_same_model_input(pred):
    bgr = _image(seed=1)
    ref = pred.preprocess(bgr)
    assert (ref["height"], ref["width"]) == (100, 150) and ref["image"].shape == (3, 64, 96)
    assert ref["image"].dtype == torch.float32
    # INPUT.FORMAT is BGR: the resized image keeps the caller's BGR channels
    flat = np.full((100, 150, 3), (10, 20, 30), np.uint8)
    assert pred.preprocess(flat)["image"][:, 0, 0].tolist() == [10, 20, 30]
    pred.input_format = "RGB"
    assert pred.preprocess(flat)["image"][:, 0, 0].tolist() == [30, 20, 10]
    for same in (bgr[:, :, ::-1], Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))):
        assert torch.equal(pred.preprocess(same)["image"], ref["image"])


def test_vocabulary_by_name(pred):
    out = pred(_image(seed=2), vocabulary="coco")
    assert out["labels"] == list(get_vocabulary("coco").names)
    assert len(out["instances"]) and out["instances"].pred_classes.max() < 80
    # LVIS: 1203 labels; the model gets the unique dataset names and needs several prompts
    assert pred.set_vocabulary("lvis") == list(get_vocabulary("lvis").names)
    assert pred.model.vocabulary == list(get_vocabulary("lvis").prompt_names)
    chunks = pred.model._chunks
    assert len(chunks) > 1 and sorted(i for c in chunks for i in c.label_ids) == list(range(1203))


def test_long_vocabulary_is_chunked_with_one_backbone_pass_per_batch_and_cached(pred):
    names = ["red circle", "blue square", "green triangle", "purple star", "yellow hexagon"]
    images = [_image(seed=2), _image(80, 120, seed=3)]
    pred.model.test_chunk_size = 3  # 5 names -> 2 prompts
    try:
        with Counter(pred.model.backbone) as backbone, Counter(
            pred.model.language_backbone
        ) as text:
            outs = pred(images, vocabulary=names)
        assert len(pred.model._chunks) == 2 and len(text.batches) == 2
        assert len(backbone.batches) == 1 and backbone.batches[0][0] == 2
        assert isinstance(outs, list) and len(outs) == 2 and outs[0]["labels"] == names
        assert outs[1]["instances"].image_size == (80, 120)
        classes = torch.cat([o["instances"].pred_classes for o in outs])
        assert classes.max() < 5 and {c // 3 for c in classes.tolist()} == {0, 1}  # both chunks
        # the same vocabulary again: no text encoding at all
        with Counter(pred.model.language_backbone) as text:
            single = pred(images[0], vocabulary=names)
        assert text.batches == [] and isinstance(single, dict)
        assert torch.allclose(single["instances"].scores, outs[0]["instances"].scores, atol=1e-5)
    finally:
        pred.model.test_chunk_size = 0
    # another chunk size: the same names are chunked anew (one prompt now)
    pred(images[0], vocabulary=names)
    assert len(pred.model._chunks) == 1


def test_grounding_with_found_and_given_phrases(pred):
    caption = "a red circle, a blue square and a green triangle"
    out = pred(_image(), caption=caption)
    expected = find_noun_phrases(caption)
    assert out["labels"] == [p.text for p in expected] and out["caption"] == caption
    assert out["phrase_spans"] == [p.span for p in expected]
    assert len(out["instances"]) and out["instances"].pred_classes.max() < len(expected)

    outs = pred([_image(), _image(seed=4)], caption=caption, phrases=["blue square", (2, 12)])
    assert [o["labels"] for o in outs] == [["blue square", "red circle"]] * 2
    assert outs[0]["phrase_spans"] == [(16, 27), (2, 12)]
    assert set(outs[0]["instances"].pred_classes.tolist()) <= {0, 1}


def test_locate_phrases():
    caption = "A woman and a man. The man waves"
    assert locate_phrases(caption, ["man"]) == [(14, 17)]  # the word, not inside "woman"
    assert locate_phrases(caption, ["man", "man"]) == [(14, 17), (23, 26)]
    assert locate_phrases(caption, ["a woman", "wave"]) == [(0, 7), (27, 31)]  # any case; substring
    with pytest.raises(ValueError, match="'dog' is not in the caption"):
        locate_phrases(caption, ["dog"])
    with pytest.raises(ValueError, match="given more often than it occurs"):
        locate_phrases(caption, ["waves", "waves"])
    with pytest.raises(ValueError, match="span inside the caption"):
        locate_phrases(caption, [(5, 100)])
    with pytest.raises(ValueError, match="wrap it in a list"):
        locate_phrases(caption, "man")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(vocabulary=[]), "vocabulary is empty"),
        (dict(vocabulary=["cat", "word " * 300]), "more than a prompt of max_len=256 holds"),
        (dict(vocabulary=["cat", "cat"]), "repeats names"),
        (dict(vocabulary="objects365"), r"builtin ones are \['coco', 'lvis'\]"),
        (dict(vocabulary=["cat", 3]), "must be names"),
        (dict(vocabulary=["cat"], caption="a cat"), "not both"),
        (dict(phrases=["cat"]), "need a caption"),
        (dict(caption="  "), "non-empty string"),
        (dict(caption="cat " * 300), "the model reads at most 254"),
        (dict(caption="a cat", phrases=["dog"]), "not in the caption"),
        (dict(confidence_threshold=1.5), r"must lie in \[0, 1\]"),
        # list() would read a description dict as its keys, a set in arbitrary order
        (dict(vocabulary={"prefix": "a ", "name": "cat", "suffix": ""}), "is a mapping .* list"),
        (dict(vocabulary={"cat": 0, "dog": 1}), "would be read as its keys"),
        (dict(vocabulary={"cat", "dog"}), "is a set, .* pass an ordered list"),
        (dict(vocabulary=frozenset(["cat"])), "is a frozenset"),
    ],
)
def test_bad_queries_are_clear_errors_and_leave_the_model_usable(pred, kwargs, message):
    pred.set_vocabulary(["cat", "dog"])
    chunks = pred.model._chunks
    with pytest.raises(ValueError, match=message):
        pred(_image(), **kwargs)
    assert pred.model.vocabulary == ["cat", "dog"] and pred.model._chunks is chunks


@pytest.mark.parametrize(
    "image,message",
    [
        (
            np.zeros((8, 8, 2), np.uint8),
            r"got \(8, 8, 2\); after conversion an image must have 3 channels",
        ),
        (np.zeros((8, 8, 5), np.uint8), "must have 3 channels"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 3), bool), "dtype bool"),
        (np.full((8, 8), -1, np.int32), "0..65535"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (torch.zeros(3, 8, 8), "got Tensor"),
        ([], "empty list of images"),
    ],
)
def test_bad_images_are_clear_errors(pred, image, message):
    with pytest.raises(ValueError, match=message):
        pred(image)


def test_to_rgb_uint8_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb_uint8(gray)
    assert rgb.shape == (3, 4, 3) and (rgb == gray[:, :, None]).all()
    assert np.array_equal(to_rgb_uint8(gray[:, :, None]), rgb)
    bgra = np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3, 9)])
    assert to_rgb_uint8(bgra, "BGR")[0, 0].tolist() == [3, 2, 1]  # alpha dropped, BGR -> RGB
    sixteen = np.array([[0, 257, 65535]], np.uint16)
    assert to_rgb_uint8(sixteen)[0, :, 0].tolist() == [0, 1, 255]
    # floats outside 0..255: stretched from min..max (7.6 -> 10.6 / 303 * 255 = 8.9)
    assert to_rgb_uint8(np.array([[-3.0, 7.6, 300.0]]))[0, :, 0].tolist() == [0, 9, 255]
    # PIL: 16-bit grayscale, palette, RGBA, 1-bit
    assert to_rgb_uint8(Image.fromarray(sixteen))[0, :, 1].tolist() == [0, 1, 255]
    pal = Image.fromarray(gray).convert("P")
    assert to_rgb_uint8(pal).shape == (3, 4, 3)
    rgba = Image.fromarray(np.dstack([np.full((2, 2), v, np.uint8) for v in (5, 6, 7, 0)]))
    assert to_rgb_uint8(rgba)[1, 1].tolist() == [5, 6, 7]
    assert to_rgb_uint8(Image.new("1", (2, 2), 1)).max() == 255
    with pytest.raises(ValueError, match="input_format"):
        to_rgb_uint8(gray, "YUV")


def test_text_cache_is_bounded_but_keeps_the_vocabulary(pred):
    pred.set_vocabulary(["cat", "dog", "bird"])
    cache = pred.model._text_cache
    cache.clear()
    vocab_keys = [(c.caption, tuple(c.spans)) for c in pred.model._chunks]
    cache.update({k: None for k in vocab_keys})
    for i in range(100):
        cache[(f"caption {i}", ((0, 7),))] = None
    pred._trim_text_cache()
    assert all(k in cache for k in vocab_keys) and len(cache) == len(vocab_keys) + 64
    assert ("caption 99", ((0, 7),)) in cache and ("caption 35", ((0, 7),)) not in cache


def test_missing_weights_file_is_a_clear_error(trained, tmp_path):
    cfg = trained[0].clone()
    cfg.MODEL.WEIGHTS = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        GLIPPredictor(cfg)


def test_float_images_are_scaled_by_their_range():
    # within [0, 1] (e.g. skimage / a normalised image): x 255, not clipped to black
    assert to_rgb_uint8(np.array([[0.0, 0.2, 0.5, 1.0]]))[0, :, 0].tolist() == [0, 51, 128, 255]
    # within [0, 255]: Detectron2's float inputs, kept
    assert to_rgb_uint8(np.array([[0.0, 7.6, 254.2]], np.float32))[0, :, 0].tolist() == [0, 8, 254]
    # any other range (a 32-bit float TIFF): min..max -> 0..255; a constant one is clipped
    assert to_rgb_uint8(np.array([[1000.0, 1500.0, 3000.0]]))[0, :, 0].tolist() == [0, 64, 255]
    assert to_rgb_uint8(np.full((2, 2), 300.0)).max() == 255
    # PIL mode "F" follows the same rule
    f01 = Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32))
    assert f01.mode == "F" and to_rgb_uint8(f01)[0, :, 2].tolist() == [0, 64, 255]
    # integer images are unchanged
    assert to_rgb_uint8(np.array([[0, 1, 255]], np.uint8))[0, :, 0].tolist() == [0, 1, 255]
    assert to_rgb_uint8(np.array([[0, 1, 255]], np.uint16))[0, :, 0].tolist() == [0, 0, 1]


def test_lvis_is_prompted_40_names_at_a_time_as_its_protocol(pred, caplog):
    """With MODEL.GLIP.TEST_CHUNK_SIZE 0 a builtin "lvis" uses the official LVIS chunking, the
    one of configs/protocols/lvis_minival*.yaml; a custom vocabulary is still packed."""
    for name in ("lvis_minival", "lvis_minival_fixed_ap"):
        protocol = yaml.safe_load(open(f"configs/protocols/{name}.yaml"))
        assert protocol["MODEL"]["GLIP"]["TEST_CHUNK_SIZE"] == 40
    assert pred.model.test_chunk_size == 0
    pred.set_vocabulary(["cat"])
    with caplog.at_level("INFO", logger="glip_d2"):
        pred.set_vocabulary(" LVIS ")
    sizes = [len(c.label_ids) for c in pred.model._chunks]
    assert sizes == [40] * 30 + [3]  # 1203 names: 31 prompts
    assert "Vocabulary of 1203 names: 31 prompt chunk(s) per image." in caplog.messages
    assert any("'lvis': 40 names per prompt" in m for m in caplog.messages)
    lvis = list(get_vocabulary("lvis").prompt_names)
    # the same names as a list follow the config (packed): fewer, longer prompts
    pred.set_vocabulary(lvis)
    assert 1 < len(pred.model._chunks) < 31
    pred.set_vocabulary("lvis")
    assert len(pred.model._chunks) == 31
    # a configured chunk size wins
    pred.model.test_chunk_size = 100
    try:
        pred.set_vocabulary("lvis")
        assert len(pred.model._chunks[0].label_ids) <= 100 and len(pred.model._chunks) < 31
    finally:
        pred.model.test_chunk_size = 0


def test_min_size_test_0_keeps_the_image_size(trained):
    cfg = trained[0].clone()
    cfg.INPUT.MIN_SIZE_TEST = 0  # Detectron2: no resize at test time
    pred = GLIPPredictor(cfg)
    image = _image(100, 150)
    assert pred.preprocess(image)["image"].shape == (3, 100, 150)
    out = pred(image, vocabulary=["red circle"])
    assert out["instances"].image_size == (100, 150) and len(out["instances"])


def _scores(pred, image):
    return pred(image, vocabulary=["cat", "dog"])["instances"].scores


def test_loading_weights_drops_the_cached_prompt_encodings(pred, trained, tmp_path):
    image = _image()
    before = _scores(pred, image)  # the prompt's encoding is now cached
    torch.manual_seed(123)
    other = build_model(pred.cfg).state_dict()  # same architecture, other text encoder weights
    path = tmp_path / "other.pth"
    torch.save({"model": other}, path)
    try:
        GLIPCheckpointer(pred.model).load(str(path))
        after = _scores(pred, image)
        pred.model._text_cache.clear()
        assert torch.equal(after, _scores(pred, image))  # as with a fresh cache
        assert not torch.allclose(after[:3], before[:3])
        pred.model.load_state_dict(trained[1])  # a plain load_state_dict too
        assert torch.equal(_scores(pred, image), before)
    finally:
        pred.model.load_state_dict(trained[1])


def test_training_drops_the_cached_prompt_encodings(pred, trained):
    image = _image()
    before = _scores(pred, image)
    try:
        pred.model.train()  # a training step on the text encoder between two evaluations
        with torch.no_grad():
            for p in pred.model.language_backbone.parameters():
                p.add_(0.05 * torch.randn_like(p))
        pred.model.eval()
        after = _scores(pred, image)
        pred.model._text_cache.clear()
        assert torch.equal(after, _scores(pred, image)) and not torch.equal(after, before)
        pred.model.eval()  # eval() alone keeps the cache: evaluations reuse the encodings
        assert pred.model._text_cache
    finally:
        pred.model.load_state_dict(trained[1])
        pred.model.eval()


def test_moving_the_model_drops_the_cached_prompt_encodings(pred):
    """Encodings cached before ``to(dtype / device)`` would keep the old dtype and device."""
    _scores(pred, _image())
    assert len(pred.model._text_cache) > 0
    try:
        pred.model.to(torch.float64)
        assert len(pred.model._text_cache) == 0
    finally:
        pred.model.to(torch.float32)
