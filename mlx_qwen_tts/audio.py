"""Audio out: atomic files (wav/flac/ogg) and live playback through PortAudio.

`Player` takes float32 mono chunks from the generating thread and plays them from a PortAudio
callback. sounddevice is imported only when playback is asked for, so the package (and
`--out`) works where PortAudio is missing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from mlx_qwen_tts.atomic import atomic_file, check_writable_file

# Extension -> (soundfile format, subtype). 16-bit PCM plays everywhere.
FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


class AudioDeviceError(RuntimeError):
    """Live playback is impossible here: no PortAudio, or no output device."""


def audio_format(path: str | Path) -> tuple[str, str]:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot write {Path(path).name!r}: unknown audio format "
                         f"{suffix!r}; use .wav, .flac or .ogg" if suffix else
                         f"cannot write {Path(path).name!r}: no extension; use .wav, .flac or .ogg")
    return FORMATS[suffix]


def check_writable(path: str | Path) -> Path:
    """Fail before a long synthesis, not after it: known format, and a folder that takes files."""
    path = Path(path)
    if not path.is_dir():
        audio_format(path)
    return check_writable_file(path)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write mono audio, format chosen by extension. Atomic: a temporary file in the same folder
    is renamed over the target only once complete, so an error or Ctrl-C never leaves a partial
    file behind. The file is encoded in memory and written in one go: a full disk is one OSError
    naming `path` (libsndfile's own writes would only print the errors of its callbacks)."""
    import io

    import soundfile as sf

    path = Path(path)
    fmt, subtype = audio_format(path)
    data = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    encoded = io.BytesIO()
    sf.write(encoded, data, sample_rate, format=fmt, subtype=subtype)
    with atomic_file(path) as tmp:
        tmp.write_bytes(encoded.getbuffer())
    return path


def import_sounddevice():
    try:
        import sounddevice
    except (OSError, ImportError) as e:  # the Linux wheel needs the system PortAudio library
        raise AudioDeviceError(
            f"cannot play audio: {e}. Install PortAudio (macOS: brew install portaudio; "
            "Debian/Ubuntu: sudo apt-get install libportaudio2) or save to a file with --out") from None
    return sounddevice


def check_output_device(device=None) -> None:
    """Raise AudioDeviceError unless an output device can be opened (cheap: no stream)."""
    sd = import_sounddevice()
    try:
        sd.query_devices(device, kind="output")
    except (sd.PortAudioError, ValueError) as e:
        raise AudioDeviceError(f"no audio output device ({e}); save to a file with --out") from None


class Player:
    """Plays float32 mono chunks while they are still being generated.

    - Bounded buffer: `play` blocks once `max_buffer_s` of audio waits (backpressure).
    - Adaptive pre-buffer: playback starts when the buffered audio covers the wait for the next
      chunk at the measured arrival rate (so at once when generation is well ahead of real
      time), plus the shortfall over `horizon_s` of speech when it is slower than real time,
      never more than `max_prebuffer_s`. Running dry mid-speech goes back to buffering: one
      pause instead of stutter. A fixed `prebuffer_s` replaces the adaptive rule.
    - `finish` starts whatever is buffered and returns once the last sample has been played.
    - As a context manager: drains on a normal exit, stops at once on an exception (Ctrl-C).

    `sounddevice` may be any module-like object with OutputStream, CallbackStop and
    PortAudioError (tests inject fakes); by default the real one is imported on `open`.
    """

    SAFETY = 1.25  # margin on the estimated wait for the next chunk

    def __init__(self, sample_rate: int, *, prebuffer_s: float | None = None, max_prebuffer_s: float = 3.0,
                 horizon_s: float = 10.0, max_buffer_s: float = 20.0, device=None, sounddevice=None,
                 clock=time.monotonic):
        self.sample_rate = sample_rate
        self.prebuffer_s, self.max_prebuffer_s, self.horizon_s = prebuffer_s, max_prebuffer_s, horizon_s
        self.capacity = int(max_buffer_s * sample_rate)
        self.device, self._sd, self._clock = device, sounddevice, clock
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque[np.ndarray] = deque()
        self._head = 0  # samples of _chunks[0] already played
        self._buffered = 0
        self._playing = False  # the callback plays from the buffer (else outputs silence)
        self._finished = False  # no more chunks will come
        self._stream = None
        self._stream_started = False
        self._done = threading.Event()  # set by PortAudio once the stream has stopped
        self._t_open = self._t_first = 0.0
        self._received = self._first_len = self._largest = self._arrivals = 0
        self.samples_played = 0
        self.underruns = 0
        self.start_latency_s: float | None = None  # from open() to the first sound

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> "Player":
        sd = self._sd = self._sd or import_sounddevice()
        try:
            self._stream = sd.OutputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                                           device=self.device, callback=self._callback,
                                           finished_callback=self._done.set)
        except (sd.PortAudioError, ValueError) as e:
            raise AudioDeviceError(f"no audio output device ({e}); save to a file with --out") from None
        self._t_open = self._clock()  # arrival rates are measured from here
        return self

    def __enter__(self) -> "Player":
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.stop()

    def play(self, samples: np.ndarray) -> None:
        """Queue a chunk; blocks while the buffer is full."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not len(samples):
            return
        self._wait_for_room()
        with self._cond:
            now = self._clock()
            if not self._arrivals:
                self._t_first, self._first_len = now, len(samples)
            self._arrivals += 1
            self._received += len(samples)
            self._largest = max(self._largest, len(samples))
            self._chunks.append(samples)
            self._buffered += len(samples)
            start = not self._playing and self._ready(now)
        if start:
            self._begin()

    def finish(self) -> None:
        """No more audio: play what is buffered and wait until the device has played it all."""
        with self._cond:
            self._finished = True
            pending = self._buffered / self.sample_rate
        try:
            if self._stream is not None and (self._stream_started or pending):
                self._begin()
                # The device plays in real time; the margin covers its output latency.
                deadline = time.monotonic() + pending + 5.0
                while not self._done.wait(0.05):
                    if time.monotonic() > deadline:
                        self._stream.abort()
                        raise AudioDeviceError("the audio device stopped taking audio")
        finally:
            self.close()

    def stop(self) -> None:
        """Drop everything queued and silence the device now (Ctrl-C)."""
        with self._cond:
            self._chunks.clear()
            self._buffered, self._finished, self._playing = 0, True, False
            self._cond.notify_all()
        if self._stream is not None and self._stream_started:
            self._stream.abort()
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- internals ------------------------------------------------------------------------------

    def _ready(self, now: float) -> bool:
        """Whether the buffered audio carries playback until more arrives (under the lock)."""
        ahead = self._buffered / self.sample_rate
        if self.prebuffer_s is not None:
            return ahead >= self.prebuffer_s
        if self._arrivals == 1:  # one chunk so far: the rate it took, prefill included
            rate = self._received / self.sample_rate / max(now - self._t_open, 1e-9)
        else:  # later chunks: the steady generation rate
            rate = (self._received - self._first_len) / self.sample_rate / max(now - self._t_first, 1e-9)
        wait_next = self.SAFETY * self._largest / self.sample_rate / rate
        need = wait_next + max(0.0, 1.0 - rate) * self.horizon_s
        return ahead >= min(need, self.max_prebuffer_s)

    def _wait_for_room(self) -> None:
        while True:
            with self._cond:
                if self._buffered < self.capacity:
                    return
                if self._done.is_set():
                    raise AudioDeviceError("the audio device stopped taking audio")
                if self._playing:
                    self._cond.wait(0.1)
                    continue
            self._begin()  # a full buffer always plays, whatever the rate estimate says

    def _begin(self) -> None:
        with self._cond:
            self._playing = True
            if self.start_latency_s is None:
                self.start_latency_s = self._clock() - self._t_open
            start = not self._stream_started and self._stream is not None
            self._stream_started = True
        if start:  # outside the lock: PortAudio may run the callback while starting
            try:
                self._stream.start()
            except self._sd.PortAudioError as e:
                raise AudioDeviceError(f"cannot start audio output ({e}); save to a file with --out") from None

    def _callback(self, outdata, frames, time_info, status):
        out = outdata[:, 0]
        with self._cond:
            n = 0
            while self._playing and n < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - n, len(chunk) - self._head)
                out[n:n + take] = chunk[self._head:self._head + take]
                n += take
                self._head += take
                if self._head == len(chunk):
                    self._chunks.popleft()
                    self._head = 0
            out[n:] = 0
            self._buffered -= n
            self.samples_played += n
            stop = self._finished and not self._buffered
            if self._playing and n < frames and not stop:  # ran dry mid-speech: buffer again
                self._playing = False
                self.underruns += 1
            self._cond.notify_all()
        if stop:  # PortAudio still plays this block, then calls finished_callback
            raise self._sd.CallbackStop
