"""Stop strings found across decoded pieces."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.stop import StopHit, StopMatcher


def feed_all(stops, pieces):
    matcher = StopMatcher(stops)
    for piece in pieces:
        hit = matcher.feed(piece)
        if hit is not None:
            return matcher, hit
    return matcher, None


def first_stop(text, stops):
    """The reference: the stop string that completes first in the whole text (ties: the one starting first)."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s and s in text]
    return min(found) if found else None


def test_stop_spanning_several_pieces_is_trimmed():
    matcher, hit = feed_all(["</answer>"], ["The answer is 4", "2.</", "ans", "wer> and more"])
    assert hit == StopHit("</answer>", keep=len("The answer is 42."), end=len("The answer is 42.</answer>"),
                          kept_text="The answer is 42.")
    assert matcher.text == "The answer is 42.</answer> and more"


def test_no_stop_strings_never_hit_and_hold_nothing_back():
    matcher = StopMatcher([])
    assert matcher.feed("anything at all") is None and matcher.holdback == 0
    assert StopMatcher([""]).feed("x") is None


def test_holdback_covers_a_possible_stop_prefix():
    matcher = StopMatcher(["\nUser:", "###"])
    assert matcher.feed("Hello") is None and matcher.holdback == 0
    assert matcher.feed(" world\nUs") is None and matcher.holdback == 3  # "\nUs"
    assert matcher.feed("ually") is None and matcher.holdback == 0  # "\nUsually" is no stop
    assert matcher.feed(" ##") is None and matcher.holdback == 2
    assert matcher.feed("#") == StopHit("###", keep=len("Hello world\nUsually "), end=len("Hello world\nUsually ###"),
                                        kept_text="Hello world\nUsually ")
    assert matcher.holdback == 0


def test_first_completed_stop_wins():
    # "b" completes before "abc" does, however the text is split
    assert feed_all(["abc", "b"], ["abc"])[1].stop == "b"
    assert feed_all(["abc", "b"], ["a", "b", "c"])[1].stop == "b"
    # ending at the same place: the longer (earlier-starting) one
    assert feed_all(["bc", "abc"], ["xab", "c"])[1] == StopHit("abc", 1, 4, "x")


def test_later_feeds_return_the_same_hit():
    matcher = StopMatcher(["."])
    hit = matcher.feed("one. two")
    assert hit.kept_text == "one" and matcher.feed(" three.") is hit
    assert matcher.feed("") is hit


def test_empty_pieces_change_nothing():
    matcher = StopMatcher(["ab"])
    assert matcher.feed("a") is None and matcher.holdback == 1
    assert matcher.feed("") is None and matcher.holdback == 1
    assert matcher.feed("b").keep == 0


def test_long_streams_only_keep_a_short_tail():
    matcher = StopMatcher(["STOP"])
    for _ in range(2000):
        assert matcher.feed("word ") is None
    assert len(matcher._tail) == 3
    hit = matcher.feed("ST") or matcher.feed("OP")
    assert hit.keep == 2000 * 5 and hit.kept_text == "word " * 2000


alphabet = st.sampled_from("ab\n#")


@st.composite
def text_and_cuts(draw):
    text = draw(st.text(alphabet, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    return text, pieces


@given(data=text_and_cuts(), stops=st.lists(st.text(alphabet, min_size=1, max_size=5), min_size=1, max_size=4))
@settings(max_examples=400, deadline=None)
def test_random_splits_find_the_same_stop_as_the_whole_text(data, stops):
    text, pieces = data
    matcher, hit = feed_all(stops, pieces)
    expected = first_stop(text, stops)
    if expected is None:
        assert hit is None
        longest = max(len(s) for s in stops)
        # holdback: the longest proper stop prefix that the text ends with
        want = max([n for n in range(1, min(longest, len(text) + 1)) if any(s.startswith(text[-n:]) for s in stops
                                                                           if len(s) > n)], default=0)
        assert matcher.holdback == want
    else:
        end, start, stop = expected
        assert (hit.stop, hit.keep, hit.end) == (stop, start, end)
        assert hit.kept_text == text[:start] and text[start:end] == stop
        assert stop not in hit.kept_text  # nothing before the kept point contains a stop string
        assert all(s not in text[: end - 1] for s in stops)
