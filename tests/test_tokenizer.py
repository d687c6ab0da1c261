"""The text tokenizer built from vocab.json + merges.txt (parity with the official processor is
checked per fixture case in test_generation_parity.py)."""

import json
import shutil

import pytest

from mlx_qwen_tts.tokenizer import TextTokenizer


def test_role_and_special_tokens_keep_real_ids(model_dir):
    tok = TextTokenizer(model_dir("customvoice_0b6"))
    assert tok.encode("<|im_start|>assistant\n") == [151644, 77091, 198]
    assert tok.encode("<tts_pad><tts_text_bos><tts_text_eod>") == [151671, 151672, 151673]
    assert tok.decode(tok.encode("Привет, мир! 你好")) == "Привет, мир! 你好"


def test_gaps_in_added_token_ids_are_kept(model_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(model_dir("customvoice_0b6"), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    for key in [k for k in cfg["added_tokens_decoder"] if 151650 <= int(k) < 151671]:
        del cfg["added_tokens_decoder"][key]  # a hole before the TTS tokens
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = TextTokenizer(folder)
    assert tok.encode("<tts_pad>") == [151671] and tok.encode("<|im_end|>") == [151645]


def test_missing_files_are_named(model_dir, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(model_dir("customvoice_0b6") / "vocab.json", folder)
    with pytest.raises(FileNotFoundError, match="merges.txt is missing"):
        TextTokenizer(folder)
