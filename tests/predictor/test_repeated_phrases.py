"""locate_phrases: a phrase given several times takes as many different occurrences of it, in
whatever case or order the caption holds them."""

import pytest

from glip_d2.predictor import locate_phrases


def test_a_repeated_phrase_takes_each_occurrence_whatever_its_case():
    caption = "The Dog and the dog"
    spans = locate_phrases(caption, ["the dog", "the dog"])
    assert sorted(spans) == [(0, 7), (12, 19)]
    assert spans[0] == (12, 19)  # the exact-case occurrence first, as for a phrase given once


def test_a_repeated_phrase_finds_an_earlier_occurrence_of_lower_priority():
    # the whole word comes after the occurrence inside "hotdog"; both are found
    assert locate_phrases("hotdog and dog", ["dog", "dog"]) == [(11, 14), (3, 6)]
    assert sorted(locate_phrases("dog hotdog dog", ["dog"] * 3)) == [(0, 3), (7, 10), (11, 14)]


def test_a_phrase_given_more_often_than_it_occurs_is_still_an_error():
    with pytest.raises(ValueError, match="given more often than it occurs"):
        locate_phrases("The Dog and the dog", ["dog"] * 3)
    assert locate_phrases("a dog and a dog", ["a dog", "a dog"]) == [(0, 5), (10, 15)]
