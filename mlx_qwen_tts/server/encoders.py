"""Streaming audio encoders: one container per response, fed chunk by chunk.

`make_encoder(fmt)` returns an object with `feed(samples) -> bytes` and `finish() -> bytes`;
the bytes of all calls, concatenated, are one valid file. pcm is 24 kHz mono s16le without a
header; wav is one RIFF header whose size fields are 0xFFFFFFFF (the length is unknown while
streaming, as OpenAI does) followed by s16 data; mp3 (constant bitrate), opus (Ogg) and flac
come from one libsndfile encoder running across the chunks, writing into a sink that hands on
every byte once it is written. libsndfile seeks back only to patch header fields at close (FLAC
STREAMINFO totals); bytes already sent keep their streaming values (0 = unknown), which
decoders accept.
"""

from __future__ import annotations

import struct

import numpy as np

SAMPLE_RATE = 24000

# Content types of the usual OpenAI-compatible servers; OpenAI's opus is Ogg Opus.
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
FORMATS = tuple(CONTENT_TYPES)
_SOUNDFILE = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS"), "flac": ("FLAC", "PCM_16")}
MP3_BITRATE_LEVEL = 0.5  # libsndfile's compression level: 0 is the highest bitrate


class EncoderUnavailable(ValueError):
    """The format needs an encoder this installation lacks."""


def to_s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte RIFF/WAVE header for mono s16 with the sizes unknown (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


class PcmEncoder:
    def __init__(self, header: bytes = b""):
        self._header = header

    def feed(self, samples: np.ndarray) -> bytes:
        out, self._header = self._header + to_s16(samples), b""
        return out

    def finish(self) -> bytes:
        out, self._header = self._header, b""
        return out


class _Sink:
    """A write-only file for libsndfile's virtual IO that keeps only what was not yet handed on."""

    def __init__(self):
        self.pos = self.size = self.sent = 0
        self.pending = bytearray()  # bytes [sent, size)

    def write(self, data) -> int:
        data = bytes(data)
        end = self.pos + len(data)
        start = max(self.pos, self.sent)  # a patch of bytes already sent is dropped
        if end > start:
            offset = start - self.sent
            if offset > len(self.pending):
                self.pending.extend(b"\0" * (offset - len(self.pending)))
            self.pending[offset:offset + end - start] = data[start - self.pos:]
        self.pos = end
        self.size = max(self.size, end)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        return b""  # nothing is read back: a header patch reads as empty, which libsndfile tolerates

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.sent += len(out)
        self.pending = bytearray()
        return out


class SoundfileEncoder:
    def __init__(self, fmt: str, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        container, subtype = _SOUNDFILE[fmt]
        if container not in sf.available_formats() or subtype not in sf.available_subtypes(container):
            raise EncoderUnavailable(f"response_format {fmt} needs libsndfile with {container}/{subtype}, "
                                     "which this installation lacks; use wav, flac or pcm")
        self._sink = _Sink()
        extra = {}
        if fmt == "mp3":
            extra = dict(bitrate_mode="CONSTANT", compression_level=MP3_BITRATE_LEVEL)
        self._file = sf.SoundFile(self._sink, "w", samplerate=sample_rate, channels=1, format=container,
                                  subtype=subtype, **extra)

    def feed(self, samples: np.ndarray) -> bytes:
        self._file.write(np.clip(samples, -1.0, 1.0).astype(np.float32))
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._file.closed:
            self._file.close()
        return self._sink.take()


def make_encoder(fmt: str, sample_rate: int = SAMPLE_RATE):
    """A streaming encoder for an OpenAI `response_format`."""
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return PcmEncoder(wav_stream_header(sample_rate))
    if fmt == "aac":
        raise EncoderUnavailable("response_format aac needs an AAC encoder, which is not installed; "
                                 "use mp3, opus, flac, wav or pcm")
    if fmt in _SOUNDFILE:
        return SoundfileEncoder(fmt, sample_rate)
    raise ValueError(f"unknown response_format {fmt!r}; use one of: {', '.join(FORMATS)}")
