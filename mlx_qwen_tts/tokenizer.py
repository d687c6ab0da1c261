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
from pathlib import Path

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class TextTokenizer:
    """encode(text) -> list of ids, special tokens such as <|im_start|> recognised in the text."""

    def __init__(self, folder: str | Path):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        folder = Path(folder)
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
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
