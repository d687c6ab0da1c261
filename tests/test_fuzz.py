"""Fuzzing every reader of outside data (tests/fuzz/): each input loads or raises our one-line user
error (ValueError, ConfigError, GGUFError, OSError), never another exception type, never a hang.

The test command runs a short, reproducible pass (FUZZ_EXAMPLES inputs per reader, 25 by default);
`python tests/fuzz/run_long.py` runs a long random one and reports the figures."""

import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from harness import probe  # noqa: E402
from targets import all_targets  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
NAMES = ["config", "safetensors-hf", "safetensors-converted", "voice-file", "audio-file", "audio-array",
         "text-splitter", "server-request",
         *(f"gguf-{d}-{r}" for d in ("qwen3-tts", "crispasr", "hf-names") for r in ("talker", "codec")),
         "gguf-full-convert"]


@pytest.fixture(scope="module")
def targets(fixtures_dir, tmp_path_factory):
    return {t.name: t for t in all_targets(fixtures_dir, tmp_path_factory.mktemp("fuzz"))}


def test_every_reader_is_fuzzed(targets):
    assert sorted(targets) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_reader_loads_or_fails_cleanly(targets, name):
    target = targets[name]
    examples = 2 if name == "gguf-full-convert" else EXAMPLES

    @settings(max_examples=examples, deadline=timedelta(seconds=15), database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))
    def check(rng):
        case = target.generate(rng)
        probe(name, lambda: target.run(case), strict=True, names=target.names)
    check()


# ---- what the fuzzing found, as plain regression tests ----

def _config_folder(model_dir, tmp_path, edit, name="config.json"):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir("base_0b6"), folder, ignore=shutil.ignore_patterns("*.safetensors", "vocab.json"))
    path = folder / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return folder, path


@pytest.mark.parametrize("name, edit", [
    ("config.json", lambda c: c["talker_config"]["rope_scaling"].update(mrope_section=[8, "4", 4])),
    ("config.json", lambda c: c["talker_config"].update(num_key_value_heads=0)),
    ("config.json", lambda c: c["speaker_encoder_config"].update(enc_res2net_scale=0)),
    ("config.json", lambda c: c["speaker_encoder_config"].update(enc_kernel_sizes=[5, 3, "3", 3, 1])),
    ("speech_tokenizer/config.json", lambda c: c["decoder_config"].update(upsample_rates=[8, "5", 4, 3])),
    ("speech_tokenizer/config.json", lambda c: c["encoder_config"].update(num_attention_heads="8")),
    ("speech_tokenizer/config.json", lambda c: c["encoder_config"].update(use_conv_shortcut={})),
    ("generation_config.json", lambda c: c.update(temperature=[])),
])
def test_bad_config_values_are_config_errors_naming_the_file(model_dir, tmp_path, name, edit):
    from mlx_qwen_tts.config import ConfigError, load_model_config

    folder, path = _config_folder(model_dir, tmp_path, edit, name)
    with pytest.raises(ConfigError, match=str(path)):
        load_model_config(folder)


def test_speaker_dialect_must_be_a_name(model_dir, tmp_path):
    from mlx_qwen_tts.config import ConfigError, load_model_config

    folder = tmp_path / "cv"
    import shutil
    shutil.copytree(model_dir("customvoice_0b6"), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    import json
    cfg = json.loads((folder / "config.json").read_text())
    cfg["talker_config"]["spk_is_dialect"]["eric"] = {"x": 1}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="spk_is_dialect"):
        load_model_config(folder)


def test_undecodable_config_names_the_file(model_dir, tmp_path):
    from mlx_qwen_tts.config import ConfigError, load_model_config

    folder, path = _config_folder(model_dir, tmp_path, lambda c: None)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match=f"{path} is not readable JSON"):
        load_model_config(folder)


@pytest.mark.parametrize("index", [b"null", b'{"weight_map": {"a": "../model.safetensors"}}', b'{"weight_map": []}'])
def test_a_broken_shard_index_is_a_value_error(tmp_path, index):
    from mlx_qwen_tts.loading import read_converted_weights

    (tmp_path / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        read_converted_weights(tmp_path)


def test_gguf_dimensions_beyond_int32_are_refused(tmp_path):
    import gguf
    import numpy as np

    from mlx_qwen_tts_convert.gguf_dialects import GGUFError, read_gguf

    w = gguf.GGUFWriter(str(tmp_path / "big.gguf"), "qwen3-tts")
    w.add_tensor("t", np.zeros((2, 4), np.float32), raw_shape=(2 ** 33, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="impossible dimensions"):
        read_gguf(tmp_path / "big.gguf")


def test_audio_whose_header_claims_hours_is_refused_before_reading(tmp_path):
    import numpy as np
    import soundfile as sf

    from mlx_qwen_tts.voice import load_reference_audio

    path = tmp_path / "ref.flac"
    t = np.arange(24000) / 16000
    sf.write(path, np.sin(2 * np.pi * 220 * t) * 0.3, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first: total samples in bytes 21-25
    data[21] |= 0x0F
    data[22:26] = b"\xff\xff\xff\xff"  # 2^36 - 1 samples: 50 days
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(path)):
        load_reference_audio(path)


@pytest.mark.parametrize("fix", ["format_version", "xvector"])
def test_voice_file_fields_are_checked(model_dir, fixtures_dir, tmp_path, fix):
    import mlx.core as mx
    import numpy as np
    import safetensors.numpy

    from mlx_qwen_tts.engine.prompt import VoiceClone
    from mlx_qwen_tts.loading import load_model
    from mlx_qwen_tts.voice import load_voice, save_voice

    model = load_model(model_dir("base_0b6"), dtype=mx.float32, codec=False)
    xvector = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["xvector"]
    path = save_voice(tmp_path / "v.safetensors", VoiceClone(mx.array(xvector)), model)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if fix == "format_version":
        metadata["format_version"] = "I64"
    else:
        tensors["xvector"] = tensors["xvector"][:-1]
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    with pytest.raises(ValueError, match=str(path)):
        load_voice(path, model)


@pytest.mark.parametrize("shape", [[True, 16], ["5", 16], [5, None], 7, {"frames": 5}])
def test_voice_file_shape_fields_of_any_type_are_checked(model_dir, fixtures_dir, tmp_path, shape):
    # Found by the long run: a hand-edited header whose ref_codes shape holds a bool or a string
    # reached the frame-count comparison and raised TypeError.
    import json
    import struct

    import mlx.core as mx
    import numpy as np

    from mlx_qwen_tts.engine.prompt import VoiceClone
    from mlx_qwen_tts.loading import load_model
    from mlx_qwen_tts.voice import load_voice, save_voice

    model = load_model(model_dir("base_0b6"), dtype=mx.float32, codec=False)
    dump = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")
    clone = VoiceClone(mx.array(dump["xvector"]), mx.array(dump["ref_codes"]), "This is the voice.")
    path = save_voice(tmp_path / "v.safetensors", clone, model)
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header["ref_codes"]["shape"] = shape
    encoded = json.dumps(header).encode()  # tensor offsets count from the end of the header
    encoded = encoded.ljust(-(-len(encoded) // 8) * 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size:])
    with pytest.raises(ValueError, match=str(path)):
        load_voice(path, model)
