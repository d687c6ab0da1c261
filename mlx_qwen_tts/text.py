"""Splitting text into segments that each fit a token budget, cutting at the best boundary in reach.

Each segment becomes one talker prefill, whose cost grows with its length (and attention with its
square), so every segment is bounded, for every script. The bound is measured in UTF-8 bytes of
the NFC text, the form the tokenizer sees: the text tokenizer is byte-level BPE, where a token
covers at least one byte, so a segment of N bytes is at most N tokens. (English runs ~4 bytes
per token and Chinese ~3-4, so the bound is loose, never wrong; it needs no tokenizer.)

Within the budget, a segment ends at the furthest sentence end it can reach; failing that, at a
clause end (comma, colon, dash), then a space between words, and only then (scripts written
without spaces, long runs of symbols or emoji) anywhere that does not split a character from its
combining marks, variation selectors or zero-width joiners. Linear in the text's length.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata

# Segment budget in tokens (bytes): ~250 characters of English, ~80 of Chinese (a few sentences).
# A 250-token prefill of the 0.6B talker (~0.2 TFLOP) is about half a frame step on an Apple GPU
# (~9 on a loaded CPU), so a row joining the batch stalls the others briefly; past ~500 tokens the
# quadratic attention term grows fast (bench/bench_fairness.py, bench/README.md).
SEGMENT_TOKENS = 250
MIN_SEGMENT_TOKENS = 8  # a budget must hold any one character (4 bytes) and some context

# A sentence ends at . ! ? ; … (with closing quotes or brackets) before a space, or at a CJK ender.
_SENTENCE_END = re.compile(r"[.!?;…]+[\"'”’»)\]]*(?= )|[。！？；]+[”’」』）]*")
_CLAUSE_END = re.compile(r"[,:—–]+[\"'”’»)\]]*(?= )|[，、：]")
_SPACE = re.compile(" ")
# Text the ear cannot hear: whitespace and zero-width or formatting characters only.
_AUDIBLE = re.compile(r"[^\s\u00ad\u034f\u061c\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
                      r"\ufe00-\ufe0f\ufeff]")


def split_text(text: str, max_tokens: int = SEGMENT_TOKENS) -> list[str]:
    """`text` as segments of at most `max_tokens` tokens (UTF-8 bytes of NFC text), whitespace
    collapsed; a text that fits is one segment; a text with nothing audible is none."""
    if max_tokens < MIN_SEGMENT_TOKENS:
        raise ValueError(f"max_segment_tokens must be at least {MIN_SEGMENT_TOKENS}, got {max_tokens}")
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if not _AUDIBLE.search(text):
        return []
    ends = list(itertools.accumulate(map(_utf8_len, text), initial=0))  # ends[i]: bytes of text[:i]
    if ends[-1] <= max_tokens:
        return [text]
    levels = [[m.end() for m in pattern.finditer(text)] for pattern in (_SENTENCE_END, _CLAUSE_END)]
    levels.append([m.start() for m in _SPACE.finditer(text)])
    segments, start, n = [], 0, len(text)
    while start < n:
        reach = bisect.bisect_right(ends, ends[start] + max_tokens) - 1  # furthest end within budget
        cut = n if reach >= n else _best_cut(text, levels, start, reach)
        segment = text[start:cut].strip()
        if segment:
            segments.append(segment)
        start = cut
    return segments


def _best_cut(text: str, levels: list[list[int]], start: int, reach: int) -> int:
    """The furthest cut in (start, reach] at the highest boundary level that has one."""
    for positions in levels:
        i = bisect.bisect_right(positions, reach) - 1
        if i >= 0 and positions[i] > start:
            return positions[i]
    cut = reach
    while cut > start + 1 and _joins(text[cut - 1], text[cut]):
        cut -= 1
    return cut if cut > start + 1 or not _joins(text[cut - 1], text[cut]) else reach


def _joins(before: str, after: str) -> bool:
    """Whether a cut between these two characters would split a user-perceived character."""
    code = ord(after)
    return (before == "\u200d" or code == 0x200D or unicodedata.combining(after) != 0
            or unicodedata.category(after) in ("Mn", "Mc", "Me")
            or 0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F
            or 0xE0100 <= code <= 0xE01EF or (0xD800 <= ord(before) <= 0xDBFF and 0xDC00 <= code <= 0xDFFF))


def _utf8_len(ch: str) -> int:
    code = ord(ch)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
