import numpy as np
import pytest

from glip_d2.text import mentions_left_right, swap_left_right, validate_spans


def test_validate_spans_accepts_lists_and_numpy():
    assert validate_spans("a cat", [[0, 1], np.array([2, 5])]) == [(0, 1), (2, 5)]


@pytest.mark.parametrize("span", [(3, 9), (-1, 2), (4, 4), (3, 2)])
def test_validate_spans_rejects_spans_outside_the_caption(span):
    with pytest.raises(ValueError, match=r"of image 17 lies outside its caption of 5 characters"):
        validate_spans("a cat", [span], image_id=17)


def test_validate_spans_rejects_malformed():
    with pytest.raises(ValueError, match=r"\[1, 2, 3\] of image 'x' is not a \[start, end\) pair"):
        validate_spans("a cat", [[1, 2, 3]], image_id="x")
    with pytest.raises(ValueError, match="not a"):
        validate_spans("a cat", [[0.5, 2]])


def test_swap_left_right_moves_spans():
    caption = "the dog left of the Right cat, leftover rightmost"
    spans = [[(4, 7)], [(8, 12)], [(20, 29)], [(8, 29)], [(31, 49)]]
    assert mentions_left_right(caption) and not mentions_left_right("leftover rightmost")
    new, new_spans = swap_left_right(caption, spans)
    assert new == "the dog right of the Left cat, leftover rightmost"
    assert [[new[s:e] for s, e in group] for group in new_spans] == [
        ["dog"],
        ["right"],
        ["Left cat"],
        ["right of the Left cat"],
        ["leftover rightmost"],
    ]
    # swapping twice restores everything
    assert swap_left_right(new, new_spans) == (caption, spans)


def test_swap_left_right_snaps_inner_boundaries_and_keeps_others():
    new, spans = swap_left_right("LEFT side", [[(1, 3)], [(5, 9)]])
    assert new == "RIGHT side"
    assert spans == [[(0, 5)], [(6, 10)]]
    assert swap_left_right("no sides", [[(0, 2)]]) == ("no sides", [[(0, 2)]])
