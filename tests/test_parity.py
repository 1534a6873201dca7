"""GLIP-T(C) against the official implementation: every recorded tensor of the fixture in
../shared/parity (recorded from microsoft/GLIP on deterministic weights; see its README).

The model is built from configs/glip_swin_t.yaml, the official-key weights go through
glip_d2's converter, and the inputs through glip_d2's own image preprocessing, prompt building
and tokenization.
"""
import copy
import importlib.util

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model, detector_postprocess

from glip_d2 import add_glip_config
from glip_d2.checkpoint import convert_official_state_dict
from glip_d2.modeling.heads import select_detections
from tests.conftest import PARITY_NPZ

PARITY_DIR = PARITY_NPZ.parent
# README "suggested tolerance": max abs diff / max abs(ref), about 10x the threading noise.
TOL = {"input": 1e-5, "swin": 1e-5, "fpn": 1e-5, "anchors": 0.0, "lang": 1e-5, "tower0": 2e-5,
       "tower_lang": 2e-5, "tower": 5e-4, "head": 5e-4, "logits": 5e-4}


def _rel(ours, ref):
    ours = ours.detach().cpu().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs recorded {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


class Report:
    """Comparisons in pipeline order; fails naming the FIRST tensor that deviates."""

    def __init__(self):
        self.rows = []

    def check(self, name, ours, ref, tol):
        self.rows.append((name, _rel(ours, ref), tol))

    def assert_ok(self):
        print("\n".join(f"{n}: {d:.3g}" for n, d, _ in self.rows))  # shown with pytest -s
        for name, dev, tol in self.rows:
            assert dev <= tol, (
                f"first deviating tensor: {name}: max|diff|/max|ref| = {dev:.3g} > tolerance {tol:g}\n"
                + "\n".join(f"  {n}: {d:.3g} (tol {t:g})" for n, d, t in self.rows)
            )


def load_parity_weights(parity_npz):
    """The fixture's official-key weights (``../shared/parity/weights_recipe.py``), checked against
    the recorded per-tensor checksums."""
    spec = importlib.util.spec_from_file_location("weights_recipe", PARITY_DIR / "weights_recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    official, skipped = recipe.build_state_dict(str(PARITY_DIR / "official_keys_glip_t.txt"))
    # the recipe reproduces the recorded per-tensor checksums exactly
    keys = [str(k) for k in parity_npz["recipe_keys"]]
    assert keys == list(official)
    sums = np.array([float(official[k].double().sum()) for k in keys])
    np.testing.assert_allclose(sums, parity_npz["recipe_sum"], rtol=1e-12, atol=1e-9)
    return official


def build_parity_model(official, overrides=()):
    """GLIP-T(C) from configs/glip_swin_t.yaml (CPU, random text weights) with the fixture's
    weights loaded through the converter."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file("configs/glip_swin_t.yaml")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED", "False",
        "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480", "MODEL.ATSS.INFERENCE_TH", "0.0",
        "MODEL.ATSS.DETECTIONS_PER_IMG", "100", "DATASETS.TEST", "()", *overrides,
    ])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    converted, report = convert_official_state_dict(official)
    assert report["unmapped"] == []
    assert sorted(k for k, _ in report["ignored"]) == ["rpn.head.cls_logits.bias", "rpn.head.cls_logits.weight"]
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == []
    # only model-built buffers are not in the recipe (Swin relative_position_index)
    assert missing and all(k.endswith("relative_position_index") for k in missing), missing
    return cfg, model


@pytest.fixture(scope="module")
def parity_model(parity_npz):
    return build_parity_model(load_parity_weights(parity_npz))


def _run_case(cfg, model, z, case):
    # glip_d2's own test-time preprocessing: read the PNG as BGR, ResizeShortestEdge(320, 480)
    image = utils.read_image(str(PARITY_DIR / "glip_t_parity_image.png"), format="BGR")
    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image).apply_image(image)
    inp = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": 320, "width": 480}
    if case == "detection":
        model.set_vocabulary([str(n) for n in z["detection_label_names"]])
    else:
        inp["caption"] = str(z["grounding_caption"])
        inp["phrase_spans"] = [[s.tolist()] for s in z["grounding_char_spans"]]

    caps = {}

    def keep(name):
        return lambda mod, args, out: caps.__setitem__(name, out)

    hooks = [model.backbone.bottom_up.register_forward_hook(keep("swin")),
             model.backbone.register_forward_hook(keep("fpn")),
             model.language_backbone.register_forward_hook(keep("lang")),
             model.head.register_forward_hook(keep("head"))]
    for i, block in enumerate(model.head.tower.blocks):
        for part in ("fuse", "text_layer", "dyconv"):
            hooks.append(getattr(block, part).register_forward_hook(keep((i, part))))
    with torch.no_grad():
        images = model.preprocess_image([inp])
        raw = model.inference([inp], do_postprocess=False)[0]
        final = detector_postprocess(copy.deepcopy(raw), inp["height"], inp["width"])
    for h in hooks:
        h.remove()
    return images, caps, raw, final


@pytest.mark.heavy(12)
@pytest.mark.parametrize("case", ["detection", "grounding"])
def test_parity_with_official_glip_t(parity_model, parity_npz, case):
    cfg, model = parity_model
    z = parity_npz
    images, caps, raw, final = _run_case(cfg, model, z, case)
    n_tok = int(z[f"{case}_num_tokens"])
    rep = Report()

    rep.check("input_tensor", images.tensor, z["input_tensor"], TOL["input"])
    assert list(images.image_sizes[0]) == z["image_size_hw"].tolist()
    for i, lvl in enumerate((3, 4, 5)):
        rep.check(f"swin_C{lvl}", caps["swin"][f"stage{lvl}"], z[f"swin_C{lvl}"], TOL["swin"])
    for lvl in range(3, 8):
        rep.check(f"fpn_P{lvl}", caps["fpn"][f"p{lvl}"], z[f"fpn_P{lvl}"], TOL["fpn"])
    head = caps["head"]
    for i, lvl in enumerate(range(3, 8)):
        rep.check(f"anchors_P{lvl}", head["anchors"][i], z[f"anchors_P{lvl}"], TOL["anchors"])
    # our own prompt + tokenization must give the recorded ids exactly
    tok = model.tokenizer([str(z[f"{case}_caption"])], padding="max_length", max_length=256, truncation=True)
    assert tok["input_ids"][0] == z[f"{case}_input_ids"][0].tolist()
    rep.check(f"{case}_lang_backbone_hidden", caps["lang"]["hidden"][:, :n_tok], z[f"{case}_lang_backbone_hidden"], TOL["lang"])
    for i, lvl in enumerate(range(3, 8)):
        rep.check(f"{case}_tower0_fuse_visual_P{lvl}", caps[(0, "fuse")][0][i], z[f"{case}_tower0_fuse_visual_P{lvl}"], TOL["tower0"])
    for i, lvl in enumerate(range(3, 8)):
        rep.check(f"{case}_tower0_dyconv_visual_P{lvl}", caps[(0, "dyconv")][i], z[f"{case}_tower0_dyconv_visual_P{lvl}"], TOL["tower0"])
    per_module = []
    for b in range(len(model.head.tower.blocks)):
        per_module += [caps[(b, "fuse")][1], caps[(b, "text_layer")], caps[(b, "text_layer")]]
    rep.check(f"{case}_tower_lang_per_module", torch.cat(per_module)[:, :n_tok], z[f"{case}_tower_lang_per_module"], TOL["tower_lang"])
    rep.check(f"{case}_tower_lang_hidden", head["text"][:, :n_tok], z[f"{case}_tower_lang_hidden"], TOL["tower_lang"])
    for i, lvl in enumerate(range(3, 8)):
        rep.check(f"{case}_tower_visual_P{lvl}", head["visual"][i], z[f"{case}_tower_visual_P{lvl}"], TOL["tower"])
        rep.check(f"{case}_bbox_reg_P{lvl}", head["box_regression"][i], z[f"{case}_bbox_reg_P{lvl}"], TOL["head"])
        rep.check(f"{case}_centerness_P{lvl}", head["centerness"][i], z[f"{case}_centerness_P{lvl}"], TOL["head"])
        rep.check(f"{case}_dot_logits_P{lvl}", head["token_logits"][i][..., :n_tok], z[f"{case}_dot_logits_P{lvl}"], TOL["logits"])
    rep.assert_ok()

    # candidates entering NMS: same (anchor, label) set, scores within 1e-4, boxes within 0.01 px
    pmap = torch.from_numpy(z[f"{case}_positive_map"])
    cand = select_detections(head["box_regression"], head["centerness"], head["token_logits"], head["anchors"],
                             [pmap], [(320, 480)], score_thresh=0.0, apply_nms=False)[0]
    _compare_keyed(cand, z, f"{case}_prenms", n_expected=len(z[f"{case}_prenms_scores"]))

    # final detections (before and after Detectron2's detector_postprocess)
    det = dict(boxes=raw.pred_boxes.tensor - torch.tensor([0.0, 0, 1, 1]), scores=raw.scores,
               labels=raw.pred_classes, anchor_index=raw.anchor_index)
    _compare_keyed(det, z, f"{case}_det", n_expected=100)
    assert len(final) == 100 and final.image_size == (320, 480)
    assert (final.scores[:-1] >= final.scores[1:]).all()


def _compare_keyed(ours, z, prefix, n_expected):
    keys = list(zip(ours["anchor_index"].tolist(), ours["labels"].tolist()))
    ref_keys = list(zip(z[f"{prefix}_anchor_index"].tolist(), (z[f"{prefix}_labels"] - 1).tolist()))
    assert len(ref_keys) == n_expected
    assert set(keys) == set(ref_keys), f"{prefix}: {len(set(keys) ^ set(ref_keys))} (anchor, label) keys differ"
    pos = {k: i for i, k in enumerate(keys)}
    order = torch.tensor([pos[k] for k in ref_keys])
    score_dev = float((ours["scores"][order] - torch.from_numpy(z[f"{prefix}_scores"])).abs().max())
    box_dev = float((ours["boxes"][order] - torch.from_numpy(z[f"{prefix}_boxes"])).abs().max())
    assert score_dev <= 1e-4, f"{prefix}_scores deviate by {score_dev:.3g} (> 1e-4)"
    assert box_dev <= 1e-2, f"{prefix}_boxes deviate by {box_dev:.3g} px (> 0.01)"


@pytest.mark.heavy(7)
@pytest.mark.parametrize("case", ["detection", "grounding"])
def test_parity_of_the_sdpa_fast_path(parity_model, parity_npz, case):
    """MODEL.DYHEAD.FUSE_CONFIG.ATTENTION sdpa on the fixture: the same final 100 detections as the
    official implementation, scores within 1e-4 and boxes within 0.01 px (the parity bound)."""
    cfg, model = parity_model
    attns = [b.fuse.attn for b in model.head.tower.blocks]
    try:
        for a in attns:
            a.impl = "sdpa"
        _, caps, raw, _ = _run_case(cfg, model, parity_npz, case)
    finally:
        for a in attns:
            a.impl = "official"
    det = dict(boxes=raw.pred_boxes.tensor - torch.tensor([0.0, 0, 1, 1]), scores=raw.scores,
               labels=raw.pred_classes, anchor_index=raw.anchor_index)
    _compare_keyed(det, parity_npz, f"{case}_det", n_expected=100)
    n_tok = int(parity_npz[f"{case}_num_tokens"])
    for i, lvl in enumerate(range(3, 8)):
        dev = _rel(caps["head"]["token_logits"][i][..., :n_tok], parity_npz[f"{case}_dot_logits_P{lvl}"])
        assert dev <= TOL["logits"], f"{case} dot logits P{lvl}: {dev:.3g}"
