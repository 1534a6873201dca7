import pytest
import torch

from glip_d2.text import aggregate_token_scores


def _scores():
    # (batch=2, anchors=2, tokens=4)
    return torch.tensor(
        [[[0.1, 0.2, 0.6, 0.9], [0.5, 0.5, 0.0, 1.0]], [[1.0, 0.0, 0.3, 0.3], [0.2, 0.4, 0.8, 0.6]]]
    )


def test_mean_and_max_aggregation_values():
    positive_map = torch.zeros(2, 256, dtype=torch.bool)
    positive_map[0, 1:3] = True  # label 0 = tokens 1, 2
    positive_map[1, 3] = True  # label 1 = token 3
    mean = aggregate_token_scores(_scores(), positive_map, "mean")
    assert mean.shape == (2, 2, 2)
    torch.testing.assert_close(
        mean, torch.tensor([[[0.4, 0.9], [0.25, 1.0]], [[0.15, 0.3], [0.6, 0.6]]])
    )
    best = aggregate_token_scores(_scores(), positive_map, "MAX")
    torch.testing.assert_close(
        best, torch.tensor([[[0.6, 0.9], [0.5, 1.0]], [[0.3, 0.3], [0.8, 0.6]]])
    )


def test_mean_matches_official_float_map():
    positive_map = torch.zeros(1, 6)
    positive_map[0, [0, 2, 3]] = 1 / 3  # official normalised map
    scores = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    expected = scores[:, [0, 2, 3]].mean(-1, keepdim=True)
    torch.testing.assert_close(aggregate_token_scores(scores, positive_map), expected)


def test_aggregation_errors():
    positive_map = torch.zeros(2, 3, dtype=torch.bool)
    positive_map[0, 0] = True
    with pytest.raises(ValueError, match=r"Labels \[1\] have no token"):
        aggregate_token_scores(torch.rand(2, 3), positive_map)
    with pytest.raises(ValueError, match=r"\(num_labels, >= 4\).*\(2, 3\)"):
        aggregate_token_scores(torch.rand(2, 4), positive_map)
    with pytest.raises(ValueError, match="Unknown score aggregation 'median'"):
        aggregate_token_scores(torch.rand(2, 3), positive_map, "median")


def test_min_and_geometric_mean_values():
    positive_map = torch.zeros(2, 256, dtype=torch.bool)
    positive_map[0, 1:3] = True  # label 0 = tokens 1, 2
    positive_map[1, 3] = True  # label 1 = token 3
    worst = aggregate_token_scores(_scores(), positive_map, "min")
    torch.testing.assert_close(
        worst, torch.tensor([[[0.2, 0.9], [0.0, 1.0]], [[0.0, 0.3], [0.4, 0.6]]])
    )
    geo = aggregate_token_scores(_scores(), positive_map, "GEO_MEAN")
    torch.testing.assert_close(geo[0, 0], torch.tensor([(0.2 * 0.6) ** 0.5, 0.9]))
    torch.testing.assert_close(geo[1, 0], torch.tensor([0.0, 0.3]), atol=1e-6, rtol=0)


def test_max_and_min_equal_a_per_label_loop_on_random_maps():
    """The padded token index that max / min gather through, against the obvious loop over
    labels (labels of 1..5 tokens, scattered, at any positions)."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(7, 40, generator=gen)
    positive_map = torch.rand(9, 64, generator=gen) < 0.08
    positive_map[torch.arange(9), torch.randint(0, 40, (9,), generator=gen)] = True
    for mode, reduce in (("max", torch.amax), ("min", torch.amin)):
        expected = torch.stack(
            [reduce(scores[:, row[:40].nonzero().flatten()], dim=-1) for row in positive_map], -1
        )
        torch.testing.assert_close(aggregate_token_scores(scores, positive_map, mode), expected)


def test_empty_label_zero_scores_every_mode_zero():
    positive_map = torch.tensor([[True, True, False], [False, False, False]])
    scores = torch.tensor([[0.4, 0.8, 0.9]])
    for mode in ("mean", "max", "min", "geo_mean"):
        out = aggregate_token_scores(scores, positive_map, mode, empty_label="zero")
        assert out[0, 1] == 0.0, mode
        assert out[0, 0] > 0.3, mode
    with pytest.raises(ValueError, match="empty_label must be"):
        aggregate_token_scores(scores, positive_map, empty_label="skip")


def test_geometric_mean_in_float16_is_not_poisoned_by_a_zero_score():
    # A token score of 0 (a float16 sigmoid underflows for logits below about -17) must not turn
    # the geometric mean of every other label into NaN.
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.8]], dtype=torch.float16)
    positive_map = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    got = aggregate_token_scores(scores, positive_map, "geo_mean")
    assert got.dtype == torch.float16
    expected = aggregate_token_scores(scores.float(), positive_map, "geo_mean")
    torch.testing.assert_close(got.float(), expected, atol=1e-3, rtol=1e-3)
