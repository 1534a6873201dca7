"""GLIPv2 losses: inter-image region-word contrastive (single process, 2-process gloo DDP) and
masked language modelling (masking rules, head, checkpoint loading)."""
import copy
import math

import pytest
import torch
import torch.distributed as dist

from glip_d2.modeling.heads.contrastive import (
    gathered_region_word_contrastive_loss,
    region_word_contrastive_loss,
)
from glip_d2.modeling.heads.mlm import IGNORE, mask_tokens, maskable_tokens
from tests.gloo import run_gloo_workers
from tests.helpers import make_input, model_with_losses

CAPTION = "red circle. blue square. green triangle"


def _reference_loss(regions, words, targets, scale):
    """Loops over rows and columns, written from the definition."""
    logits = [[scale * float(regions[r] @ words[w]) for w in range(len(words))] for r in range(len(regions))]

    def ce(rows, pos):
        total, n = 0.0, 0
        for row, p in zip(rows, pos):
            if not any(p):
                continue
            log_z = math.log(sum(math.exp(v) for v in row))
            total += -sum(v - log_z for v, q in zip(row, p) if q) / sum(p)
            n += 1
        return total / max(n, 1)

    t = targets.tolist()
    cols = [list(c) for c in zip(*logits)]
    return 0.5 * (ce(logits, t) + ce(cols, [list(c) for c in zip(*t)]))


def _hand_made(seed=0):
    """Two images: image 0 has 3 regions and 4 words, image 1 has 2 regions and 3 words."""
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(5, 8, generator=g)
    words = torch.randn(7, 8, generator=g)
    targets = torch.zeros(5, 7, dtype=torch.bool)
    targets[0, 1] = targets[1, 1] = targets[1, 2] = targets[2, 3] = True  # image 0 (words 0-3)
    targets[3, 5] = targets[4, 5] = True  # image 1 (words 4-6); region-less words stay out
    return regions, words, targets


def test_contrastive_loss_matches_a_straightforward_computation():
    regions, words, targets = _hand_made()
    got = region_word_contrastive_loss(regions, words, targets, scale=0.7)
    assert got.item() == pytest.approx(_reference_loss(regions, words, targets, 0.7), rel=1e-5)
    # one process: the gathered version is the same loss
    same = gathered_region_word_contrastive_loss(regions, words, targets, torch.tensor(0.7))
    assert same.item() == pytest.approx(got.item(), rel=1e-6)


def test_contrastive_loss_prefers_aligned_features():
    regions, words, targets = _hand_made()
    aligned = words[targets.float().argmax(1)] * 3  # each region = its (first) positive word
    assert region_word_contrastive_loss(aligned, words, targets) < region_word_contrastive_loss(
        regions, words, targets
    )


def _ddp_worker(rank, world, result_file):
    regions, words, targets = _hand_made()
    # rank 0 holds image 0, rank 1 image 1 (different numbers of regions and words)
    rs, ws = [(0, 3), (3, 5)][rank], [(0, 4), (4, 7)][rank]
    r = regions[rs[0] : rs[1]].clone().requires_grad_(True)
    w = words[ws[0] : ws[1]].clone().requires_grad_(True)
    loss = gathered_region_word_contrastive_loss(r, w, targets[rs[0] : rs[1], ws[0] : ws[1]], torch.tensor(0.7))
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean /= world
    grads = [torch.zeros(5, 8), torch.zeros(7, 8)]
    grads[0][rs[0] : rs[1]] = r.grad / world  # what DDP's gradient averaging gives
    grads[1][ws[0] : ws[1]] = w.grad / world
    for g in grads:
        dist.all_reduce(g)
    if rank == 0:
        torch.save({"loss": mean, "grad_regions": grads[0], "grad_words": grads[1]}, result_file)


@pytest.mark.heavy(8)
def test_contrastive_loss_gathered_over_two_gloo_workers_equals_the_whole_batch(tmp_path):
    result = tmp_path / "result.pt"
    run_gloo_workers(_ddp_worker, 2, tmp_path, str(result))
    got = torch.load(result)
    regions, words, targets = _hand_made()
    regions.requires_grad_(True)
    words.requires_grad_(True)
    want = region_word_contrastive_loss(regions, words, targets, scale=0.7)
    want.backward()
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(got["grad_regions"], regions.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["grad_words"], words.grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ in the model
def _batch(model):
    return [
        make_input(model, CAPTION, [[10, 20, 70, 90], [100, 30, 170, 120]], [(0, 10), (12, 23)], seed=0),
        make_input(model, CAPTION, [[40, 40, 120, 150]], [(25, 39)], seed=1),
    ]


_model = model_with_losses


@pytest.fixture(scope="module")
def plain():
    return _model()


def test_contrastive_loss_in_the_model_equals_its_definition(plain):
    m = _model(CONTRASTIVE_WEIGHT=0.5)
    assert set(m.state_dict()) == set(plain.state_dict())  # no new parameters
    batch = _batch(m)
    torch.manual_seed(1)
    losses = m(batch)
    torch.manual_seed(1)
    base = plain(batch)
    for k, v in base.items():  # the grounding losses are untouched
        assert torch.allclose(losses[k], v), k
    # recompute from the head's outputs with the model's own ATSS assignment
    from glip_d2.modeling.heads import atss_assign, box_coder

    torch.manual_seed(1)  # the same dropout draws as in the forward above
    images = m.preprocess_image(batch)
    _, lang = m.encode_text([x["caption"] for x in batch])
    out = m.head(m.extract_features(images), lang)
    regions, words, rows = [], [], []
    n_words = 0
    for b, x in enumerate(batch):
        gt = box_coder.to_official(x["instances"].gt_boxes.tensor)
        assigned = atss_assign(out["anchors"], gt, m.head.topk)
        feats = torch.cat(out["region_features"], 1)[b]
        real = out["text_mask"][b] > 0
        pmap = x["instances"].gt_positive_map[:, : real.numel()][:, real]
        for a in (assigned >= 0).nonzero()[:, 0].tolist():
            regions.append(feats[a])
            rows.append((n_words, pmap[assigned[a]]))
        words.append(out["projected_tokens"][b][real])
        n_words += int(real.sum())
    targets = torch.zeros(len(regions), n_words, dtype=torch.bool)
    for i, (off, row) in enumerate(rows):
        targets[i, off : off + row.numel()] = row
    want = region_word_contrastive_loss(
        torch.stack(regions), torch.cat(words), targets, float(1 / m.head.scorer.log_scale.detach().exp())
    )
    assert losses["loss_contrastive"].item() == pytest.approx(0.5 * want.item(), rel=1e-4)
    losses["loss_contrastive"].backward()
    assert m.head.scorer.proj_text.weight.grad.abs().sum() > 0


def test_mlm_masks_only_tokens_outside_positive_spans_and_never_special_ones(plain):
    tok = plain.tokenizer
    caption = "a small red circle left of a blue square and some other words here"
    inst = make_input(plain, caption, [[10, 10, 50, 50], [60, 60, 90, 90]], [(8, 18), (29, 40)])["instances"]
    pmap = inst.gt_positive_map.clone()
    ids = tok([caption] * 400, return_tensors="pt", padding="max_length", max_length=24)
    positive = pmap[:, :24].any(0).expand(400, -1)
    maskable = maskable_tokens(ids["input_ids"], ids["attention_mask"], positive, tok.all_special_ids)
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids["input_ids"], maskable, tok.mask_token_id, len(tok), 0.15, g)
    chosen = labels != IGNORE
    assert not (chosen & ~maskable).any()
    assert torch.equal(masked[~chosen], ids["input_ids"][~chosen])
    assert torch.equal(labels[chosen], ids["input_ids"][chosen])
    special = torch.isin(ids["input_ids"], torch.tensor(tok.all_special_ids))
    assert special.any() and not chosen[special].any() and not chosen[positive].any()
    assert chosen.float().sum() / maskable.float().sum() == pytest.approx(0.15, abs=0.02)
    share_mask = (masked[chosen] == tok.mask_token_id).float().mean()
    assert share_mask == pytest.approx(0.8, abs=0.06)
    # the masking keeps every token in place, so the positive maps of the prompt still hold
    from glip_d2.text import create_positive_map

    again = create_positive_map(ids, [[(8, 18)], [(29, 40)]], max_len=24)
    assert torch.equal(again, pmap[:, :24])


def test_mlm_loss_trains_the_head_and_leaves_positive_maps_alone(plain):
    m = _model(MLM_WEIGHT=1.0, MLM_PROBABILITY=0.5)
    assert {k for k in m.state_dict() if k not in plain.state_dict()} == {
        "mlm_head.transform.0.weight", "mlm_head.transform.0.bias", "mlm_head.transform.2.weight",
        "mlm_head.transform.2.bias", "mlm_head.decoder.weight", "mlm_head.decoder.bias",
    }
    batch = _batch(m)
    maps = [copy.deepcopy(x["instances"].gt_positive_map) for x in batch]
    torch.manual_seed(3)
    losses = m(batch)
    assert losses["loss_mlm"] > 0 and torch.isfinite(losses["loss_mlm"])
    assert losses["loss_mlm"].item() == pytest.approx(math.log(m.mlm_head.decoder.out_features), rel=0.2)
    for x, pm in zip(batch, maps):
        assert torch.equal(x["instances"].gt_positive_map, pm)
    losses["loss_mlm"].backward()
    assert m.mlm_head.decoder.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.head.tower.parameters())


@pytest.mark.parametrize("probability", [0.0, 1.5, -0.1, float("nan")])
def test_mlm_probability_outside_0_1_is_refused_when_the_mlm_loss_is_on(probability):
    with pytest.raises(ValueError, match=r"MLM_PROBABILITY .* is not a probability in \(0, 1\]"):
        model_with_losses(MLM_WEIGHT=1.0, MLM_PROBABILITY=probability)
    model_with_losses(MLM_WEIGHT=0.0, MLM_PROBABILITY=probability)  # off: the key is unused


def test_official_checkpoint_loads_into_a_model_with_the_new_heads(tmp_path, plain):
    from glip_d2.checkpoint import GLIPCheckpointer
    from tests.predictor.test_convert import to_official

    sd = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save({"model": to_official(sd)}, path)
    m = _model(MLM_WEIGHT=1.0, CONTRASTIVE_WEIGHT=1.0)
    ckpt = GLIPCheckpointer(m)
    data = ckpt._load_file(str(path))
    incompatible = ckpt._load_model(data)
    assert sorted(incompatible.missing_keys) == sorted(k for k in m.state_dict() if k.startswith("mlm_head."))
    assert not incompatible.unexpected_keys
    own = m.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
