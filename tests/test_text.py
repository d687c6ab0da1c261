"""The text splitter: every segment within its token budget for any Unicode text, content kept in
order, cuts at the best boundary in reach, never inside a character's cluster, linear in length."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_qwen_tts.text import SEGMENT_TOKENS, split_text
from mlx_qwen_tts.tokenizer import TextTokenizer


def _visible(text: str) -> str:
    return "".join(unicodedata.normalize("NFC", text).split())


@pytest.mark.parametrize("text, budget, expected", [
    ("Short one.", 250, ["Short one."]),
    ("One. Two! Three? Four.", 10, ["One. Two!", "Three?", "Four."]),
    ("第一句。第二句！第三句？", 12, ["第一句。", "第二句！", "第三句？"]),  # 3 bytes a character
    ("  spaced\n\nout   text ", 250, ["spaced out text"]),
    # the furthest sentence end in reach beats a later clause end; a clause end beats a space
    ('He said "Hi." Then left, quickly, to the shop.', 24, ['He said "Hi."', "Then left, quickly,", "to the shop."]),
    ("alpha beta gamma delta epsilon", 12, ["alpha beta", "gamma delta", "epsilon"]),
    ("abcdefghijklmnopqrstuvwxyz", 10, ["abcdefghij", "klmnopqrst", "uvwxyz"]),  # no boundary: a hard cut
    ("\u200b\u200b \u2060", 250, []),  # nothing audible
])
def test_split_text(text, budget, expected):
    assert split_text(text, budget) == expected


@pytest.mark.parametrize("unit", ["q\u0301\u0323", "👍🏽", "👨\u200d👩\u200d👧", "✌\ufe0f", "कि"])
def test_a_hard_cut_never_splits_a_character_from_its_marks(unit):
    text = unit * 40
    for budget in range(max(8, len(unit.encode())), 60):  # a budget that holds one cluster
        segments = split_text(text, budget)
        assert "".join(segments) == unicodedata.normalize("NFC", text)
        for segment in segments:
            assert len(segment.encode()) <= budget
            assert segment.startswith(unit[0]) and not segment.endswith("\u200d")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400),
       budget=st.integers(min_value=8, max_value=120))
def test_any_text_splits_within_budget_keeping_its_content(text, budget):
    segments = split_text(text, budget)
    assert all(segment and segment == segment.strip() for segment in segments)
    assert all(len(segment.encode()) <= budget for segment in segments)
    if segments:
        assert "".join(map(_visible, segments)) == _visible(text)
    else:  # only invisible characters (formatting, zero-width, variation selectors)
        assert all(unicodedata.category(c) in ("Cf", "Mn") for c in _visible(text))


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.sampled_from(["the", "naïve", "中文", "ไทย", "😀😀", "x" * 30, ",", ".", "。", "—"]),
                      min_size=1, max_size=200))
def test_words_and_punctuation_split_within_budget(words):
    text = " ".join(words)
    segments = split_text(text, 40)
    assert all(len(s.encode()) <= 40 for s in segments)
    assert "".join(map(_visible, segments)) == _visible(text)


def test_the_byte_budget_bounds_real_tokens_in_every_script(model_dir):
    tokenizer = TextTokenizer(model_dir("customvoice_0b6"))
    samples = ["word " * 400, "中文没有空格" * 200, "😀🎉👨\u200d👩\u200d👧" * 200, "ภาษาไทยไม่มีช่องว่าง" * 100,
               "e\u0301\u0302\u0303" * 300, "#$%^&*()" * 200, "Привет, мир. " * 100]
    for text in samples:
        segments = split_text(text)
        assert len(segments) > 1
        assert max(len(tokenizer.encode_text(s)) for s in segments) <= SEGMENT_TOKENS


@pytest.mark.parametrize("text", ["word " * 20_000, "中" * 100_000, "😀" * 100_000, "q\u0301" * 50_000,
                                  "x" * 100_000])
def test_100k_characters_without_punctuation_are_bounded_segments(text):
    segments = split_text(text)
    assert max(len(s.encode()) for s in segments) <= SEGMENT_TOKENS
    assert len(segments) >= len(text.encode()) // SEGMENT_TOKENS
    assert "".join(map(_visible, segments)) == _visible(text)


def test_budget_below_one_character_is_refused():
    with pytest.raises(ValueError, match="max_segment_tokens must be at least 8"):
        split_text("hello", 3)
