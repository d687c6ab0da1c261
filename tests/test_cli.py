"""The command line end to end on the tiny converted model, the Hub cache, and every user error
ending as one line without a traceback."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import huggingface_hub
import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from test_audio import fake_sounddevice, null_audio_device  # noqa: F401 (a fixture)

from mlx_qwen_tts_convert.convert import convert_model
from mlx_qwen_tts import audio
from mlx_qwen_tts.api import SynthesisStats, stream, synthesize
from mlx_qwen_tts.cli import PLAY_CHUNK_FRAMES, convert_command, main
from mlx_qwen_tts.hub import CONFIG_FILES, SNAPSHOT_FILES, ModelSpecError, converted_path, resolve_model
from mlx_qwen_tts.loading import load_model

TEXT = "Hello world. This is a test."
SEED, SECONDS, FRAMES = 7, 2, 25  # --max-seconds 2 = 25 frames at 12.5 Hz
SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="session")
def mlx_model(model_dir, tmp_path_factory):
    return convert_model(model_dir("customvoice_0b6"), tmp_path_factory.mktemp("cli") / "m", bits=8,
                         group_size=32, dtype="float32")


@pytest.fixture(scope="session")
def reference(mlx_model):
    """What the CLI must produce: the same model, text and seed through the Python API."""
    result = synthesize(load_model(mlx_model, dtype=mx.float32), TEXT, seed=SEED, max_frames=FRAMES)
    assert len(result.audio) == result.stats.frames * SAMPLES_PER_FRAME
    return result


def run(*args, input=None, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, **kwargs)


def speak(model, *args, input=None):
    # Later options win, so `args` may override the defaults.
    return run("speak", "--model", model, "--seed", SEED, "--max-seconds", SECONDS, "--device", "cpu", *args,
               input=input)


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


# -- speak ------------------------------------------------------------------------------------------

def test_speak_writes_whole_frames_of_the_synthesized_audio(mlx_model, reference, tmp_path):
    out = tmp_path / "x.wav"
    result = speak(mlx_model, TEXT, "--out", out, "--verbose")
    assert result.exit_code == 0, result.output
    frames = int(re.search(r"frames: (\d+)", result.stderr).group(1))
    assert frames == reference.stats.frames
    assert "time to first audio" in result.stderr and "RTF" in result.stderr and "peak memory" in result.stderr
    wav, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and len(wav) == frames * SAMPLES_PER_FRAME
    np.testing.assert_allclose(wav, np.clip(reference.audio, -1, 1), atol=1.5 / 32767)
    assert os.listdir(tmp_path) == ["x.wav"]  # no temporary file left


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_speak_reads_stdin_and_files(mlx_model, reference, tmp_path, source):
    out = tmp_path / "x.flac"
    if source == "stdin":
        result = speak(mlx_model, "-", "--out", out, input=TEXT + "\n")
    else:
        (tmp_path / "t.txt").write_text(TEXT.replace(". ", ".\n"), encoding="utf-8")
        result = speak(mlx_model, "--file", tmp_path / "t.txt", "--out", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(sf.read(out, dtype="float32")[0], np.clip(reference.audio, -1, 1),
                               atol=1.5 / 32767)


def test_playback_plays_exactly_the_synthesized_samples(mlx_model, reference, tmp_path, monkeypatch):
    sd = fake_sounddevice(threaded=True)
    fed = []

    class RecordingPlayer(audio.Player):
        def play(self, samples):
            fed.append(samples.copy())
            super().play(samples)

    monkeypatch.setattr(audio, "import_sounddevice", lambda: sd)
    # Buffer everything first: the threaded fake device would otherwise outrun the generator and
    # insert silence (start and underrun policy: test_audio.py, on a simulated clock).
    monkeypatch.setattr(audio, "Player", functools.partial(RecordingPlayer, prebuffer_s=float("inf")))
    result = speak(mlx_model, TEXT, "--play", "--out", tmp_path / "x.wav")
    assert result.exit_code == 0, result.output
    assert len(fed[0]) == PLAY_CHUNK_FRAMES * SAMPLES_PER_FRAME  # the first few frames go straight out
    synthesized = np.concatenate(fed)
    np.testing.assert_allclose(synthesized, reference.audio, atol=1e-6)  # chunking changes only rounding
    (stream,) = sd.streams
    played, n = stream.played, len(synthesized)
    np.testing.assert_array_equal(played[:n], synthesized)  # in order, no gap, no duplicate
    assert not played[n:].any() and stream.finished and stream.closed  # the tail was drained
    np.testing.assert_allclose(sf.read(tmp_path / "x.wav", dtype="float32")[0], np.clip(synthesized, -1, 1),
                               atol=1 / 32767)  # --out written from the same chunks


def test_playback_on_a_real_null_device(mlx_model, null_audio_device):
    result = speak(mlx_model, TEXT, "--verbose")  # plays by default without --out
    assert result.exit_code == 0, result.output
    audio_s = re.search(r"frames: \d+ \(([\d.]+) s of audio\)", result.stderr).group(1)
    played_s = re.search(r"playback: started after [\d.]+ s, ([\d.]+) s played", result.stderr).group(1)
    assert played_s == audio_s


def test_first_audio_comes_after_a_few_frames_while_generation_continues(mlx_model):
    model = load_model(mlx_model, dtype=mx.float32)
    stats = SynthesisStats(events=[])
    chunks = stream(model, TEXT, seed=SEED, max_frames=FRAMES, stats=stats,
                    first_chunk_frames=PLAY_CHUNK_FRAMES, chunk_frames=PLAY_CHUNK_FRAMES)
    first = next(chunks)
    frames_at_first_chunk = stats.frames
    rest = list(chunks)
    kinds = [kind for kind, _ in stats.events]
    before_first_chunk = kinds.index("chunk")
    assert before_first_chunk <= 4 and stats.frames_before_first_audio <= 4
    assert frames_at_first_chunk == before_first_chunk < stats.frames  # generation went on after it
    assert len(first) == before_first_chunk * SAMPLES_PER_FRAME and rest
    assert stats.first_audio_s < stats.elapsed_s


def test_instruct_on_a_model_that_ignores_it_warns(mlx_model, tmp_path):
    result = speak(mlx_model, TEXT, "--instruct", "cheerful", "--out", tmp_path / "x.wav")
    assert result.exit_code == 0 and "warning: this custom_voice 0.6B model ignores --instruct" in result.stderr


def test_ctrl_c_stops_playback_and_generation(mlx_model, tmp_path, monkeypatch):
    sd = fake_sounddevice()
    closed = []

    def interrupted_stream(*args, **kwargs):
        try:
            yield np.ones(5760, np.float32)
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    monkeypatch.setattr(audio, "import_sounddevice", lambda: sd)
    monkeypatch.setattr("mlx_qwen_tts.api.stream", interrupted_stream)
    out = tmp_path / "x.wav"
    result = speak(mlx_model, TEXT, "--play", "--out", out)
    partial = tmp_path / "x.partial.wav"  # the audio made before Ctrl-C is kept, under a name that says so
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [f"Saved the 0.24 s made so far to {partial}", "Interrupted."]
    assert "Traceback" not in result.output
    assert closed == [True] and sd.streams[0].closed
    assert not sd.streams[0].started or sd.streams[0].aborted
    assert not out.exists()
    np.testing.assert_allclose(sf.read(partial, dtype="float32")[0], np.ones(5760), atol=1 / 32767)


# -- user errors ------------------------------------------------------------------------------------

@pytest.fixture
def broken_models(mlx_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_json = tmp_path / "bad_json"
    shutil.copytree(mlx_model, bad_json)
    (bad_json / "config.json").write_text("{not json")
    truncated = tmp_path / "truncated"
    shutil.copytree(mlx_model, truncated)
    (truncated / "model.safetensors").write_bytes((mlx_model / "model.safetensors").read_bytes()[:1000])
    return {"empty": empty, "bad_json": bad_json, "truncated": truncated}


@pytest.mark.parametrize("case", ["empty", "bad_json", "truncated"])
def test_broken_model_folder(broken_models, tmp_path, case):
    assert_one_line_error(speak(broken_models[case], TEXT, "--out", tmp_path / "x.wav"), str(broken_models[case]))


def test_bad_input_is_one_line_without_traceback(mlx_model, tmp_path, monkeypatch):
    out = ["--out", tmp_path / "x.wav"]
    assert_one_line_error(speak(mlx_model, "   ", *out), "text is empty")
    assert_one_line_error(speak(mlx_model, "-", *out, input=""), "text is empty")
    assert_one_line_error(speak(mlx_model, *out), "nothing to say")
    assert_one_line_error(speak(mlx_model, TEXT, "--voice", "bob", *out), "unknown voice 'bob'",
                          "vivian, serena, uncle_fu, dylan, eric, ryan, aiden, ono_anna, sohee")
    assert_one_line_error(speak(mlx_model, TEXT, "--language", "klingon", *out), "unknown language", "english")
    assert_one_line_error(speak(mlx_model, "--file", tmp_path / "nope.txt", *out), "cannot read --file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert_one_line_error(speak(mlx_model, "--file", tmp_path / "latin1.txt", *out), "cannot read --file")
    assert_one_line_error(speak(mlx_model, TEXT, "--file", tmp_path / "latin1.txt", *out), "not both")
    assert_one_line_error(speak(mlx_model, TEXT, "--out", tmp_path / "no" / "x.wav"), "does not exist")
    assert_one_line_error(speak(mlx_model, TEXT, "--out", tmp_path), "is a folder")
    assert_one_line_error(speak(mlx_model, TEXT, "--out", tmp_path / "x.mp3"), "unknown audio format")
    assert_one_line_error(speak(mlx_model, TEXT, "--no-play"), "--no-play needs --out")
    assert_one_line_error(speak(tmp_path / "missing", TEXT, *out), "does not exist")
    if not mx.is_available(mx.gpu):
        assert_one_line_error(speak(mlx_model, TEXT, "--device", "gpu", *out), "no GPU")
    monkeypatch.setattr(audio, "import_sounddevice", lambda: fake_sounddevice(devices=False))
    assert_one_line_error(speak(mlx_model, TEXT), "no audio output device", "--out")
    assert os.listdir(tmp_path) == ["latin1.txt"]


def test_help_works_without_portaudio():
    code = ("import sys; sys.modules['sounddevice'] = None\n"
            "from mlx_qwen_tts.cli import main\n"
            "main(['speak', '--help'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "--out" in proc.stdout


# -- voices and convert -----------------------------------------------------------------------------

def test_voices_lists_the_fixture_speakers_and_languages(model_dir, mlx_model):
    config = json.loads((model_dir("customvoice_0b6") / "config.json").read_text())["talker_config"]
    for folder in (model_dir("customvoice_0b6"), mlx_model):
        result = run("voices", "--model", folder)
        assert result.exit_code == 0, result.output
        speakers = re.search(r"speakers: (.*)", result.stdout).group(1)
        assert speakers.startswith("vivian [default]")
        assert {s.split(" ")[0] for s in speakers.split(", ")} == set(config["spk_id"])
        languages = re.search(r"languages: (.*)", result.stdout).group(1).split(", ")
        assert set(languages) == {"auto"} | {k for k in config["codec_language_id"] if "dialect" not in k}
        assert "instruct: no" in result.stdout and "voice cloning: no" in result.stdout
    result = run("voices", "--model", model_dir("voicedesign_1b7"))
    assert "instruct: yes" in result.stdout and "speakers: none" in result.stdout


def test_convert_command(model_dir, mlx_model, tmp_path):
    out = tmp_path / "m"
    result = CliRunner().invoke(convert_command, [str(model_dir("customvoice_0b6")), "-o", str(out),
                                                  "--bits", "4", "--group-size", "32", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "config.json").read_text())["mlx_qwen_tts"]
    assert meta["quantization"]["bits"] == 4 and meta["dtype"] == "float32"
    again = run("convert", model_dir("customvoice_0b6"), "-o", out)
    assert_one_line_error(again, "already exists", "--force")
    assert_one_line_error(run("convert", mlx_model, "-o", tmp_path / "n"), "already an MLX folder")
    assert_one_line_error(run("convert", tmp_path / "nope", "-o", tmp_path / "n"), "does not exist")


def test_convert_force_never_deletes_what_it_did_not_make(model_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(model_dir("customvoice_0b6"), src)
    files = sorted(p.name for p in src.rglob("*"))
    assert_one_line_error(run("convert", src, "-o", src, "--force"), "is the source")
    assert_one_line_error(run("convert", src, "-o", src / "mlx", "--force"), "lies inside the source")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    assert_one_line_error(run("convert", src, "-o", tmp_path / "photos", "--force"), "not an mlx-qwen-tts conversion")
    assert sorted(p.name for p in src.rglob("*")) == files and (tmp_path / "photos" / "cat.jpg").exists()


# -- the Hub cache ----------------------------------------------------------------------------------

REPO = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"


def test_local_folders_are_used_as_they_are(model_dir, mlx_model, tmp_path):
    assert resolve_model(mlx_model) == mlx_model
    assert resolve_model(model_dir("base_0b6")) == model_dir("base_0b6")
    with pytest.raises(ModelSpecError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelSpecError, match="is a file"):
        resolve_model(tmp_path / "f.txt")


def test_hub_id_is_downloaded_and_converted_once(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_QWEN_TTS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(model_dir("customvoice_0b6"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    result = run("voices", "--model", REPO)
    assert result.exit_code == 0 and "vivian [default]" in result.stdout
    assert calls == [(REPO, CONFIG_FILES)]  # voices fetches only the configuration
    folder = resolve_model(REPO, progress=False)
    assert folder == tmp_path / "cache" / "Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice-8bit" == converted_path(REPO)
    assert "mlx_qwen_tts" in json.loads((folder / "config.json").read_text())
    assert resolve_model(REPO) == folder and run("voices", "--model", REPO).exit_code == 0
    assert calls == [(REPO, CONFIG_FILES), (REPO, SNAPSHOT_FILES)]  # later uses hit the cache


def test_offline_without_a_cached_copy_says_how_to_use_a_local_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "MLX_QWEN_TTS_CACHE": str(tmp_path / "cache")}
    for args in (["speak", "Hello", "--model", REPO, "--out", str(tmp_path / "x.wav")], ["voices"]):
        proc = subprocess.run([sys.executable, "-m", "mlx_qwen_tts", *args], capture_output=True, text=True,
                              env=env)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and "offline" in proc.stderr and "--model DIR" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "x.wav").exists()


def test_convert_refuses_a_foreign_output_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded first"))
    (tmp_path / "photos").mkdir()
    assert_one_line_error(run("convert", REPO, "-o", tmp_path / "photos", "--force"), "not an mlx-qwen-tts conversion")
