"""CLI voice cloning (speak --ref-audio/--voice-file, voices create), check-quant and GGUF convert."""

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from test_cli import assert_one_line_error, run

from mlx_qwen_tts_convert.convert import convert_model
from mlx_qwen_tts import load
from mlx_qwen_tts.api import synthesize

TEXT = "Hello world, this is a test."


@pytest.fixture(scope="module")
def base_model(model_dir, tmp_path_factory):
    return convert_model(model_dir("base_0b6"), tmp_path_factory.mktemp("base") / "m", bits=None, dtype="float32")


@pytest.fixture(scope="module")
def reference_wav(fixtures_dir, tmp_path_factory):
    wave = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["wave"]
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    sf.write(path, wave, 24000, subtype="FLOAT")
    return path


def _speak(model, *args):
    return run("speak", "--model", model, "--seed", 3, "--max-seconds", 1, "--device", "cpu", *args)


def test_clone_from_reference_equals_the_api(base_model, reference_wav, tmp_path):
    out = tmp_path / "clone.wav"
    result = _speak(base_model, TEXT, "--ref-audio", reference_wav, "--ref-text", "This is the voice to speak with.",
                    "--out", out)
    assert result.exit_code == 0, result.output
    expected = synthesize(load(base_model, dtype=mx.float32), TEXT, seed=3, max_frames=13,
                          ref_audio=str(reference_wav), ref_text="This is the voice to speak with.")
    wav, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and len(wav) == len(expected.audio)
    np.testing.assert_allclose(wav, expected.audio, atol=1.5 / 32767)


def test_saved_voice_reproduces_the_reference_clone(base_model, reference_wav, tmp_path):
    voice = tmp_path / "voice.safetensors"
    made = run("voices", "create", "--ref-audio", reference_wav, "--ref-text", "This is the voice to speak with.",
               "--model", base_model, "-o", voice, "--device", "cpu")
    assert made.exit_code == 0, made.output
    assert made.stderr.strip() == f"Saved voice {voice} (in-context (x-vector + reference codes))"
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    assert _speak(base_model, TEXT, "--voice-file", voice, "--out", a).exit_code == 0
    assert _speak(base_model, TEXT, "--ref-audio", reference_wav, "--ref-text", "This is the voice to speak with.",
                  "--out", b).exit_code == 0
    np.testing.assert_array_equal(sf.read(a)[0], sf.read(b)[0])


def test_x_vector_mode_is_noted(base_model, reference_wav, tmp_path):
    result = _speak(base_model, TEXT, "--ref-audio", reference_wav, "--out", tmp_path / "x.wav")
    assert result.exit_code == 0 and "x-vector mode" in result.stderr


@pytest.mark.parametrize("args, needle", [
    ((), "clones a voice: pass --ref-audio"),
    (("--ref-text", "hi"), "--ref-text goes with --ref-audio"),
])
def test_base_model_clone_errors(base_model, tmp_path, args, needle):
    assert_one_line_error(_speak(base_model, TEXT, *args, "--out", tmp_path / "x.wav"), needle)


def test_clone_options_refused_on_custom_voice(model_dir, reference_wav, tmp_path):
    result = _speak(model_dir("customvoice_0b6"), TEXT, "--ref-audio", reference_wav, "--out", tmp_path / "x.wav")
    assert_one_line_error(result, "needs a Base model")


def test_short_reference_is_a_clear_error(base_model, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(2400, np.float32) + 0.1, 24000)
    result = _speak(base_model, TEXT, "--ref-audio", short, "--ref-text", "Hi.", "--out", tmp_path / "x.wav")
    assert_one_line_error(result, "too short")


@pytest.fixture(scope="module")
def q8(model_dir, tmp_path_factory):
    return convert_model(model_dir("customvoice_1b7"), tmp_path_factory.mktemp("q8") / "q8", bits=8, group_size=32,
                         dtype="float32")


def test_check_quant_passes_8bit(model_dir, q8):
    result = run("check-quant", q8, "--reference", model_dir("customvoice_1b7"), "--frames", 12)
    assert result.exit_code == 0 and "PASS" in result.output, result.output


@pytest.mark.parametrize("reference, needles", [
    ("q8", ["is quantized (8-bit)", "give the float model"]),
    ("customvoice_0b6", ["0b6 custom_voice", "1b7 custom_voice"]),
    ("voicedesign_1b7", ["1b7 voice_design", "1b7 custom_voice"]),
])
def test_check_quant_says_what_is_wrong_with_the_reference(model_dir, q8, reference, needles):
    ref = q8 if reference == "q8" else model_dir(reference)
    assert_one_line_error(run("check-quant", q8, "--reference", ref, "--frames", 4), str(ref), *needles)


def test_check_quant_gates_a_base_model(model_dir, tmp_path):
    src = model_dir("base_0b6")
    q8 = convert_model(src, tmp_path / "bq8", bits=8, group_size=32, dtype="float32")
    result = run("check-quant", q8, "--reference", src, "--frames", 12, "--json")
    assert result.exit_code == 0 and '"passed": true' in result.output, result.output


def test_gguf_talker_needs_its_codec(tmp_path):
    talker = tmp_path / "talker.gguf"
    talker.write_bytes(b"GGUF")
    assert_one_line_error(run("convert", talker, "-o", tmp_path / "out"), "--codec")


def test_old_voice_create_still_works_and_names_the_new_command(base_model, reference_wav, tmp_path):
    voice = tmp_path / "v.safetensors"
    made = run("voice", "create", "--ref-audio", reference_wav, "--model", base_model, "-o", voice, "--device", "cpu")
    assert made.exit_code == 0, made.output
    assert made.stderr.splitlines()[0] == "note: `voice create` is now `voices create`" and voice.is_file()
    listed = run("voices", "--model", base_model)  # bare `voices` still lists
    assert listed.exit_code == 0 and "voice cloning: yes" in listed.stdout


def test_voices_create_checks_its_output_before_any_model_work(reference_wav, tmp_path):
    def create(out, model=tmp_path / "no-such-model"):  # a missing model would be the error if read first
        return run("voices", "create", "--ref-audio", reference_wav, "--model", model, "-o", out, "--device", "cpu")

    assert_one_line_error(create(tmp_path / "v.wav"), "give it a .safetensors name")
    assert_one_line_error(create(tmp_path / "no" / "v.safetensors"), "folder", "does not exist")
    assert_one_line_error(create(tmp_path), "is a folder")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48000, np.float32), 24000)
    result = run("voices", "create", "--ref-audio", silent, "--model", tmp_path / "nope",
                 "-o", tmp_path / "v.safetensors")
    assert_one_line_error(result, "silent")
    result = run("voices", "create", "--ref-audio", reference_wav, "--ref-text", "word " * 20_000,
                 "--model", tmp_path / "nope", "-o", tmp_path / "v.safetensors")
    assert_one_line_error(result, "--ref-text is too long (100,000 characters); the limit is 1,000")


def test_failed_voice_write_names_the_users_path(base_model, reference_wav, tmp_path, monkeypatch):
    import os

    def refuse(src, dst):  # what a rename into a folder we may not write says
        raise PermissionError(13, "Permission denied", str(src), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    out = tmp_path / "v.safetensors"
    result = run("voices", "create", "--ref-audio", reference_wav, "--model", base_model, "-o", out, "--device", "cpu")
    assert_one_line_error(result, f"{out}: Permission denied")
    assert ".tmp" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["convert", "voices create"])
def test_ctrl_c_in_any_command_is_interrupted_130(base_model, model_dir, reference_wav, tmp_path, monkeypatch, command):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    if command == "convert":
        monkeypatch.setattr("mlx_qwen_tts_convert.convert._write", ctrl_c)
        args = ["convert", model_dir("base_0b6"), "-o", tmp_path / "out"]
    else:
        monkeypatch.setattr("mlx_qwen_tts.voice.make_voice_clone", ctrl_c)
        args = ["voices", "create", "--ref-audio", reference_wav, "--model", base_model, "-o",
                tmp_path / "v.safetensors", "--device", "cpu"]
    result = run(*args)
    assert result.exit_code == 130 and result.stderr.strip() == "Interrupted.", result.output
    assert list(tmp_path.iterdir()) == []


def test_foreign_voice_file_is_one_line(base_model, tmp_path):
    bf16 = tmp_path / "model.safetensors"
    mx.save_safetensors(str(bf16), {"w": mx.ones((4, 4), mx.bfloat16)}, metadata={"format": "mlx"})
    result = _speak(base_model, TEXT, "--voice-file", bf16, "--out", tmp_path / "x.wav")
    assert_one_line_error(result, "is not an mlx-qwen-tts voice file")
