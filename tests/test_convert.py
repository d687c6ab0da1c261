"""Hugging Face snapshot -> MLX folder: float conversion is lossless, 8-bit stays within the
quantization error and passes the quality gate, broken inputs fail cleanly without leftovers."""

import json
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mlx_qwen_tts_convert.convert as conv
from mlx_qwen_tts_convert import convert_model
from mlx_qwen_tts.engine.generate import GenerationSettings, GenerationStats, generate_frames
from mlx_qwen_tts.loading import FORMAT_KEY, load_model, read_converted_weights
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.quality import quality_gate, teacher_forced_logits

TEXT = "Hello world, this is a test."


def _greedy(model, frames=12):
    prompt = build_prompt(model, TEXT, voice="ryan", language="english")
    settings = GenerationSettings.from_config(model.config.generation, greedy=True, max_frames=frames,
                                              ignore_eos=True)
    codes = mx.stack(list(generate_frames(model, prompt, settings, GenerationStats())))
    return np.array(codes), teacher_forced_logits(model, prompt, codes)


@pytest.fixture(scope="module")
def float_pair(model_dir, tmp_path_factory):
    src = model_dir("customvoice_1b7")
    out = convert_model(src, tmp_path_factory.mktemp("conv") / "f32", bits=None, dtype="float32")
    return load_model(src, dtype=mx.float32), load_model(out), out


def test_float_conversion_is_identical_to_direct_hf_loading(float_pair):
    direct, converted, out = float_pair
    codes_a, trace_a = _greedy(direct)
    codes_b, trace_b = _greedy(converted)
    np.testing.assert_array_equal(codes_a, codes_b)
    for logits_a, logits_b in zip(trace_a, trace_b):  # talker, then code predictor
        np.testing.assert_allclose(np.array(logits_a), np.array(logits_b), atol=1e-6, rtol=0)
    wav_a, _ = direct.codec(mx.array(codes_a)[None])
    wav_b, _ = converted.codec(mx.array(codes_b)[None])
    np.testing.assert_allclose(np.array(wav_a), np.array(wav_b), atol=1e-6, rtol=0)
    meta = json.loads((out / "config.json").read_text())[FORMAT_KEY]
    assert meta["quantization"] is None and meta["dtype"] == "float32"
    for name in ("model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "generation_config.json", "speech_tokenizer/config.json"):
        assert (out / name).is_file(), name
    weights = read_converted_weights(out)
    assert all(w.dtype == mx.float32 for k, w in weights.items() if k.startswith("codec."))


def test_8bit_conversion_quantizes_within_error_and_passes_the_gate(model_dir, float_pair, tmp_path):
    src = model_dir("customvoice_1b7")
    out = convert_model(src, tmp_path / "q8", bits=8, group_size=32, dtype="float32")
    meta = json.loads((out / "config.json").read_text())[FORMAT_KEY]
    assert meta["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    q = read_converted_weights(out)
    f = read_converted_weights(float_pair[2])
    quantized = [k[: -len(".scales")] for k in q if k.endswith(".scales")]
    assert any(k.startswith("talker.layers.") for k in quantized)
    assert any(k.startswith("code_predictor.lm_head.") for k in quantized)
    assert not any(k.startswith(("codec.", "talker.codec_embedding", "code_predictor.codec_embedding"))
                   for k in quantized)
    for base in quantized:
        w = mx.dequantize(q[f"{base}.weight"], q[f"{base}.scales"], q[f"{base}.biases"], group_size=32, bits=8)
        err = mx.abs(w - f[f"{base}.weight"]).reshape(w.shape[0], -1, 32).max(axis=-1)
        step = mx.abs(q[f"{base}.scales"])  # one quantization step per group
        # MLX picks the scale and bias in the weights' dtype, so the error reaches almost one step
        assert bool(mx.all(err <= step + 1e-6)), base
    report = quality_gate(float_pair[0], load_model(out), frames=20)
    print("8-bit gate on the tiny fixture:", report.to_dict())
    assert report.passed, report.to_dict()
    assert report.talker_kl < 0.02 and report.predictor_kl < 0.02


def test_sharded_output_loads_the_same(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "SHARD_BYTES", 4 << 20)
    out = convert_model(model_dir("customvoice_0b6"), tmp_path / "sharded", bits=None, dtype="float32")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    codes, _ = _greedy(load_model(out), frames=4)
    ref, _ = _greedy(load_model(model_dir("customvoice_0b6"), dtype=mx.float32), frames=4)
    np.testing.assert_array_equal(codes, ref)


def _broken_copy(model_dir, tmp_path, edit):
    src = tmp_path / "src"
    shutil.copytree(model_dir("customvoice_0b6"), src)
    edit(src)
    return src


def _truncate(src):
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unknown_key(src):
    w = load_file(str(src / "model.safetensors"))
    w["talker.mystery.weight"] = np.zeros((2, 2), np.float32)
    save_file(w, str(src / "model.safetensors"))


def _wrong_shape(src):
    w = load_file(str(src / "model.safetensors"))
    w["talker.model.layers.0.mlp.up_proj.weight"] = np.zeros((7, 64), np.float32)
    save_file(w, str(src / "model.safetensors"))


@pytest.mark.parametrize("edit, message", [
    (_truncate, "not a readable safetensors file"),
    (_unknown_key, "talker.mystery.weight"),
    (_wrong_shape, "up_proj"),
    (lambda src: (src / "speech_tokenizer" / "model.safetensors").unlink(), "model.safetensors is missing"),
])
def test_broken_sources_fail_cleanly(model_dir, tmp_path, edit, message):
    src = _broken_copy(model_dir, tmp_path, edit)
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        convert_model(src, out, bits=8, group_size=32, dtype="float32")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_existing_output_is_not_overwritten_by_default(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_model(model_dir("customvoice_0b6"), out, bits=8, group_size=32)
    assert (out / "keep.txt").read_text() == "mine"


def test_quality_gate_fails_a_damaged_model(model_dir, float_pair, tmp_path):
    out = convert_model(model_dir("customvoice_1b7"), tmp_path / "q4", bits=4, group_size=32, dtype="float32")
    damaged = load_model(out)
    for layer in damaged.talker.layers:  # a broken quantization: every attention output scaled by 3
        layer.self_attn.o_proj.scales = layer.self_attn.o_proj.scales * 3
        layer.self_attn.o_proj.biases = layer.self_attn.o_proj.biases * 3
    report = quality_gate(float_pair[0], damaged, frames=20)
    assert not report.passed and report.talker_kl > 0.02


# -- --force and the output folder ------------------------------------------------------------------

def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def test_force_replaces_only_an_earlier_conversion(model_dir, tmp_path):
    src = model_dir("customvoice_0b6")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    hf_copy = tmp_path / "hf_copy"  # a model folder, but not one of our outputs
    shutil.copytree(src, hf_copy)
    for folder in (mine, hf_copy):
        before = _tree(folder)
        with pytest.raises(FileExistsError, match="not an mlx-qwen-tts conversion"):
            convert_model(src, folder, bits=None, dtype="float32", overwrite=True)
        assert _tree(folder) == before
    out = convert_model(src, tmp_path / "out", bits=None, dtype="float32")
    convert_model(src, out, bits=8, group_size=32, dtype="float32", overwrite=True)
    assert json.loads((out / "config.json").read_text())[FORMAT_KEY]["quantization"]["bits"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_copy", "mine", "out"]  # nothing left aside


def test_output_never_overlaps_the_source(model_dir, tmp_path):
    from mlx_qwen_tts_convert import convert_gguf

    src = tmp_path / "parent" / "src"
    shutil.copytree(model_dir("customvoice_0b6"), src)
    before = _tree(tmp_path / "parent")
    for out, where in ((src, "is the source"), (src / "mlx", "lies inside the source"),
                       (tmp_path / "parent", "holds the source")):
        with pytest.raises(ValueError, match=where):
            convert_model(src, out, bits=None, dtype="float32", overwrite=True)
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "talker.gguf").write_bytes(b"GGUF")
    (gguf / "codec.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="holds the source"):
        convert_gguf(gguf / "talker.gguf", gguf / "codec.gguf", gguf, overwrite=True)
    with pytest.raises(ValueError, match="lies inside the source"):
        convert_gguf(gguf / "talker.gguf", gguf / "codec.gguf", src / "out", tokenizer_dir=src, overwrite=True)
    with pytest.raises(FileExistsError, match="not an mlx-qwen-tts conversion"):
        convert_gguf(gguf / "talker.gguf", gguf / "codec.gguf", tmp_path / "parent", overwrite=True)
    assert (gguf / "talker.gguf").read_bytes() == b"GGUF" and _tree(tmp_path / "parent") == before


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no process has this PID now
    return proc.pid


def test_stale_partials_of_dead_processes_are_removed(model_dir, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead, live = tmp_path / f".out.partial-{_dead_pid()}", tmp_path / f".out.partial-{sleeper.pid}"
        other = tmp_path / f".other.partial-{_dead_pid()}"  # another target's: not this run's business
        for folder in (dead, live, other):
            folder.mkdir()
            (folder / "model-00001.safetensors").write_bytes(b"half")
        convert_model(model_dir("customvoice_0b6"), tmp_path / "out", bits=None, dtype="float32")
        assert not dead.exists() and live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_errors_name_the_output_not_the_partial_folder(model_dir, tmp_path, monkeypatch):
    import os

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        convert_model(model_dir("customvoice_0b6"), tmp_path / "out", bits=None, dtype="float32")
    assert e.value.filename.startswith(str(tmp_path / "out")) and ".partial" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_output_swapped_aside_by_a_killed_run_is_put_back(model_dir, tmp_path):
    src = model_dir("customvoice_0b6")
    out = convert_model(src, tmp_path / "out", bits=None, dtype="float32")
    before = _tree(out)
    aside = tmp_path / f".out.replaced-{_dead_pid()}"  # killed between moving `out` aside and renaming the new one
    out.rename(aside)
    with pytest.raises(FileExistsError, match="already exists"):  # the previous output is back first
        convert_model(src, out, bits=None, dtype="float32")
    assert not aside.exists() and _tree(out) == before
