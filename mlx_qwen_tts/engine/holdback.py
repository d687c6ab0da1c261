"""Incremental tokenization of text that arrives in pieces: the ids released, concatenated, are
exactly the ids of the whole text (as the prompt tokenizes it), never re-fed or retracted.

The Qwen2 tokenizer (NFC, then its split regex, then byte-level BPE within each split piece)
never merges across a position p where text[p-1] is a letter or digit and text[p] is a space,
punctuation, a symbol or a control character: no alternative of the split regex matches a
letter/digit followed by such a character, the regex has no look-behind, and NFC only composes
a character with a following combining mark (category M) or Hangul jamo (a letter). So the text
up to the last such position can be tokenized now; the rest (an unfinished word, number, unit,
punctuation run or emoji sequence) is held back until more text or the end of the input.
"""

from __future__ import annotations

import unicodedata

from mlx_qwen_tts.engine.prompt import TEXT_TEMPLATE


def _breaks_before(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch)[0] in "PSZC"


def release_point(text: str) -> int:
    """The last position where `text` can be cut without changing its tokenization (0: none)."""
    for p in range(len(text) - 1, 0, -1):
        if _breaks_before(text[p]) and unicodedata.category(text[p - 1])[0] in "LN":
            return p
    return 0


class TextHoldback:
    """push(piece) / finish() -> the token ids that became certain."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.held = ""  # text not tokenized yet
        self.started = False  # the first release is tokenized after the template's role prefix

    def push(self, piece: str) -> list[int]:
        self.held += piece
        point = release_point(self.held)
        return self._release(point) if point else []

    def finish(self) -> list[int]:
        return self._release(len(self.held)) if self.held else []

    def _release(self, point: int) -> list[int]:
        text, self.held = self.held[:point], self.held[point:]
        if self.started:
            return self.tokenizer.encode_text(text)
        self.started = True  # as build_prompt: "assistant\n" + text are tokenized together
        return self.tokenizer.encode_template(TEXT_TEMPLATE, text=text)[3:-5]
