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

    from mlx_qwen_tts.paths import path_problem

    files = [folder / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json")]
    for f in files:
        problem = path_problem(f)
        if problem:
            problem = "is missing" if problem == "does not exist" else problem
            raise FileNotFoundError(f"{f} {problem}: the model folder has no Qwen2 text tokenizer")
    vocab = _read_json(files[0])
    merges = []
    for number, line in enumerate(_read_text(files[1]).splitlines(), start=1):
        if line and not line.startswith("#version"):
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"{files[1]}, line {number}: expected two tokens separated by one space, "
                                 f"got {line!r:.60}")
            missing = next((t for t in (*pair, "".join(pair)) if t not in vocab), None)
            if missing is not None:
                raise ValueError(f"{files[1]}, line {number}: token {missing!r:.40} is not in vocab.json")
            merges.append(tuple(pair))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    added = _read_json(files[2]).get("added_tokens_decoder", {})
    if not isinstance(added, dict) or not all(isinstance(v, dict) and isinstance(v.get("content"), str)
                                              and str(k).isdigit() for k, v in added.items()):
        raise ValueError(f"{files[2]}: added_tokens_decoder must map ids to {{\"content\": ...}} objects")
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_json(path: Path):
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
