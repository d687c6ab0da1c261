"""Cloned voices for the Base models: reference audio in, `VoiceClone` out, and saved voice files.

A clone always carries the speaker x-vector; given the reference transcript it also carries the
reference codes for in-context cloning (architecture §2.4). A voice file stores both, plus a
fingerprint of the encoders that made them, so it is never used with a model it does not fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import weakref
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_qwen_tts.atomic import atomic_file, check_writable_file
from mlx_qwen_tts.models.codec_encoder import CodecEncoder, MimiEncoderArgs, load_codec_encoder
from mlx_qwen_tts.engine.prompt import MAX_REF_TEXT_CHARS, VoiceClone, check_text_limit
from mlx_qwen_tts.models.speaker_encoder import SpeakerEncoder, extract_xvector, load_speaker_encoder

SAMPLE_RATE = 24000
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0
SILENCE_PEAK = 1e-3  # -60 dBFS
VOICE_FORMAT, VOICE_FORMAT_VERSION = "mlx-qwen-tts-voice", 1
MAX_HEADER_BYTES = 1 << 20  # a voice header is a few hundred bytes plus the reference text
MAX_REF_FRAMES = int(MAX_SECONDS * 12.5) + 8  # 30 s of reference codes at 12.5 Hz, with slack
_PCM_SCALE = {np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}


def _read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    from mlx_qwen_tts.paths import path_problem

    problem = path_problem(path)
    if problem:
        raise FileNotFoundError(f"reference audio {path} {problem}")
    try:
        with sf.SoundFile(str(path)) as f:
            if f.samplerate <= 0 or f.frames > (MAX_SECONDS + 1) * f.samplerate or f.channels > 8:
                raise ValueError(f"{path}: a {f.frames / max(f.samplerate, 1):.0f} s, {f.channels}-channel recording "
                                 f"is not a usable reference; give 1-{MAX_SECONDS:g} s (3-10 s of clean speech "
                                 "works best)")
            return f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.SoundFileError, RuntimeError, MemoryError) as e:
        raise ValueError(f"{path} is not a readable audio file ({e}); use WAV, FLAC, OGG or MP3") from None


def _as_float(wave) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.dtype in _PCM_SCALE:
        return wave.astype(np.float32) / _PCM_SCALE[wave.dtype]
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"reference audio samples have type {wave.dtype}; expected float samples in [-1, 1] "
                         "or 16/32-bit PCM integers")
    return wave.astype(np.float32)


def load_reference_audio(audio, sample_rate: int | None = None) -> np.ndarray:
    """A cloning reference as float32 mono at 24 kHz.

    Args:
        audio: an audio file path (anything soundfile reads), a waveform array ([samples] or
            [samples, channels]), or a (waveform, sample_rate) tuple.
        sample_rate: the rate of a waveform array; 24 kHz if not given. Files carry their own.

    Raises:
        ValueError: unreadable file, wrong sample type or layout, non-finite samples, shorter
            than 1 s, longer than 30 s, or silent.
    """
    if isinstance(audio, tuple) and len(audio) == 2:
        audio, sample_rate = audio
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for waveform arrays; an audio file carries its own rate")
        wave, rate = _read_audio_file(Path(audio))
    else:
        wave, rate = _as_float(audio), SAMPLE_RATE if sample_rate is None else sample_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {rate!r}")
    if wave.ndim == 2:
        if wave.shape[1] > 8:
            raise ValueError(f"reference audio has shape {wave.shape}; expected [samples, channels] "
                             "(transpose a [channels, samples] array)")
        wave = wave.mean(axis=1)  # mono mix, as the official loader does
    elif wave.ndim != 1:
        raise ValueError(f"reference audio must be 1-D or [samples, channels], got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("reference audio contains NaN or infinite samples")
    seconds = len(wave) / rate
    if seconds < MIN_SECONDS:
        raise ValueError(f"reference audio is too short ({seconds:.2f} s); give at least {MIN_SECONDS:g} s "
                         "(3-10 s of clean speech works best)")
    if seconds > MAX_SECONDS:
        raise ValueError(f"reference audio is too long ({seconds:.1f} s); trim it to at most {MAX_SECONDS:g} s "
                         "(3-10 s of clean speech works best)")
    if rate != SAMPLE_RATE:
        import soxr

        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")  # librosa's default resampler
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise ValueError(f"reference audio is silent (peak {peak:.1e}); record some speech")
    if peak > 1.0:
        warnings.warn(f"reference audio peaks at {peak:.2f}, beyond [-1, 1]: it may be clipped", stacklevel=2)
    return np.ascontiguousarray(wave, dtype=np.float32)


# Encoders are built on first use and kept per model object until it is garbage collected.
_CACHE: dict[int, dict] = {}


def _cached(model, name: str, build):
    key = id(model)
    if key not in _CACHE:
        _CACHE[key] = {}
        weakref.finalize(model, _CACHE.pop, key, None)
    entry = _CACHE[key]
    if name not in entry:
        entry[name] = build()
    return entry[name]


def _require_base(model):
    if model.config.model_type != "base" or model.config.speaker_encoder is None:
        raise ValueError(f"voice cloning needs a Base model; this one is {model.config.model_type}")


def _speaker_encoder(model) -> SpeakerEncoder:
    _require_base(model)

    def build():
        prefix = "speaker_encoder."
        weights = {k[len(prefix):]: v for k, v in model.extra_weights.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{model.path}: the speaker encoder weights are missing")
        return load_speaker_encoder(weights, model.config.speaker_encoder)
    return _cached(model, "speaker", build)


def _codec_encoder_weights(model) -> dict:
    prefix = "codec_encoder."
    weights = {k[len(prefix):]: v for k, v in model.extra_weights.items() if k.startswith(prefix)}
    if weights:
        return weights
    # A Hugging Face snapshot loaded without its codec: read the encoder half of the tokenizer.
    path = Path(model.path or ".") / "speech_tokenizer" / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{model.path}: the speech-tokenizer encoder weights are missing "
                         "(needed for reference codes)")
    return {k[len("encoder."):]: v for k, v in mx.load(str(path)).items() if k.startswith("encoder.")}


def _codec_encoder(model) -> CodecEncoder:
    _require_base(model)
    st = model.config.speech_tokenizer
    if st.encoder is None:
        raise ValueError(f"{model.path}: speech_tokenizer/config.json has no encoder_config")

    def build():
        args = MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
        return load_codec_encoder(_codec_encoder_weights(model), args)
    return _cached(model, "codec", build)


def model_fingerprint(model) -> str:
    """A hash of both encoders' configs and weights: what a saved voice depends on."""
    _require_base(model)

    def build():
        h = hashlib.sha256()
        st = model.config.speech_tokenizer
        h.update(json.dumps([asdict(model.config.speaker_encoder), st.encoder.raw,
                             st.encoder_valid_num_quantizers], sort_keys=True).encode())
        for module in (_speaker_encoder(model), _codec_encoder(model)):
            for name, value in sorted(tree_flatten(module.parameters())):
                h.update(f"{name}:{value.dtype}:{value.shape}".encode())
                h.update(memoryview(mx.contiguous(value.astype(mx.float32))))
        return h.hexdigest()[:32]
    return _cached(model, "fingerprint", build)


def make_voice_clone(model, ref_audio, ref_text: str | None = None, *,
                     sample_rate: int | None = None) -> VoiceClone:
    """Clone a voice from reference audio (see `load_reference_audio` for the accepted forms).

    Without `ref_text` the clone is x-vector only; with the reference transcript it also holds
    the reference codes for in-context cloning, which follows the voice more closely.
    """
    _require_base(model)
    if ref_text is not None and not ref_text.strip():
        raise ValueError("ref_text is empty; give the transcript of the reference, or None for x-vector-only")
    check_text_limit("ref_text", ref_text, MAX_REF_TEXT_CHARS)
    wave = load_reference_audio(ref_audio, sample_rate)
    xvector = extract_xvector(_speaker_encoder(model), wave)
    ref_codes = None
    if ref_text is not None:
        ref_codes = _codec_encoder(model)(mx.array(wave)[None])[0].astype(mx.int32)
    mx.eval(xvector, ref_codes)
    return VoiceClone(xvector=xvector, ref_codes=ref_codes, ref_text=ref_text)


def save_voice(path: str | os.PathLike, clone: VoiceClone, model) -> Path:
    """Write `clone` to a safetensors voice file (atomically) tied to this model's encoders."""
    import safetensors.numpy

    enc_dim = model.config.speaker_encoder.enc_dim if model.config.speaker_encoder else None
    if tuple(clone.xvector.shape) != (enc_dim,):
        raise ValueError(f"x-vector has shape {tuple(clone.xvector.shape)}; this model needs ({enc_dim},)")
    if (clone.ref_codes is None) != (clone.ref_text is None):
        raise ValueError("reference codes and reference text go together: give both or neither")
    check_text_limit("ref_text", clone.ref_text, MAX_REF_TEXT_CHARS)
    tensors = {"xvector": np.array(clone.xvector.astype(mx.float32))}
    metadata = {"format": VOICE_FORMAT, "format_version": str(VOICE_FORMAT_VERSION),
                "model_fingerprint": model_fingerprint(model)}
    if clone.ref_codes is not None:
        tensors["ref_codes"] = np.array(clone.ref_codes.astype(mx.int32))
        metadata["ref_text"] = clone.ref_text
    path = check_voice_path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    return path


def check_voice_path(path: str | os.PathLike) -> Path:
    """Where a voice file may be written: a .safetensors name in a writable folder."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" and not path.is_dir():
        raise ValueError(f"cannot write voice file {path}: give it a .safetensors name")
    return check_writable_file(path, "voice file")


def _read_header(path: Path) -> dict:
    """The safetensors header (8-byte little-endian length, then JSON), without any tensor data:
    a model file given by mistake is rejected without being read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError
            header = json.loads(f.read(length))
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a voice file (not a safetensors file)") from None
    if not isinstance(header, dict) or not isinstance(header.setdefault("__metadata__", {}) or {}, dict):
        raise ValueError(f"{path} is not a voice file (malformed safetensors header)")
    return header


def _check_tensors(path: Path, header: dict, model, has_text: bool):
    """Names, dtypes and shapes from the header, before any tensor is read."""
    enc_dim = model.config.speaker_encoder.enc_dim
    expected = {"xvector": ("F32", f"[{enc_dim}]")}
    if has_text:
        expected["ref_codes"] = ("I32", f"[frames, {model.config.num_code_groups}]")
    names = set(header) - {"__metadata__"}
    if names != set(expected):
        raise ValueError(f"{path} holds the tensors {sorted(names)}; a voice file "
                         f"{'with' if has_text else 'without'} reference text holds {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        info = header[name]
        shape_field = info.get("shape", ()) if isinstance(info, dict) else None
        valid = isinstance(shape_field, (list, tuple)) and all(type(n) is int for n in shape_field)
        got = tuple(shape_field) if valid else None  # a hand-edited header may hold anything here
        fits = got is not None and (got == (enc_dim,) if name == "xvector" else
                                    len(got) == 2 and 1 <= got[0] <= MAX_REF_FRAMES
                                    and got[1] == model.config.num_code_groups)
        if not fits or info.get("dtype") != dtype:
            raise ValueError(f"{path}: {name} is {info.get('dtype') if isinstance(info, dict) else '?'} "
                             f"{list(got) if got is not None else '?'}; this model needs {dtype} {shape}"
                             + (f" with at most {MAX_REF_FRAMES} frames" if name == "ref_codes" else ""))


def load_voice(path: str | os.PathLike, model) -> VoiceClone:
    """Read a voice file written by `save_voice`; it must have been made with this model's encoders.

    The header is checked first (format, tensor names, dtypes, shapes), then the values (a finite
    x-vector, codes within the codebook), so a foreign or hand-edited file never reaches the model.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    from mlx_qwen_tts.paths import path_problem

    problem = path_problem(path)
    if problem:
        raise FileNotFoundError(f"voice file {path} {problem}")
    header = _read_header(path)
    metadata = header["__metadata__"] or {}  # MLX writes null when there is none
    if metadata.get("format") != VOICE_FORMAT:
        raise ValueError(f"{path} is not an mlx-qwen-tts voice file")
    version = str(metadata.get("format_version", "0"))
    if not (version.isascii() and version.isdigit()):
        raise ValueError(f"{path}: format_version {version!r:.20} is not a version number")
    if int(version) > VOICE_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer mlx-qwen-tts; upgrade to read it")
    _require_base(model)
    ref_text = metadata.get("ref_text")
    if ref_text is not None and (not isinstance(ref_text, str) or not ref_text.strip()):
        raise ValueError(f"{path}: its reference text is empty")
    if ref_text is not None and len(ref_text) > MAX_REF_TEXT_CHARS:
        raise ValueError(f"{path}: its reference text is too long ({len(ref_text):,} characters; the limit is "
                         f"{MAX_REF_TEXT_CHARS:,}); create the voice again with the reference's transcript")
    _check_tensors(path, header, model, ref_text is not None)
    if metadata.get("model_fingerprint") != model_fingerprint(model):
        raise ValueError(f"{path} was made with a different model (its encoders differ from {model.path}); "
                         "create the voice again with this model")
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a voice file: {e}") from None
    xvector, codes = tensors["xvector"], tensors.get("ref_codes")
    if not np.isfinite(xvector).all():
        raise ValueError(f"{path}: the x-vector holds NaN or infinite values")
    if codes is not None and (codes.min() < 0 or codes.max() >= model.config.codebook_size):
        raise ValueError(f"{path}: reference codes must lie in [0, {model.config.codebook_size}), found "
                         f"[{codes.min()}, {codes.max()}]")
    return VoiceClone(xvector=mx.array(xvector), ref_codes=None if codes is None else mx.array(codes),
                      ref_text=ref_text)
