"""X-VLM's image/region-text contrastive (ITC) and image-text matching (ITM) losses
(MODEL.GLIP.LOSSES.ITC_WEIGHT / ITM_WEIGHT): the losses against hand computations, the
negatives, a training step of a tiny model with each switch, the defaults, checkpoint loading."""

import math

import pytest
import torch
import torch.distributed as dist
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from glip_d2.modeling.heads.itc import ImageTextContrastiveHead, image_text_contrastive_loss
from glip_d2.modeling.heads.itm import ImageTextMatchingHead, hard_negatives, shifted_negatives
from tests.gloo import run_gloo_workers
from tests.helpers import make_input, model_with_losses, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

GROUNDING_KEYS = {"loss_cls", "loss_box_reg", "loss_centerness"}


def _reference_infonce(vision, text, temperature, positives):
    """From the definition, in Python floats: cosine similarities / temperature, each row's
    (column's) cross-entropy against the uniform distribution over its positives, averaged over
    rows (columns), the two directions averaged."""

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    vs, ts = [unit(v) for v in vision.tolist()], [unit(t) for t in text.tolist()]
    logits = [[sum(a * b for a, b in zip(v, t)) / temperature for t in ts] for v in vs]

    def ce(rows, pos):
        total = 0.0
        for row, p in zip(rows, pos):
            log_z = math.log(sum(math.exp(x) for x in row))
            total += -sum(x - log_z for x, q in zip(row, p) if q) / sum(p)
        return total / len(rows)

    pos = positives.tolist()
    cols = [list(c) for c in zip(*logits)]
    return 0.5 * (ce(logits, pos) + ce(cols, [list(c) for c in zip(*pos)]))


def test_itc_loss_matches_a_hand_computation_with_known_positives():
    g = torch.Generator().manual_seed(0)
    vision, text = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    temp = torch.tensor(0.1)
    # pair k matches text k; texts 1 and 3 are the same words, so each matches both images
    positives = torch.eye(4, dtype=torch.bool)
    positives[1, 3] = positives[3, 1] = True
    got = image_text_contrastive_loss(vision, text, temp, positives)
    assert got.item() == pytest.approx(_reference_infonce(vision, text, 0.1, positives), rel=1e-5)
    # default positives: the diagonal, i.e. CLIP / X-VLM's InfoNCE with torch's cross-entropy
    logits = (
        torch.nn.functional.normalize(vision, dim=1)
        @ torch.nn.functional.normalize(text, dim=1).t()
        / 0.1
    )
    labels = torch.arange(4)
    want = 0.5 * (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.t(), labels)
    )
    assert image_text_contrastive_loss(vision, text, temp).item() == pytest.approx(
        want.item(), rel=1e-5
    )
    # aligned pairs give a lower loss
    assert image_text_contrastive_loss(text * 2, text, temp) < image_text_contrastive_loss(
        vision, text, temp
    )


def test_itc_head_pools_whole_images_and_named_boxes_from_hand_made_feature_maps():
    """Constant feature maps per (image, level): RoIAlign returns the constant, so the image
    embedding is the level the whole-image box goes to (P5 at 448 px) and a 40 px box's is P3."""
    head = ImageTextContrastiveHead(channels=3, language_dim=3, embed_dim=3, pool_size=1)
    with torch.no_grad():
        for proj in (head.vision_proj, head.text_proj):
            proj.weight.copy_(torch.eye(3))
            proj.bias.zero_()
    g = torch.Generator().manual_seed(1)
    p3, p5 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    p4 = torch.randn(4, 3, generator=g)
    feats = [
        v[:, :, None, None].expand(-1, -1, 448 // s, 448 // s).contiguous()
        for v, s in ((p3, 8), (p4, 16), (p5, 32))
    ]
    cls = torch.randn(4, 3, generator=g)
    captions = ["the red circle", "a blue square", "red circle. blue square", "a blue square"]
    rows = [0, 1, 3]  # input 2 is a detection prompt
    boxes = {
        0: torch.tensor([100.0, 100.0, 140.0, 140.0]),
        3: torch.tensor([300.0, 20.0, 340.0, 60.0]),
    }
    losses, (image_emb, text_emb) = head.losses(feats, cls, [(448, 448)] * 4, captions, rows, boxes)
    assert set(losses) == {"loss_itc_image", "loss_itc_region"}
    both = torch.eye(3, dtype=torch.bool)
    both[1, 2] = both[2, 1] = True  # inputs 1 and 3 share their caption
    want_image = _reference_infonce(p5[rows], cls[rows], 0.07, both)
    want_region = _reference_infonce(p3[[0, 3]], cls[[0, 3]], 0.07, torch.eye(2, dtype=torch.bool))
    assert losses["loss_itc_image"].item() == pytest.approx(want_image, rel=1e-4)
    assert losses["loss_itc_region"].item() == pytest.approx(want_region, rel=1e-4)
    torch.testing.assert_close(image_emb, torch.nn.functional.normalize(p5[rows], dim=1))
    torch.testing.assert_close(text_emb, torch.nn.functional.normalize(cls[rows], dim=1))
    # the learned temperature gets a gradient and is kept in X-VLM's range
    (losses["loss_itc_image"] + losses["loss_itc_region"]).backward()
    assert head.temperature.grad.abs() > 0
    with torch.no_grad():
        head.temperature.fill_(5.0)
    assert head.current_temperature().item() == pytest.approx(0.5)


def _ddp_worker(rank, world, result_file):
    g = torch.Generator().manual_seed(2)
    vision, text = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    vision.requires_grad_(True)
    text.requires_grad_(True)
    part = slice(0, 3) if rank == 0 else slice(3, 3)  # worker 1 has no caption input
    loss = image_text_contrastive_loss(vision[part], text[part], torch.tensor(0.2))
    loss.backward()  # the gather's backward all-reduces on every worker, even an empty one
    dist.all_reduce(loss)
    if rank == 0:
        torch.save(loss / world, result_file)


@pytest.mark.heavy(8)
def test_itc_gathered_over_two_gloo_workers_one_without_captions(tmp_path):
    result = tmp_path / "result.pt"
    run_gloo_workers(_ddp_worker, 2, tmp_path, str(result))
    g = torch.Generator().manual_seed(2)
    vision, text = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    want = _reference_infonce(vision, text, 0.2, torch.eye(3, dtype=torch.bool))
    assert torch.load(result).item() == pytest.approx(want, rel=1e-5)


def test_itm_negatives_never_pair_an_image_with_its_own_words():
    assert shifted_negatives(["a", "b", "a", "c"]) == [1, 2, 3, 0]
    assert shifted_negatives(["a", "a", "b"]) == [2, 2, 0]
    assert shifted_negatives(["a", "a"]) == [None, None] and shifted_negatives([]) == []
    texts = ["a", "b", "a", "c"]
    sim = torch.zeros(4, 4)
    sim[0, 3] = 50.0  # image 0's hardest negative: text 3
    sim[1, 1] = 50.0  # its own text is never drawn, however similar
    g = torch.Generator().manual_seed(0)
    draws = [hard_negatives(sim, texts, g) for _ in range(300)]
    assert all(d[0] == 3 for d in draws)
    for k in range(4):
        assert all(texts[d[k]] != texts[k] for d in draws)
    # otherwise softmax over the allowed texts: image 1 picks 0, 2, 3 about equally
    share = sum(d[1] == 0 for d in draws) / len(draws)
    assert share == pytest.approx(1 / 3, abs=0.08)
    assert hard_negatives(torch.zeros(2, 2), ["a", "a"]) == [None, None]


def test_itm_loss_labels_matched_pairs_1_and_mismatched_0():
    torch.manual_seed(0)
    head = ImageTextMatchingHead(4, weight=0.5)
    pos, neg = torch.randn(3, 4), torch.randn(2, 4)
    logits = head(torch.cat([pos, neg])).tolist()
    labels = [1, 1, 1, 0, 0]
    want = (
        -sum(
            row[y] - math.log(math.exp(row[0]) + math.exp(row[1])) for row, y in zip(logits, labels)
        )
        / 5
    )
    assert head.loss(pos, neg).item() == pytest.approx(0.5 * want, rel=1e-5)
    # no mismatched pair: no loss (positives alone would teach "always matched"), still a graph
    zero = head.loss(pos, neg[:0])
    assert zero.item() == 0 and zero.requires_grad
    with pytest.raises(ValueError, match="ITM_NEGATIVES"):
        ImageTextMatchingHead(4, negatives="random")


# ------------------------------------------------------------------ in the model
_model = model_with_losses


@pytest.fixture(scope="module")
def plain():
    return _model()


def _caption_input(model, caption, boxes, spans, seed):
    x = make_input(model, caption, boxes, spans, seed=seed)
    x["phrase_spans"] = [[list(s)] for s in spans]  # what the mapper gives a dataset caption
    return x


def _batch(model):
    """A referring expression (one box), a caption (two boxes), a detection prompt."""
    expr = "the red circle left of the blue square"
    return [
        _caption_input(model, expr, [[10, 20, 70, 90]], [(4, 14)], seed=0),
        _caption_input(
            model,
            "a green triangle and a blue square",
            [[40, 40, 120, 150], [100, 30, 170, 120]],
            [(2, 16), (23, 34)],
            seed=1,
        ),
        make_input(
            model, "red circle. blue square. green triangle", [[30, 30, 90, 90]], [(0, 10)], seed=2
        ),
    ]


def test_switches_off_leave_parameters_and_losses_unchanged(plain):
    off = _model(ITC_WEIGHT=0.0, ITM_WEIGHT=0.0, ITM_NEGATIVES="hard")
    assert off.itc_head is None and off.itm_head is None
    assert set(off.state_dict()) == set(plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in off.state_dict().items())
    batch = _batch(plain)
    torch.manual_seed(1)
    base = plain(batch)
    torch.manual_seed(1)
    got = off(batch)
    assert set(base) == set(got) == GROUNDING_KEYS
    assert all(torch.equal(got[k], base[k]) for k in base)


def test_itc_trains_a_step_on_the_caption_inputs_only(plain):
    m = _model(ITC_WEIGHT=0.5, ITC_EMBED_DIM=16)
    assert {k.split(".")[0] for k in m.state_dict() if k not in plain.state_dict()} == {"itc_head"}
    batch = _batch(m)
    torch.manual_seed(1)
    losses = m(batch)
    torch.manual_seed(1)
    base = plain(batch)
    assert set(losses) == GROUNDING_KEYS | {"loss_itc_image", "loss_itc_region"}
    assert all(torch.equal(losses[k], base[k]) for k in GROUNDING_KEYS)  # grounding untouched
    assert all(torch.isfinite(v) for v in losses.values())
    # recompute from the definition: inputs 0 and 1 (captions) against the un-fused [CLS];
    # the region term has one pair (input 0's one box), whose InfoNCE is 0
    torch.manual_seed(1)  # the forward's random draws, if any, again
    images = m.preprocess_image(batch)
    feats = m.extract_features(images)
    _, lang = m.encode_text([x["caption"] for x in batch])
    whole = [torch.tensor([[0.0, 0.0, 192.0, 160.0]])] * 2
    pooled = m.itc_head.pooler(
        feats[:3], [Boxes(whole[0]), Boxes(whole[1]), Boxes(torch.zeros(0, 4))]
    )
    vision = m.itc_head.vision_proj(pooled.flatten(1))
    text = m.itc_head.text_proj(lang["hidden"][:2, 0])
    want = _reference_infonce(vision.detach(), text.detach(), 0.07, torch.eye(2, dtype=torch.bool))
    assert losses["loss_itc_image"].item() == pytest.approx(0.5 * want, rel=1e-4)
    assert losses["loss_itc_region"].item() == pytest.approx(0.0, abs=1e-6)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    before = m.itc_head.vision_proj.weight.detach().clone()
    (losses["loss_itc_image"] + losses["loss_itc_region"]).backward()
    assert m.itc_head.text_proj.weight.grad.abs().sum() > 0
    patch_embed = m.backbone.bottom_up.patch_embed.proj.weight
    assert patch_embed.grad.abs().sum() > 0  # the image side learns through ITC
    opt.step()
    assert not torch.equal(before, m.itc_head.vision_proj.weight)


@pytest.mark.parametrize("negatives", ["shift", "hard"])
def test_itm_trains_a_step_with_a_second_tower_pass_on_mismatched_pairs(plain, negatives):
    extra = dict(ITC_WEIGHT=1.0, ITC_EMBED_DIM=16) if negatives == "hard" else {}
    m = _model(ITM_WEIGHT=2.0, ITM_NEGATIVES=negatives, **extra)
    batch = _batch(m)
    torch.manual_seed(1)
    losses = m(batch)
    torch.manual_seed(1)
    base = plain(batch)
    assert GROUNDING_KEYS | {"loss_itm"} <= set(losses)
    assert all(torch.equal(losses[k], base[k]) for k in GROUNDING_KEYS)
    assert all(torch.isfinite(v) for v in losses.values())
    # two caption inputs: each one's mismatched caption is the other's (the only choice, also
    # for "hard"); the detection prompt takes no part
    torch.manual_seed(1)  # the forward's random draws, if any, again
    images = m.preprocess_image(batch)
    feats = m.extract_features(images)
    _, lang = m.encode_text([x["caption"] for x in batch])
    with torch.no_grad():
        pos = m.head(feats, lang)["text"][:2, 0]
        _, neg = m.head.tower(
            [f[[0, 1]] for f in feats], lang["hidden"][[1, 0]], lang["masks"][[1, 0]]
        )
        logits = m.itm_head(torch.cat([pos, neg[:, 0]]))
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 1, 0, 0]))
    assert losses["loss_itm"].item() == pytest.approx(2.0 * want.item(), rel=1e-4)
    losses["loss_itm"].backward()
    assert m.itm_head.classifier[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.head.tower.parameters())


def test_itm_config_errors_name_the_keys():
    with pytest.raises(ValueError, match="ITC_WEIGHT"):
        _model(ITM_WEIGHT=1.0, ITM_NEGATIVES="hard")
    cfg = tiny_cfg(fuse=False)
    cfg.MODEL.GLIP.LOSSES.ITM_WEIGHT = 1.0
    with pytest.raises(ValueError, match="EARLY_FUSE_ON"):
        build_model(cfg)


def test_official_checkpoint_loads_with_the_alignment_heads_reported_missing(tmp_path, plain):
    from glip_d2.checkpoint import GLIPCheckpointer
    from tests.predictor.test_convert import to_official

    sd = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save({"model": to_official(sd)}, path)
    m = _model(ITC_WEIGHT=1.0, ITM_WEIGHT=1.0, ITM_NEGATIVES="hard")
    fresh = {
        k: v.clone() for k, v in m.state_dict().items() if k.startswith(("itc_head.", "itm_head."))
    }
    ckpt = GLIPCheckpointer(m)
    incompatible = ckpt._load_model(ckpt._load_file(str(path)))
    assert sorted(incompatible.missing_keys) == sorted(fresh)
    assert {k.split(".")[0] for k in fresh} == {"itc_head", "itm_head"}
    assert not incompatible.unexpected_keys
    own = m.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert all(torch.equal(own[k], v) for k, v in fresh.items())  # initialised, untouched


def test_no_pair_gives_a_zero_loss_not_a_crash():
    """A batch whose captions name no single box has no region-text pair: the positives are
    (0, 0) and the loss is 0 (it crashed at iteration 128 of the shapes ITC run)."""
    from glip_d2.modeling.heads.itc import image_text_contrastive_loss, same_text_positives

    positives = same_text_positives([])
    assert positives.shape == (0, 0)
    vision = torch.zeros(0, 8, requires_grad=True)
    loss = image_text_contrastive_loss(vision, torch.zeros(0, 8), torch.tensor(0.07), positives)
    assert loss.item() == 0.0
    loss.backward()
    assert same_text_positives(["a", "b", "a"]).tolist() == [
        [True, False, True], [False, True, False], [True, False, True]]


def test_itm_without_a_mismatched_pair_warns_once_that_it_trains_nothing(caplog):
    """One caption image per worker (here: one caption input and a detection prompt) gives ITM
    no negative: loss_itm is 0, and the log says so once instead of training nothing silently."""
    import logging

    m = _model(ITM_WEIGHT=2.0, ITM_NEGATIVES="shift")
    batch = [_batch(m)[0], _batch(m)[2]]
    with caplog.at_level(logging.WARNING, logger="glip_d2.modeling.meta_arch.glip"):
        first = m(batch)
        m(batch)
    assert first["loss_itm"].item() == 0.0
    warned = [r for r in caplog.records if "no mismatched pair" in r.getMessage()]
    assert len(warned) == 1
