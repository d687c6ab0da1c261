"""Audio files and live playback.

The player is checked sample-exactly against a fake device that plays in "real time" on a fake
clock shared with the simulated generator, so start decisions and underruns are deterministic;
one test runs the real sounddevice/PortAudio stack on an ALSA null device.
"""

import importlib.abc
import os
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from mlx_qwen_tts import audio
from mlx_qwen_tts.audio import AudioDeviceError, Player, check_output_device, check_writable, write_audio

SR = 24000
CHUNK = 3 * 1920  # what the CLI feeds the player: 3 frames
BLOCK = 240  # device block (10 ms)
ALSA_NULL_CONF = """</usr/share/alsa/alsa.conf>
pcm.!default {
    type plug
    slave.pcm "nullsink"
}
pcm.nullsink {
    type null
}
"""


def signal(n):
    """Test audio without exact zeros, so inserted silence is visible."""
    return ((np.arange(n) % 997 + 1) / 2000).astype(np.float32)


# -- fakes ----------------------------------------------------------------------------------------

class CallbackStop(Exception):
    pass


class PortAudioError(Exception):
    pass


class FakeStream:
    """An output device: `pull` asks the player's callback for one block and records it."""

    def __init__(self, samplerate, channels, dtype, device, callback, finished_callback):
        assert (samplerate, channels, dtype) == (SR, 1, "float32")
        self.callback, self.finished_callback = callback, finished_callback
        self.blocks = []
        self.started = self.finished = self.aborted = self.closed = False

    def start(self):
        self.started = True

    def pull(self, frames=BLOCK):
        if not self.started or self.finished or self.aborted:
            return False
        out = np.full((frames, 1), np.nan, np.float32)  # the callback must write every sample
        try:
            self.callback(out, frames, None, None)
        except CallbackStop:
            self.finished = True
        self.blocks.append(out[:, 0].copy())
        if self.finished:
            self.finished_callback()
        return not self.finished

    def abort(self):
        self.aborted = True
        self.finished_callback()

    def close(self):
        self.closed = True

    @property
    def played(self):
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)


class ThreadedFakeStream(FakeStream):
    """A device that pulls blocks in its own thread, as fast as the player feeds it."""

    def start(self):
        super().start()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while self.pull():
            time.sleep(0.0002)


def fake_sounddevice(*, threaded=False, devices=True):
    sd = types.SimpleNamespace(CallbackStop=CallbackStop, PortAudioError=PortAudioError, streams=[])

    def query_devices(device=None, kind=None):
        if not devices:
            raise PortAudioError("Error querying device -1")
        return {"name": "fake"}

    def output_stream(**kwargs):
        query_devices()
        stream = (ThreadedFakeStream if threaded else FakeStream)(**kwargs)
        sd.streams.append(stream)
        return stream

    sd.query_devices, sd.OutputStream = query_devices, output_stream
    return sd


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run_in_real_time(chunks, gen_seconds, **player_kw):
    """Feed `chunks`, the i-th taking gen_seconds[i] to generate, while the device plays in real
    time on the same clock. Returns the player, its stream and whether it played after each chunk."""
    clock, sd = Clock(), fake_sounddevice()
    player = Player(SR, sounddevice=sd, clock=clock, **player_kw).open()
    stream = sd.streams[0]
    playing = []
    for chunk, seconds in zip(chunks, gen_seconds):
        for _ in range(round(seconds * SR / BLOCK)):
            clock.t += BLOCK / SR
            stream.pull()
        player.play(chunk)
        playing.append(stream.started)
    finish_with(player, stream)
    return player, stream, playing


def finish_with(player, stream):
    """`finish` blocks until the device has played everything, so the device runs meanwhile."""
    done = threading.Thread(target=player.finish)
    done.start()
    while not player._finished:  # pulls before finish() is called would count as an underrun
        time.sleep(0.001)
    while done.is_alive():
        stream.pull()
    done.join()


def assert_played_exactly(stream, expected):
    played = stream.played
    np.testing.assert_array_equal(played[:len(expected)], expected)
    assert not played[len(expected):].any() and len(played) - len(expected) < BLOCK  # tail, then stop
    assert stream.finished and stream.closed


# -- player -----------------------------------------------------------------------------------------

def test_fast_generation_starts_at_once_and_plays_every_sample_in_order():
    x = signal(12 * CHUNK)
    chunks = np.split(x, 12)
    # prefill + 3 frames in 0.15 s, then 3 frames (0.24 s of audio) every 0.1 s: 2.4x real time
    player, stream, playing = run_in_real_time(chunks, [0.15] + [0.1] * 11)
    assert playing[0], "playback should start with the first chunk"
    assert player.start_latency_s == pytest.approx(0.15)
    assert player.underruns == 0 and player.samples_played == len(x)
    assert_played_exactly(stream, x)


def test_slow_generation_buffers_first_and_then_never_runs_dry():
    x = signal(20 * CHUNK)
    # 0.24 s of audio every 0.4 s: 0.6x real time, 4.8 s of speech
    player, stream, playing = run_in_real_time(np.split(x, 20), [0.4] * 20)
    assert not playing[0] and not playing[5]
    assert any(playing), "playback should start before generation ends"
    assert 2.4 < player.start_latency_s < 8.0
    assert player.underruns == 0
    assert_played_exactly(stream, x)


def test_running_dry_pauses_to_buffer_again_instead_of_stuttering():
    # Slow generation (0.5x real time) with the pre-buffer capped at 0.5 s: it runs dry, then
    # waits for 0.5 s of audio before resuming, so it pauses a few times rather than per chunk.
    x = signal(20 * CHUNK)
    player, stream, _ = run_in_real_time(np.split(x, 20), [0.48] * 20, max_prebuffer_s=0.5)
    played = stream.played
    np.testing.assert_array_equal(played[played != 0], x)  # every sample once, in order
    silent = np.concatenate([[False], played[:np.flatnonzero(played)[-1]] == 0])
    pauses = np.count_nonzero(silent[1:] & ~silent[:-1])
    assert 0 < pauses == player.underruns <= 20 // 3


def test_fixed_prebuffer_waits_for_that_much_audio():
    x = signal(10 * CHUNK)
    _, stream, playing = run_in_real_time(np.split(x, 10), [0.01] * 10, prebuffer_s=1.0)
    assert playing == [False] * 4 + [True] * 6  # 5 chunks = 1.2 s >= 1 s
    assert_played_exactly(stream, x)


def test_short_text_plays_on_finish_even_below_the_prebuffer():
    x = signal(CHUNK)
    _, stream, playing = run_in_real_time([x], [5.0])  # one chunk, very slowly
    assert playing == [False]
    assert_played_exactly(stream, x)


def test_full_buffer_blocks_the_producer_until_the_device_catches_up():
    sd = fake_sounddevice()
    player = Player(SR, sounddevice=sd, prebuffer_s=100.0, max_buffer_s=0.5).open()
    stream = sd.streams[0]
    x = signal(10 * CHUNK)  # 2.4 s > the 0.5 s buffer
    producer = threading.Thread(target=lambda: [player.play(c) for c in np.split(x, 10)])
    producer.start()
    while not stream.started:  # a full buffer starts playback whatever the pre-buffer says
        time.sleep(0.001)
    assert producer.is_alive() and player.samples_played == 0  # blocked: nothing consumed yet
    while producer.is_alive():
        stream.pull()
    finish_with(player, stream)
    played = stream.played  # the test's device may outpace the producer: skip that silence
    np.testing.assert_array_equal(played[played != 0], x)


def test_exception_stops_playback_at_once():
    sd = fake_sounddevice()
    with pytest.raises(KeyboardInterrupt):
        with Player(SR, sounddevice=sd, prebuffer_s=0.0) as player:
            player.play(signal(10 * CHUNK))
            sd.streams[0].pull()
            raise KeyboardInterrupt
    stream = sd.streams[0]
    assert stream.aborted and stream.closed
    assert player.samples_played == BLOCK


class _NoPortAudio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")


def test_missing_portaudio_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    for action in (check_output_device, lambda: Player(SR).open()):
        with pytest.raises(AudioDeviceError, match="PortAudio library not found.*--out"):
            action()


def test_no_output_device_is_a_clear_error(monkeypatch):
    sd = fake_sounddevice(devices=False)
    monkeypatch.setattr(audio, "import_sounddevice", lambda: sd)
    with pytest.raises(AudioDeviceError, match="no audio output device.*--out"):
        check_output_device()
    with pytest.raises(AudioDeviceError, match="no audio output device.*--out"):
        Player(SR).open()


@pytest.fixture
def null_audio_device(tmp_path):
    """The real sounddevice, pointed at an ALSA null PCM (no sound card needed)."""
    import sounddevice as sd

    conf = tmp_path / "alsa-null.conf"
    conf.write_text(ALSA_NULL_CONF)
    old = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(conf)
    sd._terminate()
    sd._initialize()  # PortAudio lists devices when it initialises
    yield sd
    if old is None:
        del os.environ["ALSA_CONFIG_PATH"]
    else:
        os.environ["ALSA_CONFIG_PATH"] = old
    sd._terminate()
    sd._initialize()


def test_real_stream_plays_everything_on_the_null_device(null_audio_device):
    check_output_device()
    x = signal(8 * CHUNK)
    with Player(SR) as player:
        for chunk in np.split(x, 8):
            player.play(chunk)
    assert player.samples_played == len(x)


# -- files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.wav", "x.flac", "X.WAV"])
def test_lossless_files_round_trip(tmp_path, name):
    x = np.sin(np.arange(SR) / 7).astype(np.float32) * 0.8
    x[:3] = [1.5, -1.5, 0.0]  # out of range: clipped, not wrapped
    write_audio(tmp_path / name, x, SR)
    y, sr = sf.read(tmp_path / name, dtype="float32")
    assert sr == SR and y.shape == x.shape
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1 / 32767)
    assert os.listdir(tmp_path) == [name]


def test_ogg_vorbis(tmp_path):
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    write_audio(tmp_path / "x.ogg", x, SR)
    info = sf.info(tmp_path / "x.ogg")
    assert (info.format, info.samplerate, info.frames) == ("OGG", SR, SR)


def test_unknown_extension(tmp_path):
    for name in ("x.mp3", "x"):
        with pytest.raises(ValueError, match=r"\.wav, \.flac or \.ogg"):
            write_audio(tmp_path / name, np.zeros(10, np.float32), SR)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, interrupt):
    def write_half_then_fail(file, data, *args, **kwargs):
        file.write(b"RIFF....WAVE")
        raise interrupt

    monkeypatch.setattr(sf, "write", write_half_then_fail)
    with pytest.raises(type(interrupt)):
        write_audio(tmp_path / "new.wav", signal(100), SR)
    assert os.listdir(tmp_path) == []

    (tmp_path / "old.wav").write_bytes(b"previous take")
    with pytest.raises(type(interrupt)):
        write_audio(tmp_path / "old.wav", signal(100), SR)
    assert os.listdir(tmp_path) == ["old.wav"]
    assert (tmp_path / "old.wav").read_bytes() == b"previous take"


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "a.wav") == tmp_path / "a.wav"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_writable(tmp_path / "missing" / "a.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path / "d.wav")
    with pytest.raises(ValueError, match="unknown audio format"):
        check_writable(tmp_path / "a.mp4")


def _dead_pid():
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no process has this PID now
    return proc.pid


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import subprocess

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".x.wav.{_dead_pid()}.tmp"  # left by a writer killed outright (SIGKILL)
        live = tmp_path / f".x.wav.{sleeper.pid}.tmp"  # a writer still at work
        other = tmp_path / f".y.wav.{_dead_pid()}.tmp"  # another target's
        for path in (dead, live, other):
            path.write_bytes(b"RIFF")
        write_audio(tmp_path / "x.wav", signal(100), SR)
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "x.wav"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_errors_name_the_target_not_the_temporary(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        write_audio(tmp_path / "x.wav", signal(100), SR)
    assert e.value.filename == str(tmp_path / "x.wav") and os.listdir(tmp_path) == []
