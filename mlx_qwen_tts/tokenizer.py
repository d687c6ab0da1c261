"""The Qwen2 byte-level BPE text tokenizer, built from a model folder's vocab.json + merges.txt.

The released repos ship no tokenizer.json; we build the same fast tokenizer the official
processor builds (NFC, the Qwen2 split regex, byte-level BPE, special tokens at their declared
ids) with the `tokenizers` library, which avoids importing transformers.

The official loader, given a local folder, swaps in a Mistral-style split regex (transformers
4.57.3 `fix_mistral_regex`); a Hub id keeps the Qwen2 one the model was trained with. The two
differ only on CamelCase runs, combining marks and "/" after punctuation; we keep Qwen2's.
"""

from __future__ import annotations

import json
import re
import string
import threading
from pathlib import Path

# Converted folders also hold the built tokenizer: reading it takes ~0.1 s, building ~1 s.
BUILT_FILE = "text_tokenizer.json"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class TextTokenizer:
    """encode(markup) -> ids with special tokens such as <|im_start|> recognised; encode_text(text) and
    encode_template(template, **fields) keep user text as text (a typed <|im_end|> is just characters)."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        built = Path(folder) / BUILT_FILE
        tok = Tokenizer.from_file(str(built)) if built.is_file() else _build(Path(folder))
        self._tok = tok
        self._lock = threading.Lock()
        specials = sorted((t.content for t in tok.get_added_tokens_decoder().values()), key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, specials)))

    def save(self, path: str | Path):
        """The built tokenizer in the `tokenizers` format (what `BUILT_FILE` holds)."""
        self._tok.save(str(path))

    def encode(self, text: str) -> list[int]:
        """Markup: special tokens written in `text` become their control ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Plain text: special-token strings in `text` are encoded as ordinary characters."""
        with self._lock:  # the switch lives on the shared tokenizer object
            self._tok.encode_special_tokens = True
            try:
                return self._tok.encode(text, add_special_tokens=False).ids
            finally:
                self._tok.encode_special_tokens = False

    def encode_template(self, template: str, **fields: str) -> list[int]:
        """`template`'s own special tokens as control ids, its {fields} (user text) as plain text.

        The text between two template markers is encoded as one piece, exactly as `encode` splits it,
        so text without special-token strings gets the ids `encode(template.format(**fields))` gives."""
        ids, pending = [], ""
        for literal, field, _, _ in string.Formatter().parse(template):
            pos = 0
            for m in self._special.finditer(literal):
                pending += literal[pos:m.start()]
                if pending:
                    ids += self.encode_text(pending)
                ids.append(self._tok.token_to_id(m.group()))
                pending, pos = "", m.end()
            pending += literal[pos:]
            if field is not None:
                pending += fields[field]
        return ids + (self.encode_text(pending) if pending else [])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def _build(folder: Path):
    """The Qwen2 tokenizer from vocab.json, merges.txt and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    files = [folder / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json")]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: the model folder has no Qwen2 text tokenizer")
    vocab = json.loads(files[0].read_text(encoding="utf-8"))
    merges = []
    for line in files[1].read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    added = json.loads(files[2].read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    for token_id, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
        # Added tokens take the next free ids; unused placeholders keep declared ids in place.
        while tok.get_vocab_size(with_added_tokens=True) < int(token_id):
            tok.add_special_tokens([AddedToken(f"<|unused_{tok.get_vocab_size(True)}|>", special=True)])
        tok.add_special_tokens([AddedToken(spec["content"], special=True, normalized=False,
                                           lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                           single_word=spec.get("single_word", False))])
        got = tok.token_to_id(spec["content"])
        if got != int(token_id):
            raise ValueError(f"{files[2]}: added token {spec['content']!r} is declared as id {token_id} "
                             f"but lands at {got}; is vocab.json complete?")
    return tok
