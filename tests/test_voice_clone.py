"""Voice cloning against the official Base model: mel features, x-vector, speech-tokenizer codes,
greedy generation from clones made by our own encoders, and the in-context waveform; plus
reference-audio loading and saved voice files."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from conftest import load_cases
from mlx_qwen_tts.engine.generate import GenerationSettings, generate_frames
from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.models.speaker_encoder import convert_speaker_encoder_weights, log_mel_spectrogram
from mlx_qwen_tts.models.codec_encoder import MimiEncoderArgs, convert_codec_encoder_weights, load_codec_encoder
from mlx_qwen_tts.voice import load_reference_audio, load_voice, make_voice_clone, model_fingerprint, save_voice



@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir("base_0b6"), dtype=mx.float32, codec=True)


@pytest.fixture(scope="module")
def voice(fixtures_dir):
    return dict(np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz"))


@pytest.fixture(scope="module")
def clones(model, voice, fixtures_dir):
    """Made once from the reference wave: x-vector only, and in-context with the official ref text."""
    cases = load_cases(fixtures_dir, "base_0b6")
    ref_text = next(args["ref_text"] for _, args, _ in cases if args["mode"] == "icl")
    return {"xvector": make_voice_clone(model, voice["wave"], sample_rate=24000),
            "icl": make_voice_clone(model, voice["wave"], ref_text, sample_rate=24000)}


def test_mel_features_match_official(voice):
    mel = log_mel_spectrogram(voice["wave"])
    assert mel.shape == voice["mel"].shape
    assert np.abs(mel - voice["mel"]).max() <= 1e-4


def test_xvector_matches_official(clones, voice):
    for clone in clones.values():
        assert np.abs(np.array(clone.xvector) - voice["xvector"]).max() <= 1e-4


def test_codec_encoder_matches_official(model, clones, voice):
    raw = mx.load(str(model.path / "speech_tokenizer" / "model.safetensors"))
    st = model.config.speech_tokenizer
    encoder = load_codec_encoder({k[len("encoder."):]: v for k, v in raw.items() if k.startswith("encoder.")},
                                 MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers))
    latents = encoder.latents(mx.array(voice["wave"])[None])[0]
    assert latents.shape == voice["pre_quant_latents"].shape
    assert np.abs(np.array(latents) - voice["pre_quant_latents"]).max() <= 1e-4
    np.testing.assert_array_equal(np.array(clones["icl"].ref_codes), voice["ref_codes"])
    assert clones["xvector"].ref_codes is None


def _greedy(model, args, clone):
    prompt = build_prompt(model, args["text"], language=args["language"],
                          non_streaming_text=args["non_streaming"], clone=clone)
    settings = GenerationSettings.from_config(model.config.generation, greedy=True,
                                              max_frames=args["max_new_tokens"] - 1)
    return np.array(mx.stack(list(generate_frames(model, prompt, settings)))).reshape(-1, 16)


def pytest_generate_tests(metafunc):
    for name, modes in (("base_case", ("xvector", "icl")), ("icl_case", ("icl",))):
        if name in metafunc.fixturenames:
            from conftest import ensure_fixtures
            cases = [c for c in load_cases(ensure_fixtures(), "base_0b6") if c[1]["mode"] in modes]
            metafunc.parametrize(name, cases, ids=[case for case, _, _ in cases])


def test_greedy_codes_from_cloned_voice_match_official(model, clones, base_case):
    _, args, ref = base_case
    codes = _greedy(model, args, clones[args["mode"]])
    np.testing.assert_array_equal(codes, ref["codes"])


def test_icl_waveform_matches_official(model, clones, icl_case):
    _, _, ref = icl_case
    from mlx_qwen_tts.models.codec import decode

    ref_codes = clones["icl"].ref_codes
    full = mx.concatenate([ref_codes, mx.array(ref["codes"].astype(np.int32))], axis=0)
    wav = np.array(decode(model.codec, full))
    cut = int(ref_codes.shape[0] / full.shape[0] * len(wav))  # the official trim
    assert wav[cut:].shape == ref["wav"].shape
    assert np.abs(wav[cut:] - ref["wav"]).max() <= 1e-4


def test_codes_without_a_loaded_codec(model_dir, voice):
    # A snapshot loaded with codec=False still clones in context: the encoder is read from speech_tokenizer/.
    bare = load_model(model_dir("base_0b6"), dtype=mx.float32, codec=False)
    clone = make_voice_clone(bare, voice["wave"], "text", sample_rate=24000)
    np.testing.assert_array_equal(np.array(clone.ref_codes), voice["ref_codes"])


def test_voice_file_round_trip(model, clones, tmp_path):
    for name, clone in clones.items():
        path = save_voice(tmp_path / f"{name}.safetensors", clone, model)
        loaded = load_voice(path, model)
        np.testing.assert_array_equal(np.array(loaded.xvector), np.array(clone.xvector))
        assert loaded.ref_text == clone.ref_text
        if clone.ref_codes is None:
            assert loaded.ref_codes is None
        else:
            np.testing.assert_array_equal(np.array(loaded.ref_codes), np.array(clone.ref_codes))
    # The writes were atomic: no temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icl.safetensors", "xvector.safetensors"]


def test_voice_file_from_another_model_is_rejected(model, clones, tmp_path):
    path = save_voice(tmp_path / "v.safetensors", clones["icl"], model)
    weights = dict(model.extra_weights)
    weights["speaker_encoder.fc.bias"] = weights["speaker_encoder.fc.bias"] + 1e-3
    other = dataclasses.replace(model, extra_weights=weights)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ValueError, match="different model"):
        load_voice(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a voice")
    with pytest.raises(ValueError, match="not a voice file"):
        load_voice(tmp_path / "junk.safetensors", model)


def test_unknown_weights_are_rejected(model):
    w = mx.zeros((4, 4, 1))
    with pytest.raises(ValueError, match="'blocks.1.extra.weight'"):
        convert_speaker_encoder_weights({"blocks.1.extra.weight": w})
    st = model.config.speech_tokenizer
    args = MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
    with pytest.raises(ValueError, match="'decoder_transformer.layers.0.mlp.fc1.weight'"):
        convert_codec_encoder_weights({"decoder_transformer.layers.0.mlp.fc1.weight": w}, args)


def _tone(seconds, rate=24000, channels=None):
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return wave if channels is None else np.stack([wave] * channels, axis=1)


@pytest.mark.parametrize("wave, message", [(_tone(0.5), "too short"), (_tone(31), "too long"),
                                           (np.zeros(48000, np.float32), "silent"),
                                           (_tone(2).astype(np.complex64), "type complex64")])
def test_bad_reference_is_rejected(wave, message):
    with pytest.raises(ValueError, match=message):
        load_reference_audio(wave, 24000)


def test_unreadable_reference_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not really")
    with pytest.raises(ValueError, match="not a readable audio file"):
        load_reference_audio(tmp_path / "bad.wav")
    with pytest.raises(FileNotFoundError):
        load_reference_audio(tmp_path / "missing.wav")


def test_reference_is_mixed_to_mono_and_resampled(tmp_path):
    # 16 kHz stereo 16-bit file: left a 300 Hz tone, right silent -> the mono mix is half the tone.
    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    stereo = np.stack([0.6 * np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], axis=1)
    sf.write(tmp_path / "ref.wav", stereo, rate, subtype="PCM_16")
    wave = load_reference_audio(tmp_path / "ref.wav")
    assert wave.dtype == np.float32 and wave.shape == (int(24000 * seconds),)
    expected = 0.3 * np.sin(2 * np.pi * 300 * np.arange(len(wave)) / 24000)
    middle = slice(2400, -2400)  # away from the resampler's edge transients
    assert np.abs(wave[middle] - expected[middle]).max() < 2e-3


def test_clone_needs_a_base_model_and_real_ref_text(model_dir, model, voice):
    with pytest.raises(ValueError, match="ref_text is empty"):
        make_voice_clone(model, voice["wave"], "  ")
    with pytest.raises(ValueError, match="^ref_text is too long \\(100,000 characters\\)"):  # `voices create`
        make_voice_clone(model, voice["wave"], "word " * 20_000)
    custom = load_model(model_dir("customvoice_0b6"), dtype=mx.float32, codec=False)
    with pytest.raises(ValueError, match="needs a Base model"):
        make_voice_clone(custom, voice["wave"])


# -- voice files that are not ours, or were edited by hand ------------------------------------------

def _edited_voice(path, clone, model, edit):
    """Save `clone`, then rewrite the file with `edit(tensors, metadata)` applied."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    save_voice(path, clone, model)
    with safe_open(str(path), framework="numpy") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _nan_xvector(t, m):
    t["xvector"][3] = np.nan


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.update(xvector=t["xvector"][:-1]), "xvector is F32 \\[.*\\]; this model needs F32"),
    (lambda t, m: t.update(xvector=t["xvector"].astype(np.float16)), "xvector is F16"),
    (_nan_xvector, "NaN or infinite"),
    (lambda t, m: t.update(ref_codes=t["ref_codes"].astype(np.float32)), "ref_codes is F32"),
    (lambda t, m: t.update(ref_codes=t["ref_codes"][:, :8]), "ref_codes is I32"),
    (lambda t, m: t.update(ref_codes=t["ref_codes"] + 5000), "must lie in \\[0, "),
    (lambda t, m: t.update(extra=np.zeros(3, np.float32)), "holds the tensors"),
    (lambda t, m: m.pop("ref_text"), "holds the tensors"),
    (lambda t, m: m.update(format_version="x"), "format_version"),
    (lambda t, m: m.update(ref_text="word " * 20_000), "its reference text is too long \\(100,000 characters"),
])
def test_hand_edited_voice_file_is_rejected_before_the_model(model, clones, tmp_path, edit, message):
    from mlx_qwen_tts.api import synthesize

    path = _edited_voice(tmp_path / "v.safetensors", clones["icl"], model, edit)
    with pytest.raises(ValueError, match=message):
        load_voice(path, model)
    with pytest.raises(ValueError, match=message):  # the API reads voice files through the same checks
        synthesize(model, "Hello.", voice_file=path, max_frames=2)


def test_other_safetensors_files_are_rejected_from_the_header_alone(model, tmp_path, monkeypatch):
    import safetensors

    bf16 = tmp_path / "bf16.safetensors"  # numpy cannot hold bf16: reading its tensors would fail
    mx.save_safetensors(str(bf16), {"w": mx.ones((4, 4), mx.bfloat16)}, metadata={"format": "mlx"})
    untagged = tmp_path / "untagged.safetensors"
    mx.save_safetensors(str(untagged), {"xvector": mx.ones((4,))})

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("tensor data read before the header was checked")

    monkeypatch.setattr(safetensors, "safe_open", no_tensor_reads)
    for path in (bf16, untagged):
        with pytest.raises(ValueError, match="is not an mlx-qwen-tts voice file"):
            load_voice(path, model)
    (tmp_path / "huge_header.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_voice(tmp_path / "huge_header.safetensors", model)
