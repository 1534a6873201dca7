"""Class descriptions ({prefix, name, suffix}) in prompts, vocabularies, configs and the CLI."""
import json
import random

import pytest
import torch

from glip_d2.text import (
    ClassDescription,
    apply_descriptions,
    build_detection_prompt,
    build_training_prompt,
    chunk_vocabulary,
    create_positive_map,
    load_descriptions,
    load_tokenizer,
    packaged_model_dir,
    tokenize,
)

CIG = {"prefix": "a ", "name": "cigarette", "suffix": ", a thin paper tube smoked near the mouth"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(packaged_model_dir())


def test_prompt_spans_cover_only_the_name():
    caption, spans = build_detection_prompt(["person", CIG, "Traffic_light"])
    assert caption == "person. a cigarette, a thin paper tube smoked near the mouth. traffic light"
    assert [caption[s:e] for s, e in spans] == ["person", "cigarette", "traffic light"]


def test_positive_map_marks_only_the_names_tokens(tokenizer):
    caption, spans = build_detection_prompt([CIG, {"name": "dog", "suffix": " on a leash"}])
    tok = tokenize(tokenizer, [caption], 256, pad_to_max=False)
    pmap = create_positive_map(tok, [[s] for s in spans], max_len=256)
    words = tokenizer.convert_ids_to_tokens(tok["input_ids"][0])
    assert [words[i] for i in pmap[0].nonzero()[:, 0]] == ["cigarette"]
    assert [words[i] for i in pmap[1].nonzero()[:, 0]] == ["dog"]
    assert pmap.sum().item() == 2  # "thin paper tube", "leash": context, no positives


def test_chunking_counts_the_whole_description(tokenizer):
    vocab = [{"name": f"thing{i}", "suffix": " " + "very long words " * 10} for i in range(6)]
    chunks = chunk_vocabulary(vocab, tokenizer, chunk_size=0, max_len=80)
    assert len(chunks) > 1 and sorted(i for c in chunks for i in c.label_ids) == list(range(6))
    for c in chunks:
        assert len(tokenize(tokenizer, [c.caption], 256, pad_to_max=False)["input_ids"][0]) <= 80
        assert [c.caption[s:e] for s, e in c.spans] == [f"thing{i}" for i in c.label_ids]
    with pytest.raises(ValueError, match="repeats names"):
        chunk_vocabulary(["cat", {"name": "cat", "suffix": " again"}])


def test_training_prompt_keeps_descriptions_and_name_spans(tokenizer):
    names = {0: "cat", 1: ClassDescription("dog", "a big ", " barking"), 2: CIG}
    caption, spans = build_training_prompt(
        names, [1], rng=random.Random(0), num_negatives=-1, tokenizer=tokenizer
    )
    assert "a big dog barking" in caption and "thin paper tube" in caption
    assert {c: caption[s:e] for c, (s, e) in spans.items()} == {0: "cat", 1: "dog", 2: "cigarette"}


def test_load_and_apply(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([CIG, "cat"]))
    assert load_descriptions(str(path)) == [CIG, "cat"]
    ypath = tmp_path / "d.yaml"
    ypath.write_text("cat:\n  prefix: 'a fluffy '\ndog: ' on a leash'\n")
    mapping = load_descriptions(str(ypath))
    vocab = apply_descriptions(["cat", "bird", "dog"], mapping)
    assert vocab[1] == "bird" and vocab[0] == ClassDescription("cat", "a fluffy ", "")
    assert vocab[2] == ClassDescription("dog", "", " on a leash")
    assert load_descriptions('[{"name": "x", "suffix": "!"}]') == [{"prefix": "", "name": "x", "suffix": "!"}]
    with pytest.raises(ValueError, match="one entry per class"):
        apply_descriptions(["a", "b"], [CIG])
    with pytest.raises(ValueError, match="match no class"):
        apply_descriptions(["a"], {"zebra": {"suffix": "x"}})
    with pytest.raises(ValueError, match="'name'"):
        load_descriptions('[{"prefix": "a "}]')
    with pytest.raises(ValueError, match="neither an existing file"):
        load_descriptions("no_such_file.json")


def _name_scores(model, image):
    """Mean token logit of label 0's (the name's) tokens at every anchor, (A,)."""
    feats = model.extract_features(model.preprocess_image([{"image": image}]))
    chunk = model._chunks[0]
    _, lang, pmap = model._cached_prompt(chunk.caption, [[tuple(s)] for s in chunk.spans])
    logits = torch.cat(model.head(feats, lang)["token_logits"], dim=1)[0]  # (A, T)
    return logits[:, pmap[0]].mean(-1)


def test_descriptions_change_scores_and_labels_stay_names():
    from detectron2.modeling import build_model

    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    image = torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.set_vocabulary(["red circle", "blue square"])
        plain = _name_scores(model, image)
        model.set_vocabulary([{"prefix": "a shiny ", "name": "red circle", "suffix": " on grass"},
                              "blue square"])
        described = _name_scores(model, image)
    assert plain.shape == described.shape
    assert (plain - described).abs().max() > 1e-3  # the context changes the name's features


def test_config_descriptions_reach_the_mapper_and_the_test_vocabulary(tmp_path):
    from detectron2.data import MetadataCatalog

    from glip_d2.data import GroundingDatasetMapper
    from glip_d2.engine.evaluation import set_test_vocabulary
    from glip_d2.modeling.meta_arch.prompting import default_vocabulary
    from tests.helpers import tiny_cfg

    MetadataCatalog.get("_desc_test_ds").set(thing_classes=["cat", "dog"])
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.DATASETS.TEST = ("_desc_test_ds",)
    cfg.DATASETS.TRAIN = ("_desc_test_ds",)
    cfg.DATASETS.CLASS_DESCRIPTIONS = [["_desc_test_ds", '{"dog": {"suffix": " on a leash"}}']]
    vocab = default_vocabulary(cfg)
    assert vocab == ["cat", ClassDescription("dog", "", " on a leash")]
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    assert mapper._category_names({})[1] == ClassDescription("dog", "", " on a leash")

    class Model:
        def set_vocabulary(self, v):
            self.v = v

    m = Model()
    set_test_vocabulary(m, "_desc_test_ds", [CIG, "dog"])
    assert m.v[0].name == "cigarette"


def test_demo_cli_reads_a_descriptions_file(tmp_path):
    from glip_d2 import demo

    path = tmp_path / "classes.json"
    path.write_text(json.dumps([CIG, {"name": "lighter"}]))
    parser = demo.get_parser()
    args = parser.parse_args(["--config-file", "x.yaml", "--input", "a.png", "--descriptions", str(path)])
    query = demo._query(args, parser)
    assert query["vocabulary"][0]["name"] == "cigarette"
    mapping = tmp_path / "m.yaml"
    mapping.write_text("cat:\n  suffix: ' sleeping'\n")
    args = parser.parse_args(["--config-file", "x.yaml", "--input", "a.png", "--descriptions",
                              str(mapping), "--custom-vocabulary", "cat,dog"])
    assert demo._query(args, parser)["vocabulary"] == [ClassDescription("cat", "", " sleeping"), "dog"]


def test_predictor_takes_descriptions_and_labels_them_by_name(tmp_path):
    import numpy as np
    from detectron2.modeling import build_model

    from glip_d2.predictor import GLIPPredictor
    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    path = tmp_path / "m.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    cfg.MODEL.WEIGHTS = str(path)
    pred = GLIPPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    out = pred(image, vocabulary=[CIG, "lighter"], confidence_threshold=0.0)
    assert out["labels"] == ["cigarette", "lighter"]
    assert len(out["instances"]) > 0
    with pytest.raises(ValueError, match="descriptions"):
        pred(image, vocabulary=[3])
