"""`speak --live -` in a real process: standard input is spoken as it arrives through a pipe
(pieces with pauses, a UTF-8 character split across writes), the same audio as the whole text."""

import os
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import soundfile as sf

from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.loading import load_model

TEXT = "Hello world, a live pipe. 你好，世界。"
SEED, FRAMES = 11, 30


def _speak_live(model_dir, out, chunks, *extra):
    log = out.with_suffix(".log")
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "mlx_qwen_tts", "speak", "--live", "-", "--model",
                                 str(model_dir), "--device", "cpu", "--seed", str(SEED), "--out", str(out),
                                 "--max-seconds", str(FRAMES / 12.5), *extra],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=os.environ)
        for chunk in chunks:
            proc.stdin.write(chunk)
            proc.stdin.flush()
            time.sleep(0.4)
        proc.stdin.close()
        proc.wait(timeout=300)
    return proc.returncode, log.read_text()


def test_speak_live_reads_a_pipe_as_it_arrives(model_dir, tmp_path):
    folder = model_dir("customvoice_0b6")
    data = TEXT.encode()
    split = data.index("你".encode()) + 1  # inside the 3-byte character
    chunks = [data[:7], data[7:split], data[split:]]
    code, err = _speak_live(folder, tmp_path / "live.wav", chunks, "--verbose")
    assert code == 0, err
    expected = synthesize(load_model(folder, dtype=mx.float32), TEXT, seed=SEED, max_frames=FRAMES,
                          non_streaming_text=False)
    wav, sr = sf.read(tmp_path / "live.wav", dtype="float32")
    np.testing.assert_allclose(wav, np.clip(expected.audio, -1, 1), atol=1.5 / 32767)
    assert "time to first audio" in err


def test_speak_live_errors_are_one_line(model_dir, tmp_path):
    code, err = _speak_live(model_dir("customvoice_0b6"), tmp_path / "x.wav", [b"ab\xff\xfe"])
    assert code == 1 and err.strip().splitlines() == [
        "Error: cannot read standard input: it is not UTF-8 text (invalid start byte at byte 2)"]
    code, err = _speak_live(model_dir("customvoice_0b6"), tmp_path / "x.wav", [b"  \n"])
    assert code == 1 and err.strip().splitlines() == ["Error: text is empty: nothing to say"]
