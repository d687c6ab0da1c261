"""Fuzz targets: every reader of outside data, each with real seeds and a mutator.

config (config.json, speech_tokenizer/config.json, generation_config.json via load_model_config),
safetensors as a Hugging Face snapshot reads it (read_safetensors), a converted folder (index + shards,
read_converted_weights), voice files (voice.load_voice), GGUF pairs of each dialect (the converter up to
writing; one pair converted in full), reference audio files and arrays (voice.load_reference_audio),
text of any script and length (the splitter through engine/request.make_request), and the server's
request parser (a POST /v1/audio/speech body through the app's middleware, parsing and checks, up to the
engine's own validation).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from harness import byte_edits, json_edits

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))


@dataclass
class Target:
    name: str
    generate: Callable  # random.Random -> one input
    run: Callable  # input -> None (raises on bad input)
    weight: float = 1.0  # share of a long run's inputs
    names: tuple = ()  # what a clean error must name (the user's file or folder)


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data, allow_nan=True).encode())
    return path


def _json_or_bytes(seed: dict, rng):
    kind = rng.randrange(8)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    return byte_edits(json.dumps(seed).encode(), rng) if kind == 1 else json_edits(seed, rng)


# ---- config files ----

CONFIG_FILES = ("config.json", "speech_tokenizer/config.json", "generation_config.json")


def config_target(fixtures: Path, work: Path) -> Target:
    from mlx_qwen_tts.config import load_model_config

    from mlx_qwen_tts.loading import FORMAT_KEY, converted_meta
    from mlx_qwen_tts.models.codec_encoder import MimiEncoderArgs

    seeds = {v.name: {n: json.loads((v / n).read_text()) for n in CONFIG_FILES}
             for v in sorted((fixtures / "models").iterdir())}
    converted = json.loads(json.dumps(seeds["customvoice_1b7"]))  # as the converter marks its folders
    converted["config.json"][FORMAT_KEY] = {"format_version": 1, "dtype": "bfloat16", "source": {"kind": "gguf"},
                                            "quantization": {"group_size": 32, "bits": 8, "mode": "affine"}}
    seeds["converted"] = converted
    def generate(rng):
        variant, name = rng.choice(sorted(seeds)), rng.choice(CONFIG_FILES)
        return variant, name, _json_or_bytes(seeds[variant][name], rng)
    folder = work / "config"

    def run(case):
        variant, name, content = case
        for n in CONFIG_FILES:
            _write(folder / n, content if n == name else seeds[variant][n])
        st = load_model_config(folder).speech_tokenizer
        converted_meta(folder)
        if st.encoder is not None:
            MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
    return Target("config", generate, run, weight=30, names=(str(folder),))


# ---- safetensors ----

def _small_safetensors(path: Path, prefix: str = "") -> Path:
    import mlx.core as mx

    rng = np.random.default_rng(0)
    mx.save_safetensors(str(path), {
        f"{prefix}talker.model.norm.weight": mx.array(rng.standard_normal(8).astype(np.float32)),
        f"{prefix}talker.model.layers.0.mlp.up_proj.weight": mx.array(rng.standard_normal((4, 8))).astype(mx.bfloat16),
        f"{prefix}talker.codec_head.weight": mx.array(rng.standard_normal((3, 8)).astype(np.float16)),
        f"{prefix}speaker_encoder.fc.bias": mx.array(np.arange(4, dtype=np.int32)),
        f"{prefix}talker.model.codec_embedding.weight": mx.array(np.arange(6, dtype=np.uint8).reshape(2, 3))})
    return path


def _header_parts(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header: dict, rest: bytes) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw)) + raw + rest


def safetensors_mutations(seed: bytes, rng) -> bytes:
    header, rest = _header_parts(seed)
    if rng.randrange(3):
        return _with_header(json_edits(header, rng), rest)
    return byte_edits(seed, rng, hot=[0, 8], hot_end=8 + len(seed) - len(rest))


def _evaluate(weights: dict):
    import mlx.core as mx

    mx.eval(list(weights.values()))


def safetensors_target(work: Path) -> Target:
    from mlx_qwen_tts.loading import map_hf_model_weights, read_safetensors

    seed = _small_safetensors(work / "seed.safetensors").read_bytes()
    path = work / "hf" / "model.safetensors"

    def run(data):
        weights = read_safetensors(_write(path, data))
        _evaluate(weights)
        map_hf_model_weights(weights, path)
    return Target("safetensors-hf", lambda rng: safetensors_mutations(seed, rng), run, weight=30,
                  names=(str(path),))


def converted_target(work: Path) -> Target:
    from mlx_qwen_tts.loading import read_converted_weights

    shards = {name: _small_safetensors(work / f"seed-{i}.safetensors", prefix=f"s{i}.").read_bytes()
              for i, name in enumerate(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])}
    index = {"metadata": {}, "weight_map": {}}
    for name, data in shards.items():
        index["weight_map"].update({k: name for k in _header_parts(data)[0] if k != "__metadata__"})
    folder = work / "converted"
    def generate(rng):
        if rng.randrange(2):
            return json_edits(index, rng), None
        return index, safetensors_mutations(next(iter(shards.values())), rng)

    def run(case):
        idx, shard = case
        shutil.rmtree(folder, ignore_errors=True)
        _write(folder / "model.safetensors.index.json", idx)
        for i, (name, data) in enumerate(shards.items()):
            _write(folder / name, shard if (shard is not None and i == 0) else data)
        _evaluate(read_converted_weights(folder))
    return Target("safetensors-converted", generate, run, weight=20, names=(str(folder),))


def voice_target(fixtures: Path, work: Path) -> Target:
    import mlx.core as mx

    from mlx_qwen_tts.engine.prompt import VoiceClone
    from mlx_qwen_tts.loading import load_model
    from mlx_qwen_tts.voice import load_voice, save_voice

    model = load_model(fixtures / "models" / "base_0b6", dtype=mx.float32, codec=False)
    voice = np.load(fixtures / "dumps" / "base_0b6" / "voice.npz")
    seeds = [save_voice(work / f"seed-{i}.safetensors", clone, model).read_bytes() for i, clone in enumerate(
        [VoiceClone(mx.array(voice["xvector"])),
         VoiceClone(mx.array(voice["xvector"]), mx.array(voice["ref_codes"]), "reference text")])]
    path = work / "voice.safetensors"
    return Target("voice-file", lambda rng: safetensors_mutations(rng.choice(seeds), rng),
                  lambda data: load_voice(_write(path, data), model), weight=30, names=(str(path),))


# ---- GGUF ----

def gguf_hot_offsets(data: bytes) -> tuple[list[int], int]:
    """Where the GGUF header keeps counts, lengths, types, dimensions and offsets; and its length."""
    from mlx_qwen_tts_convert.gguf_dialects import _ARRAY, _SCALAR, _STRING, _Cursor

    c, hot = _Cursor(data), [4, 8, 16]
    c.pos = 4
    c.take("<I")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    for _ in range(n_kv):
        hot.append(c.pos)
        key = c.string()
        hot.append(c.pos)
        kind = c.take("<I")
        hot.append(c.pos)
        if kind == _ARRAY and key.startswith("tokenizer."):  # skip the long vocabulary arrays quickly
            sub, n = c.take("<I"), c.take("<Q")
            if sub == _STRING:
                for _ in range(n):
                    c.string()
            else:
                c.pos += n * struct.calcsize(_SCALAR[sub])
        else:
            c.value(kind)
    for _ in range(n_tensors):
        hot.append(c.pos)
        c.string()
        hot.append(c.pos)
        dims = c.take("<I")
        hot += [c.pos + 8 * i for i in range(dims)]
        c.pos += 8 * dims
        hot += [c.pos, c.pos + 4]
        c.pos += 12
    return hot, c.pos


@contextlib.contextmanager
def _no_publish():
    """The converter up to writing: every reader and check runs, nothing is written."""
    import mlx_qwen_tts_convert.gguf_import as gi

    real = gi.publish
    gi.publish = lambda out, build, **_: out
    try:
        yield
    finally:
        gi.publish = real


def gguf_pairs(fixtures: Path, work: Path) -> dict:
    """name -> (talker path, codec path, tokenizer_dir or None): one pair per dialect and a Base pair."""
    from gguf import GGMLQuantizationType as Q
    from test_gguf import ARCH, build, crispasr_f16, qwentts, rusttts_q4_0, write_gguf

    models, pairs = fixtures / "models", {}
    for name, variant, talker, codec, side in [
            ("qwen3-tts", "customvoice_0b6", ("qwen3-tts", qwentts(Q.F32)), ("qwen3-tts", qwentts(Q.Q8_0)), False),
            ("crispasr", "customvoice_1b7", ("crispasr", crispasr_f16), ("crispasr", crispasr_f16), True),
            ("hf-names", "base_0b6", ("hf-names", rusttts_q4_0), ("hf-names", rusttts_q4_0), True)]:
        folder = work / name
        (folder / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
        for n in ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                  "speech_tokenizer/config.json"):
            shutil.copyfile(models / variant / n, folder / n)
        pair = build(folder, models / variant, talker=talker, codec=codec, tag=name, ggml_dims=name == "crispasr")
        pairs[name] = (pair.talker, pair.codec, folder if side else None)
        if not side:  # fuzzing the codec: a talker without the 150k-entry vocabulary reads 50x faster
            kv, tensors = pair.parts["talker"]
            light = write_gguf(folder / f"{name}-light-talker.gguf", ARCH[name, "talker"],
                               {k: v for k, v in kv.items() if not k.startswith("tokenizer.")}, tensors)
            pairs[f"{name}-light"] = (light, pair.codec, folder)
    return pairs


def gguf_target(name: str, pair: tuple, work: Path, role: str) -> Target:
    from mlx_qwen_tts_convert.gguf_import import convert_gguf

    talker, codec, side = pair
    seed = (talker if role == "talker" else codec).read_bytes()
    hot, header_len = gguf_hot_offsets(seed)
    mutated = work / f"fuzz-{name}-{role}.gguf"

    def run(header):
        with open(mutated, "wb") as f:  # the data section as zeros (sparse): the header is what is fuzzed
            f.write(header)
            f.truncate(len(header) + len(seed) - header_len if len(header) == header_len else len(header))
        files = (mutated, codec) if role == "talker" else (talker, mutated)
        with _no_publish():
            convert_gguf(*files, work / f"out-{name}", tokenizer_dir=side, overwrite=True)
    # shares of a long run by cost per input (the qwen3-tts talker parses a 150k-entry vocabulary each time)
    weight = {"qwen3-tts-talker": 0.3, "hf-names-talker": 0.5, "hf-names-codec": 0.7}.get(f"{name}-{role}", 1.0)
    return Target(f"gguf-{name}-{role}", lambda rng: byte_edits(seed[:header_len], rng, hot=hot), run, weight,
                  names=(talker.name, codec.name, mutated.name))


def gguf_full_target(pair: tuple, work: Path) -> Target:
    """Metadata and tensor-info mutations of a Base pair, converted and verified in full (slow)."""
    from mlx_qwen_tts_convert.gguf_import import convert_gguf

    talker, codec, side = pair
    seed = codec.read_bytes()
    hot, header_len = gguf_hot_offsets(seed)
    mutated = work / "fuzz-full-codec.gguf"

    def run(header):
        _write(mutated, header + seed[header_len:])
        convert_gguf(talker, mutated, work / "out-full", tokenizer_dir=side, overwrite=True)
    return Target("gguf-full-convert", lambda rng: byte_edits(seed[:header_len], rng, hot=hot), run, weight=0.02,
                  names=(talker.name, mutated.name))


# ---- reference audio ----

def audio_target(work: Path) -> Target:
    import soundfile as sf

    from mlx_qwen_tts.voice import load_reference_audio

    t = np.arange(int(1.5 * 16000)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    seeds = []
    for fmt, subtype, ext in [("WAV", "FLOAT", "wav"), ("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                              ("OGG", "VORBIS", "ogg")]:
        path = work / f"seed-{subtype}.{ext}"
        sf.write(path, np.stack([tone, tone], axis=1), 16000, format=fmt, subtype=subtype)
        seeds.append((ext, path.read_bytes()))
    def generate(rng):
        ext, data = rng.choice(seeds)
        return ext, byte_edits(data, rng, hot_end=128)

    def run(case):
        ext, data = case
        load_reference_audio(_write(work / f"ref.{ext}", data))
    return Target("audio-file", generate, run, weight=20)


def audio_array_target() -> Target:
    from mlx_qwen_tts.voice import load_reference_audio

    dtypes = [np.float32, np.float64, np.float16, np.int16, np.int32, np.int8, np.uint8, np.bool_, np.complex64,
              np.int64, object]
    rates = [None, 24000, 16000, 1, 0, -1, 8000, 192000, 2 ** 40, 24000.0, float("nan"), True, "24000"]

    def generate(rng):
        shape = tuple(rng.choice([0, 1, 2, 8, 9, 100, 24000, 36000, 800000]) for _ in range(rng.randrange(4)))
        if int(np.prod(shape)) > 2_000_000:
            shape = shape[:1]
        gen = np.random.default_rng(rng.randrange(2 ** 32))
        values = gen.standard_normal(shape) * rng.choice([0.0, 1e-4, 0.3, 2.0, 1e6])
        if values.size and rng.randrange(4) == 0:
            values.flat[gen.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
        dtype = rng.choice(dtypes)
        with np.errstate(all="ignore"):
            array = values.astype(dtype) if dtype is not object else values.astype(object)
        return array, rng.choice(rates)
    return Target("audio-array", generate, lambda case: load_reference_audio(case[0], case[1]), weight=20)


# ---- text: the splitter's bounds through make_request ----

TEXT_PIECES = ["Hello", " ", "world", ".", ",", "!", "?", "。", "，", "、", "中文", "ภาษาไทย", "😀",
               "👨\u200d👩\u200d👧", "\ufe0f", "\u0301", "\u200b", "\u200d", "\n", "\t", "—", '"', "…", "\udcff",
               "\U0001F3FD", "ﬀ", "\uFB2C", "x" * 300]


def text_target(fixtures: Path) -> Target:
    import unicodedata

    from mlx_qwen_tts.config import load_model_config
    from mlx_qwen_tts.engine.request import make_request

    cfg = load_model_config(fixtures / "models" / "customvoice_1b7")

    def generate(rng):
        pieces = [rng.choice(TEXT_PIECES) if rng.randrange(3) else chr(rng.randrange(0x110000))
                  for _ in range(rng.choice([1, 10, 200, 3000]))]
        return "".join(pieces) * rng.choice([1, 1, 1, 30]), rng.choice([1, 8, 9, 40, 250, 100_000])

    def run(case):
        text, budget = case
        segments = make_request(cfg, text, voice="ryan", max_segment_tokens=budget).segments
        visible = "".join(unicodedata.normalize("NFC", text).split())
        if not all(s and len(s.encode()) <= budget for s in segments) or "".join(
                "".join(s.split()) for s in segments) != visible:
            raise AssertionError(f"split_text broke its bounds for a {len(text)}-character text, budget {budget}")
    return Target("text-splitter", generate, run, weight=5)


# ---- the server's request parser: a speech request's body up to the engine ----

SPEECH_BODY = {"model": "tts", "input": "Hello world.", "voice": "ryan", "response_format": "wav", "speed": 1.0,
               "seed": 1, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_frames": 10, "language": "auto",
               "instructions": "calm", "stream_format": "audio"}


class _ValidatingEngine:
    """Stands in for the engine: validates like `Engine.submit`, then answers busy (429), so a
    request that passes every check never reaches generation."""

    active_rows = queued = 0
    max_batch, lag_s = 1, 0.0

    def __init__(self, cfg):
        self.cfg = cfg

    def submit(self, text, **kwargs):
        from mlx_qwen_tts.engine.request import make_request
        from mlx_qwen_tts.engine.service import QueueFull

        make_request(self.cfg, text, **kwargs)
        raise QueueFull("validated")

    def close(self, timeout=None):
        pass


def speech_request_target(fixtures: Path) -> Target:
    import asyncio
    from types import SimpleNamespace

    import httpx

    from mlx_qwen_tts.config import load_model_config
    from mlx_qwen_tts.server.app import ServerState, create_app
    from mlx_qwen_tts.server.registry import VoiceRegistry

    cfg = load_model_config(fixtures / "models" / "customvoice_0b6")
    engine, model = _ValidatingEngine(cfg), SimpleNamespace(config=cfg)
    app = create_app(ServerState(model=model, engine=engine, registry=VoiceRegistry(None, engine, model),
                                 model_id="tts", ready=True))

    def generate(rng):
        data = _json_or_bytes(SPEECH_BODY, rng)
        return data if isinstance(data, bytes) else json.dumps(data, allow_nan=True).encode()

    async def post(body: bytes):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tts") as client:
            return await client.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})

    def run(body):
        response = asyncio.run(post(body))
        if response.status_code == 429:  # every check passed; the stand-in engine answered busy
            return
        message = response.json()["error"]["message"] if response.status_code in (400, 404, 413) else None
        if not message or "\n" in message:
            raise AssertionError(f"status {response.status_code} for {body[:80]!r}: {response.text[:200]}")
        raise ValueError(message)  # a clean OpenAI-style error
    return Target("server-request", generate, run, weight=3)


def all_targets(fixtures: Path, work: Path, full_gguf: bool = True) -> list[Target]:
    dirs = {n: work / n for n in ("config", "st", "conv", "voice", "gguf", "audio")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    targets = [config_target(fixtures, dirs["config"]), safetensors_target(dirs["st"]),
               converted_target(dirs["conv"]), voice_target(fixtures, dirs["voice"]), audio_target(dirs["audio"]),
               audio_array_target(), text_target(fixtures), speech_request_target(fixtures)]
    pairs = gguf_pairs(fixtures, dirs["gguf"])
    for name in ("qwen3-tts", "crispasr", "hf-names"):
        targets.append(gguf_target(name, pairs[name], dirs["gguf"], "talker"))
        targets.append(gguf_target(name, pairs.get(f"{name}-light", pairs[name]), dirs["gguf"], "codec"))
    if full_gguf:
        targets.append(gguf_full_target(pairs["hf-names"], dirs["gguf"]))
    return targets
