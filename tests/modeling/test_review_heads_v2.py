"""Review round 2 of the heads: post-processing, the GLIPv2 / X-VLM losses, ATSS edge cases."""
import pytest
import torch

from glip_d2.modeling.heads.postprocess import label_scores_from_logits, select_detections

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_level(token_logits, positive_map, **kwargs):
    """select_detections on one 2 x 2 level of one 64 x 64 image, zero deltas, centerness 1."""
    hw = token_logits.shape[0]
    anchors = torch.tensor([[0.0, 0.0, 15.0, 15.0]]).repeat(hw, 1) + torch.arange(hw)[:, None] * 16.0
    return select_detections(
        [torch.zeros(1, 4, 1, hw)], [torch.full((1, 1, 1, hw), 20.0)], [token_logits[None]],
        [anchors], [positive_map], [(64, 64 * hw)], **kwargs,
    )[0]


def test_mean_logit_never_detects_a_label_without_tokens():
    """MEAN_LOGIT gave a label with no token among the scored ones (its span cut off by the token
    limit) sigmoid(0) = 0.5 at every location: it passed the 0.05 threshold everywhere and its
    detections (score ~0.71) pushed the real ones out of the top detections. A label that cannot
    be scored scores 0, as in the other aggregations."""
    logits = torch.tensor([[-4.0, 3.0, -4.0], [-4.0, -4.0, -4.0]])  # (2 locations, 3 tokens)
    pmap = torch.zeros(2, 5, dtype=torch.bool)
    pmap[0, 1] = True  # label 0 names token 1; label 1's tokens (3, 4) lie beyond the 3 scored
    pmap[1, 3:] = True
    scores = label_scores_from_logits(logits, pmap, "MEAN_LOGIT")
    torch.testing.assert_close(scores[:, 1], torch.zeros(2))
    torch.testing.assert_close(scores[:, 0], torch.tensor([3.0, -4.0]).sigmoid())
    for agg in ("MEAN", "MAX", "MIN", "GEO_MEAN", "MEAN_LOGIT"):
        det = _one_level(logits, pmap, score_agg=agg)
        assert det["labels"].tolist() == [0], agg
