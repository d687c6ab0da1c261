"""Splitting long text into segments at sentence boundaries (Latin and CJK punctuation)."""

from __future__ import annotations

import re

# A sentence ends at . ! ? ; … (followed by space or the end) or at CJK full-width enders.
_SENTENCE_END = re.compile(r"(?<=[.!?;…])\s+|(?<=[。！？；])\s*")
_CLAUSE_END = re.compile(r"(?<=[,:，、：])\s*")


def split_text(text: str, max_chars: int = 250) -> list[str]:
    """Sentences grouped into segments of at most ~max_chars; a text that fits is one segment."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text] if text else []
    pieces = []
    for sentence in filter(None, _SENTENCE_END.split(text)):
        if len(sentence) > 2 * max_chars:  # a run-on sentence: fall back to clause boundaries
            pieces.extend(filter(None, _CLAUSE_END.split(sentence)))
        else:
            pieces.append(sentence)
    segments, current = [], ""
    for piece in pieces:
        joiner = "" if not current or _is_cjk(current[-1]) else " "
        if current and len(current) + len(joiner) + len(piece) > max_chars:
            segments.append(current)
            current = piece
        else:
            current = current + joiner + piece if current else piece
    if current:
        segments.append(current)
    return segments


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" or "\uac00" <= ch <= "\ud7af"
