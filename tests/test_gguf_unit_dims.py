"""GGUF files as ggml's own writer leaves them: trailing size-1 ne dimensions (leading size-1 axes)
dropped (`ggml_n_dims`). The import restores them from the shapes the model expects; anything else
stays an error naming the tensor."""

import shutil

import pytest
from gguf import GGMLQuantizationType as Q
from test_gguf import (ARCH, TABLES, _assert_holds, _no_leftovers, build, crispasr_f16, qwentts, rusttts_q4_0,
                       write_gguf)

from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts_convert.gguf_dialects import GGUFError, NameMap, read_gguf
from mlx_qwen_tts_convert.gguf_import import convert_gguf


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-dims")


@pytest.mark.parametrize("variant, dialect, policy", [
    ("base_0b6", "qwen3-tts", qwentts(Q.Q8_0)), ("customvoice_1b7", "crispasr", crispasr_f16),
    ("base_0b6", "hf-names", rusttts_q4_0)])
def test_unit_dims_dropped_by_ggml_are_restored(work, model_dir, variant, dialect, policy):
    folder, side = model_dir(variant), work / f"ggml-{dialect}"
    (side / "speech_tokenizer").mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "speech_tokenizer/config.json"):
        shutil.copyfile(folder / name, side / name)
    pair = build(side, folder, talker=(dialect, policy), codec=(dialect, policy), tag="ggml", ggml_dims=True)
    dropped = [(name, a.shape) for role in ("talker", "codec") for name, a, _ in pair.parts[role][1]
               if a.shape != pair.values[_official(dialect, role, name)].shape]
    assert dropped, "no tensor had a unit dimension to drop"
    _, tensors = read_gguf(pair.codec)
    assert {t.name: t.shape for t in tensors}[dropped[0][0]] == dropped[0][1]  # the file really lacks it
    out = convert_gguf(pair.talker, pair.codec, work / f"ggml-{dialect}-out",
                       tokenizer_dir=side if dialect != "qwen3-tts" else None)
    _assert_holds(out, pair.values)  # every tensor at its official shape, holding the file's values
    load_model(out)


def _official(dialect, role, gguf_name):
    return gguf_name if dialect == "hf-names" else NameMap(TABLES[dialect, role])(gguf_name)


def test_a_shape_differing_in_more_than_unit_dims_names_the_tensor(work, model_dir):
    pair = build(work, model_dir("customvoice_0b6"), tag="bad-dims")
    kv, tensors = pair.parts["codec"]
    bad = [(n, a.reshape(-1) if n == "tok_dec.dec.6.conv.weight" else a, q) for n, a, q in tensors]
    codec = write_gguf(work / "bad-dims-codec.gguf", ARCH["qwen3-tts", "codec"], kv, bad)
    with pytest.raises(GGUFError, match=r"bad-dims-codec.gguf: tensor tok_dec.dec.6.conv.weight has shape \(42,\)"):
        convert_gguf(pair.talker, codec, work / "bad-dims")
    _no_leftovers(work / "bad-dims")
