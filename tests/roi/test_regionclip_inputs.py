"""RegionCLIP student on awkward inputs (concept pools, captions, padding, compound words), with
tiny stand-in modules so that each test runs in well under a second."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from glip_d2.regionclip import (
    RegionCLIPPretrainer,
    extract_concepts,
    image_text_contrastive_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EMBED = 8


class _Backbone(Backbone):
    """One stride-4 conv; records the padded batch it was given."""

    def __init__(self, padding_constraints=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self._padding = padding_constraints or {}
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return {"p2": self.conv(x)}

    def output_shape(self):
        return {"p2": ShapeSpec(channels=4, stride=4)}

    @property
    def padding_constraints(self):
        return self._padding


class _BoxHead(nn.Module):
    output_shape = ShapeSpec(channels=6)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 2 * 2, 6)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _Teacher(nn.Module):
    """Deterministic stand-in for `CLIPRegionTeacher`: a fixed random embedding per text."""

    embed_dim = EMBED

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1), persistent=False)

    def _text(self, t):
        g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(t)))
        return torch.randn(EMBED, generator=g)

    def encode_texts(self, texts):
        if not texts:
            return torch.zeros(0, EMBED)
        return F.normalize(torch.stack([self._text(t) for t in texts]), dim=-1)

    def encode_concepts(self, concepts):
        return self.encode_texts([f"a photo of a {c}." for c in concepts])

    def encode_regions(self, images, boxes):
        g = torch.Generator().manual_seed(0)
        n = sum(len(b) for b in boxes)
        return F.normalize(torch.randn(n, EMBED, generator=g), dim=-1)


def _student(concepts=("cat", "dog", "sofa"), padding_constraints=None):
    torch.manual_seed(0)
    return RegionCLIPPretrainer(
        backbone=_Backbone(padding_constraints),
        proposal_generator=None,
        box_in_features=["p2"],
        box_pooler=ROIPooler(
            output_size=2, scales=(0.25,), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=_BoxHead(),
        teacher=_Teacher(),
        concepts=list(concepts),
        pixel_mean=[100.0, 110.0, 120.0],
        pixel_std=[50.0, 50.0, 50.0],
        temperature=0.05,
        distill_temperature=0.05,
        image_text_temperature=0.1,
    ).train()


def _inputs(captions, size=(40, 56)):
    out = []
    for i, caption in enumerate(captions):
        g = torch.Generator().manual_seed(i)
        props = Instances(size)
        props.proposal_boxes = Boxes(torch.tensor([[2.0, 3.0, 30.0, 25.0], [10.0, 5.0, 50.0, 38.0]]))
        props.objectness_logits = torch.zeros(2)
        x = {"image": torch.randint(0, 255, (3, *size), generator=g).float(), "proposals": props}
        if caption is not None:
            x["caption"] = caption
        out.append(x)
    return out


def test_regionclip_empty_or_repeated_concept_pool_is_refused_at_build():
    """An empty concept file built a student whose first step failed deep inside with
    "argmax(): Expected reduction dim 1 to have non-zero size"; a repeated concept trained
    silently against its own copy (the pseudo-label cross-entropy cannot fall below ln 2)."""
    with pytest.raises(ValueError, match="concept pool is empty"):
        _student(concepts=[])
    with pytest.raises(ValueError, match=r"repeats \['cat'\]"):
        _student(concepts=["cat", "dog", "cat"])
    assert _student().concept_emb.shape == (3, EMBED)


def test_regionclip_image_text_loss_over_the_captioned_images_of_a_mixed_batch():
    """One image without a caption (or with an empty one) dropped the image-text loss of the
    whole batch; the captioned images still contrast with each other."""
    student = _student()
    inputs = _inputs(["a cat on a sofa", None, "a dog", ""])
    with EventStorage():
        losses = student(inputs)
    assert set(losses) == {"loss_region_contrastive", "loss_region_distill", "loss_image_text"}

    with torch.no_grad():
        _, normed, features, _ = student._regions(inputs)
        whole = [
            torch.tensor([[0.0, 0.0, float(w), float(h)]])
            for i, (h, w) in enumerate(normed.image_sizes)
            if i in (0, 2)
        ]
        feats = {k: v[[0, 2]] for k, v in features.items()}
        expected = image_text_contrastive_loss(
            student.region_embeddings(feats, whole),
            student.teacher.encode_texts(["a cat on a sofa", "a dog"]),
            0.1,
        )
    assert losses["loss_image_text"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_image_text"].item() > 0
    losses["loss_image_text"].backward()
    assert student.region_proj.weight.grad.abs().sum() > 0

    # No caption at all (detection-only data): no image-text loss.
    with EventStorage():
        assert "loss_image_text" not in student(_inputs([None, None]))


def test_regionclip_student_pads_images_as_its_backbone_requires():
    """The student ignored the backbone's padding constraints (e.g. ViTDet's square padding)
    that the detector it initialises applies, so it trained on differently padded inputs."""
    student = _student(padding_constraints={"size_divisibility": 0, "square_size": 64})
    with EventStorage():
        student(_inputs(["a cat", "a dog"]))
    assert student.backbone.seen[0] == (2, 3, 64, 64)


def test_regionclip_concepts_keep_hyphenated_compounds_whole():
    """Relation words inside hyphenated words cut them: "mother-in-law" gave the concepts
    "mother-" and "-law", "the on-off switch" gave "-off switch"; a lone dash stayed a word."""
    assert extract_concepts("a mother-in-law with a t-shirt", "simple") == [
        "mother-in-law",
        "t-shirt",
    ]
    assert extract_concepts("the on-off switch", "simple") == ["on-off switch"]
    assert extract_concepts("a cat - on a mat", "simple") == ["cat", "mat"]
    assert extract_concepts("a small blue triangle to the left of a green square", "simple") == [
        "small blue triangle",
        "green square",
    ]


POOL_CAPTIONS = ["blue square, red circle", "A blue square next to a yellow star.",
                 "red circle and a red circle"]


def _pool_config(backend):
    """A config whose concept pool comes from the captions of a registered caption dataset."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from glip_d2 import add_glip_config
    from glip_d2.config import add_two_stage_config

    name = "_regionclip_pool_captions"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [{"caption": c} for c in POOL_CAPTIONS])
    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.REGIONCLIP.NOUN_PHRASES = backend
    return cfg


def test_regionclip_concept_pool_backend_is_a_config_key_and_processes_must_agree(monkeypatch):
    """The pool was mined with spaCy where it was installed and with the simple split elsewhere;
    the pools' indices are the region classes, so processes on two such machines trained
    different classes under one index without a word."""
    from glip_d2.regionclip import build_concept_pool
    from glip_d2.regionclip import pretrainer

    simple = build_concept_pool(POOL_CAPTIONS, backend="simple")
    assert pretrainer._concepts_from_config(_pool_config("simple")) == simple
    from glip_d2 import nlp

    monkeypatch.setattr(nlp, "spacy_available", lambda: False)
    assert pretrainer._concepts_from_config(_pool_config("auto")) == simple
    with pytest.raises(ValueError, match="NOUN_PHRASES 'nltk' is not"):
        pretrainer._concepts_from_config(_pool_config("nltk"))

    # two processes: the same pool passes, another pool on rank 1 is refused on every rank
    monkeypatch.setattr(pretrainer.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(pretrainer.comm, "all_gather", lambda pool: [pool, list(pool)])
    assert pretrainer._concepts_from_config(_pool_config("simple")) == simple
    monkeypatch.setattr(pretrainer.comm, "all_gather", lambda pool: [pool, pool[:-1]])
    with pytest.raises(ValueError, match="differs between processes.*rank 1.*NOUN_PHRASES simple"):
        pretrainer._concepts_from_config(_pool_config("simple"))
