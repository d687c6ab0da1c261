"""The CLI's reliability promises (README, Reliability): signals clean up like Ctrl-C, option values
and standard input fail in one line before loading, --greedy, and long --out runs (the whole output
capped by --max-seconds, progress, the finished part kept when interrupted)."""

import os
import re
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from test_cli import FRAMES, REPO, SAMPLES_PER_FRAME, SEED, TEXT, assert_one_line_error, mlx_model, speak  # noqa: F401

from mlx_qwen_tts.api import SynthesisStats, synthesize
from mlx_qwen_tts.loading import load_model


# -- SIGTERM (systemd, docker stop, timeout) cleans up like Ctrl-C ----------------------------------

# Runs the CLI in a subprocess whose conversion writes one tensor per shard and then stalls, so the
# test can signal it while the partial folder holds data.
STALLED_CLI = """
import sys, time
import huggingface_hub
import mlx_qwen_tts_convert.convert as conv
conv.SHARD_BYTES = 1
add = conv.ShardWriter.add
def stalling_add(self, name, array):
    add(self, name, array)
    time.sleep(600)
conv.ShardWriter.add = stalling_add
huggingface_hub.snapshot_download = lambda repo_id, **kwargs: sys.argv[1]
from mlx_qwen_tts.cli import main
main(sys.argv[2:], prog_name="mlx-qwen-tts")
"""


def _signal_once_partial_has_data(args, partial_glob, where, sig, env=None):
    proc = subprocess.Popen([sys.executable, "-c", STALLED_CLI, *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while not list(where.glob(partial_glob + "/model-*.safetensors")):
            assert proc.poll() is None, "the command ended before it was signalled"
            assert time.monotonic() < deadline, "no partial folder appeared"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_convert_removes_the_partial_folder(model_dir, tmp_path, sig):
    out = tmp_path / "out"
    code, stderr = _signal_once_partial_has_data([model_dir("customvoice_0b6"), "convert",
                                                  model_dir("customvoice_0b6"), "-o", out],
                                                 ".out.partial-*", tmp_path, sig)
    assert code == 128 + sig and "Traceback" not in stderr
    name = "" if sig == signal.SIGINT else f" ({signal.Signals(sig).name})"
    assert stderr.strip().splitlines()[-1] == f"Interrupted{name}."
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_first_use_conversion_leaves_the_cache_clean(model_dir, tmp_path):
    cache = tmp_path / "cache"
    code, stderr = _signal_once_partial_has_data(
        [model_dir("customvoice_0b6"), "speak", "Hello.", "--model", REPO, "--out", tmp_path / "x.wav"],
        ".*.partial-*", cache, signal.SIGTERM, env={"MLX_QWEN_TTS_CACHE": str(cache)})
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert list(cache.iterdir()) == [] and not (tmp_path / "x.wav").exists()


# -- option values, standard input, --greedy --------------------------------------------------------

@pytest.mark.parametrize("option, value, needle", [
    ("--seed", -1, "--seed must be an integer in [0, 18446744073709551615]"),
    ("--seed", 2 ** 70, "--seed must be an integer in [0, "),
    ("--seed", "abc", "--seed must be an integer"),
    ("--max-seconds", "inf", "--max-seconds must be a finite number in (0, 86400]"),
    ("--max-seconds", "nan", "--max-seconds must be a finite number in (0, 86400]"),
    ("--max-seconds", 0, "--max-seconds must be a finite number in (0, 86400]"),
    ("--max-seconds", "1e308", "--max-seconds must be a finite number in (0, 86400]"),
    ("--temperature", "inf", "--temperature must be a finite number >= 0"),
    ("--temperature", "nan", "--temperature must be a finite number >= 0"),
    ("--temperature", -0.5, "--temperature must be a finite number >= 0"),
    ("--top-p", "nan", "--top-p must be a finite number in [0, 1]"),
    ("--top-k", -1, "--top-k must be an integer in [0, 2147483647]"),
    ("--top-k", 2 ** 31, "--top-k must be an integer in [0, 2147483647]"),
])
def test_bad_option_values_are_one_line_before_loading(tmp_path, option, value, needle):
    # The model does not exist: were it read first, the error would be about it.
    assert_one_line_error(speak(tmp_path / "no-model", TEXT, "--out", tmp_path / "x.wav", option, value), needle)


def test_largest_seed_is_accepted_for_every_segment(mlx_model, tmp_path):
    result = speak(mlx_model, TEXT, "--out", tmp_path / "x.wav", "--seed", 2 ** 64 - 1, "--max-seconds", 0.5)
    assert result.exit_code == 0, result.output
    # segment i is sampled with seed + i (mod 2**64): a long text near the top wraps around
    result = speak(mlx_model, LONG, "--out", tmp_path / "y.wav", "--seed", 2 ** 64 - 2, "--max-seconds", 0.5)
    assert result.exit_code == 0, result.output


def test_temperature_zero_is_greedy(mlx_model, tmp_path):
    expected = synthesize(load_model(mlx_model, dtype=mx.float32), TEXT, greedy=True, max_frames=FRAMES).audio
    for args in (["--temperature", 0], ["--greedy"]):
        out = tmp_path / "x.wav"
        result = speak(mlx_model, TEXT, "--out", out, *args)
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(sf.read(out, dtype="float32")[0], np.clip(expected, -1, 1), atol=1.5 / 32767)
    assert_one_line_error(speak(mlx_model, TEXT, "--out", out, "--greedy", "--temperature", 0.7), "--greedy")


def test_invalid_utf8_on_standard_input_is_one_line(mlx_model, tmp_path):
    result = speak(mlx_model, "-", "--out", tmp_path / "x.wav", input="café".encode("latin-1"))
    assert_one_line_error(result, "cannot read standard input", "not UTF-8")


# -- long --out runs: the whole output capped, progress, partial results kept -----------------------

SENTENCE = "This sentence is long enough that two of them do not fit into one text segment of the model, " * 2
LONG = " ".join(SENTENCE.strip().rstrip(",") + f" number {i}." for i in range(3))  # three segments


def test_max_seconds_caps_the_whole_output_not_each_segment(mlx_model, tmp_path):
    model = load_model(mlx_model, dtype=mx.float32)
    stats = SynthesisStats()
    per_segment = synthesize(model, LONG, seed=SEED, stats=stats).audio  # uncapped
    cap = 13 * SAMPLES_PER_FRAME
    assert stats.segments == 3 and len(per_segment) > cap  # without a total cap the output is longer
    capped = synthesize(model, LONG, seed=SEED, max_frames=13, stats=stats).audio  # the API caps the whole too
    np.testing.assert_allclose(capped, per_segment[:cap], atol=1e-6, rtol=0)  # chunked alike but the last
    out = tmp_path / "x.wav"
    result = speak(mlx_model, LONG, "--out", out, "--max-seconds", 1, "--progress")
    assert result.exit_code == 0, result.output
    wav = sf.read(out, dtype="float32")[0]
    np.testing.assert_allclose(wav, np.clip(per_segment[:cap], -1, 1), atol=1.5 / 32767)
    # the progress bar (the segments are generated as rows of one batch, so all may be done by then)
    _, seconds = re.findall(r"(\d+)/3 segments, ([\d.]+) s of audio", result.stderr)[-1]
    assert float(seconds) == round(len(wav) / 24000, 1)


# A speak run whose stream makes one chunk of audio and then stalls until it is signalled.
STALLED_SPEAK = """
import sys, time
import numpy as np
import mlx_qwen_tts.api as api
def stalled_stream(*args, **kwargs):
    yield np.full(5760, 0.5, np.float32)
    open(sys.argv[1], "w").close()
    time.sleep(600)
api.stream = stalled_stream
from mlx_qwen_tts.cli import main
main(sys.argv[2:], prog_name="mlx-qwen-tts")
"""


def test_sigterm_during_speak_keeps_the_finished_part(mlx_model, tmp_path):
    marker, out = tmp_path / "stalled", tmp_path / "chapter.wav"
    proc = subprocess.Popen([sys.executable, "-c", STALLED_SPEAK, str(marker), "speak", TEXT, "--model",
                             str(mlx_model), "--device", "cpu", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the stream never stalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    partial = tmp_path / "chapter.partial.wav"
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-2:] == [f"Saved the 0.24 s made so far to {partial}",
                                                "Interrupted (SIGTERM)."]
    np.testing.assert_allclose(sf.read(partial, dtype="float32")[0], np.full(5760, 0.5), atol=1 / 32767)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chapter.partial.wav", "stalled"]


def test_progress_counts_segments_once_their_audio_is_decoded():
    from types import SimpleNamespace

    from mlx_qwen_tts.cli.speak import Progress, stop_summary

    # all three segments generated, two thirds of the audio decoded: the bar says 2 of 3, not 3 of 3
    stats = SimpleNamespace(segments=3, segment_frames=[10, 10, 10], frames=20)
    assert Progress(False, 3, stats, None).decoded_segments() == 2
    stats.frames = 30
    assert Progress(False, 3, stats, None).decoded_segments() == 3
    assert stop_summary(["eos"] * 100 + ["max_frames"]) == "100 eos, 1 max_frames"
    assert stop_summary(["eos"]) == "eos" and stop_summary([]) == "-"
