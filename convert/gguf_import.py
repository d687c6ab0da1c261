"""Qwen3-TTS GGUF files (talker + codec, as published by other projects) -> the converter's MLX folder.

Reads memory-mapped tensors one at a time (convert/gguf_dialects.py), maps names to the official
ones, rebuilds the configs (convert/gguf_config.py) and writes the same artefact as the Hugging
Face path, through the same writer and strict verification (convert/convert.py).

Block-quantized talker weights whose destination is quantized (decided by our name,
`should_quantize(name, shape, 32)`) become MLX 8-bit affine groups of 32: Q8_0 and the 32-wide
block types (Q4_0/1, Q5_0/1, Q4_K, Q5_K) are repacked exactly; Q6_K/Q3_K/Q2_K (16-wide sub-blocks
fit no MLX group size) are dequantized and requantized. Everything else is read exactly as float.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np

from .convert import ShardWriter, check_output, progress_bar, publish, write_config
from .gguf_config import codec_config, talker_config
from .gguf_dialects import FLOAT_TYPES, GGUFError, GGUFFile, Tensor
from .gguf_unit_dims import codec_groups, restore_unit_dims, talker_groups
from mlx_qwen_tts.config import ConfigError, parse_model_config
from mlx_qwen_tts.loading import map_hf_codec_weights, map_hf_model_weights
from mlx_qwen_tts.quantize import quantizable, should_quantize

GROUP_SIZE, BITS = 32, 8
# The released preprocessor files (qwen3-tts-architecture.md §1), for a complete folder.
PREPROCESSOR = {"padding_side": "left", "padding_value": 0.0, "processor_class": "Qwen3TTSProcessor",
                "return_attention_mask": True}
ST_PREPROCESSOR = {"chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
                   "overlap": None, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                   "sampling_rate": 24000}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


# ---- exact repacks: GGUF blocks -> (codes as uint8, scale, bias) per 32 weights ----

def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:  # 16 bytes -> 32 codes: low nibbles first, then high
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _bits(b: np.ndarray) -> np.ndarray:
    return np.unpackbits(b, axis=-1, bitorder="little")


def _q8_0(b):  # int8 q + 128 as uint8 is q's bit pattern with the top bit flipped
    d = _f16(b[..., :2])
    return b[..., 2:] ^ np.uint8(0x80), d, -128 * d


def _q4_0(b):
    d = _f16(b[..., :2])
    return _nibbles(b[..., 2:]), d, -8 * d


def _q4_1(b):
    return _nibbles(b[..., 4:]), _f16(b[..., :2]), _f16(b[..., 2:4])


def _q5_0(b):  # bit e of qh is the fifth bit of element e
    d = _f16(b[..., :2])
    return _nibbles(b[..., 6:]) | (_bits(b[..., 2:6]) << 4), d, -16 * d


def _q5_1(b):
    return _nibbles(b[..., 8:]) | (_bits(b[..., 4:8]) << 4), _f16(b[..., :2]), _f16(b[..., 2:4])


def _k_sub_blocks(b):
    """Q4_K/Q5_K: fp16 d, dmin, then 12 bytes of packed 6-bit (scale, min) for 8 sub-blocks of 32."""
    d, dmin, packed = _f16(b[..., 0:2]), _f16(b[..., 2:4]), b[..., 4:16]
    lo_s, lo_m, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scale = np.concatenate([lo_s & 63, (hi & 0xF) | ((lo_s >> 6) << 4)], axis=-1)
    mins = np.concatenate([lo_m & 63, (hi >> 4) | ((lo_m >> 6) << 4)], axis=-1)
    return d[..., None] * scale, -(dmin[..., None] * mins)  # exact in float32


def _k_low(qs):  # 128 bytes: chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high ones
    qs = qs.reshape(*qs.shape[:-1], 4, 32)
    return np.stack([qs & 0xF, qs >> 4], axis=-2).reshape(*qs.shape[:-2], 8, 32)


def _q4_k(b):
    return _k_low(b[..., 16:144]).reshape(*b.shape[:-1], 256), *_k_sub_blocks(b)


def _q5_k(b):  # bit j of qh[l] is the fifth bit of element l of sub-block j
    high = _bits(b[..., 16:48]).reshape(*b.shape[:-1], 32, 8).swapaxes(-1, -2)
    return (_k_low(b[..., 48:176]) | (high << 4)).reshape(*b.shape[:-1], 256), *_k_sub_blocks(b)


_REPACK = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q4_K": _q4_k, "Q5_K": _q5_k}


def repack(data: np.ndarray, qtype: str, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF blocks of a [rows, cols] weight -> MLX 8-bit affine group-32 (weight, scales, biases),
    dequantizing to exactly the GGUF values in float32. Scales and biases are float16 where that
    holds them exactly (Q8_0, Q4_x, Q5_x), else float32 (the K-types' products d * sub-scale)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    rows, cols = math.prod(shape[:-1]), shape[-1]
    codes, scales, biases = _REPACK[qtype](np.asarray(data).reshape(rows, cols // block, size))
    weight = np.ascontiguousarray(codes.reshape(rows, cols)).view(np.uint32).reshape(*shape[:-1], cols // 4)
    scales, biases = (a.reshape(*shape[:-1], cols // GROUP_SIZE) for a in (scales, biases))
    with np.errstate(over="ignore"):  # a value beyond fp16's range just keeps float32
        narrow = all(np.array_equal(a.astype(np.float16).astype(np.float32), a) for a in (scales, biases))
    dtype = np.float16 if narrow else np.float32
    return weight, scales.astype(dtype), biases.astype(dtype)


def read_float(t: Tensor) -> mx.array:
    """A tensor as float: F32/F16 as stored, BF16 bit-exact (never through fp16), block types
    dequantized by gguf-py (float32)."""
    if t.kind == "BF16":
        return mx.array(t.data).view(mx.bfloat16)
    if t.kind in FLOAT_TYPES:
        return mx.array(t.data)
    return mx.array(gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType[t.kind]).reshape(t.shape))


def read_quantized(t: Tensor, name: str) -> dict[str, mx.array]:
    base = name[: -len(".weight")]
    if t.kind in _REPACK:
        weight, scales, biases = (mx.array(a) for a in repack(t.data, t.kind, t.shape))
    else:  # Q6_K / Q3_K / Q2_K
        weight, scales, biases = mx.quantize(read_float(t), group_size=GROUP_SIZE, bits=BITS)
    return {name: weight, f"{base}.scales": scales, f"{base}.biases": biases}


def _read_json(path: Path, why: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {why}")
    return json.loads(path.read_text(encoding="utf-8"))


# What the talker config's text ids must resolve to (qwen3-tts-architecture.md §2.1).
SPECIAL_TOKENS = {"im_start_token_id": "<|im_start|>", "im_end_token_id": "<|im_end|>", "tts_pad_token_id": "<tts_pad>",
                  "tts_bos_token_id": "<tts_text_bos>", "tts_eos_token_id": "<tts_text_eod>"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER, TOKEN_UNUSED = 1, 3, 4, 5


def tokenizer_files(f: GGUFFile, config: dict) -> dict[str, str]:
    """vocab.json, merges.txt and tokenizer_config.json from the GGUF's BPE vocabulary."""
    tokens, merges = f.meta("tokenizer.ggml.tokens"), f.meta("tokenizer.ggml.merges")
    hint = "pass tokenizer_dir (a Qwen3-TTS folder with vocab.json, merges.txt and tokenizer_config.json)"
    if tokens is None or merges is None:
        raise GGUFError(f"{f.path}: the metadata holds no BPE text tokenizer; {hint}")
    types = f.meta("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    end = len(tokens)  # drop the padding up to text_vocab_size ([PADn] / unused), not part of the vocabulary
    while end and (types[end - 1] == TOKEN_UNUSED or re.fullmatch(r"\[PAD\d+\]", tokens[end - 1])):
        end -= 1
    for key, text in SPECIAL_TOKENS.items():
        i = config[key]
        if not (i < end and tokens[i] == text and types[i] in (TOKEN_CONTROL, TOKEN_USER)):
            raise GGUFError(f"{f.path}: the GGUF tokenizer lacks the special token {text} at id {i}; {hint}")
    vocab = {tokens[i]: i for i in range(end) if types[i] not in (TOKEN_CONTROL, TOKEN_USER)}
    added = {str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for i in range(end) if types[i] in (TOKEN_CONTROL, TOKEN_USER)}
    tok_config = {"added_tokens_decoder": added, "tokenizer_class": "Qwen2Tokenizer", "errors": "replace",
                  "add_prefix_space": False, "split_special_tokens": False, "bos_token": None,
                  "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": 131072}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "#version: 0.2\n" +
            "".join(m + "\n" for m in merges), "tokenizer_config.json": json.dumps(tok_config, indent=2,
                                                                                 ensure_ascii=False)}


# ---- conversion ----

def _check(where, module, shapes: dict, names: dict):
    """Parameters (our names -> shape) against those `module` declares: all present, all fitting."""
    from mlx.utils import tree_flatten

    expected = {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}
    problems = [f"tensor {names.get(k, k)} has shape {s}, but the model needs {expected[k]}"
                for k, s in shapes.items() if k in expected and s != expected[k]]
    problems += [f"tensor {names.get(k, k)} has no place in the model" for k in shapes if k not in expected]
    missing = sorted(set(expected) - set(shapes))
    if missing:
        problems.append(f"missing tensors for {type(module).__name__} parameters {', '.join(missing[:6])}"
                        + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    if problems:
        raise GGUFError(f"{where}: {'; '.join(problems[:4])}")


def _check_modules(talker: GGUFFile, codec: GGUFFile, planned: list, config):
    """Build every module from the rebuilt config (lazily: no weights are read) and check that the files
    fill it exactly, so that a broken pair fails before anything is written."""
    from mlx_qwen_tts.models.code_predictor import CodePredictor
    from mlx_qwen_tts.models.codec import CodecDecoder
    from mlx_qwen_tts.models.codec_encoder import CodecEncoder, MimiEncoderArgs, convert_codec_encoder_weights
    from mlx_qwen_tts.models.speaker_encoder import SpeakerEncoder, convert_speaker_encoder_weights
    from mlx_qwen_tts.models.talker import Talker

    for prefix, module in (("talker.", Talker(config)), ("code_predictor.", CodePredictor(config))):
        part = [(ours[len(prefix):], t) for t, ours in planned if ours.startswith(prefix)]
        _check(talker.path, module, {k: t.shape for k, t in part}, {k: t.name for k, t in part})

    def shapes(f, prefix, convert):
        zeros = {k: v for t, official in f.tensors if official.startswith(prefix)
                 for k, v in _with_usage(f, official, mx.zeros(t.shape)).items()}
        try:
            return {k: tuple(v.shape) for k, v in convert(zeros).items()}
        except ValueError as e:
            raise GGUFError(f"{f.path}: {e}") from None

    decoder = shapes(codec, "decoder.", map_hf_codec_weights)
    _check(codec.path, CodecDecoder(config.speech_tokenizer.decoder), {k[len("codec."):]: v for k, v in
                                                                      decoder.items()}, {})
    if config.model_type != "base":
        return
    st = config.speech_tokenizer
    _check(talker.path, SpeakerEncoder(config.speaker_encoder), shapes(talker, "speaker_encoder.", lambda w: (
        convert_speaker_encoder_weights({k[len("speaker_encoder."):]: v for k, v in w.items()}))), {})
    if st.encoder is None:
        raise GGUFError(f"{codec.path} has no codec encoder, which a Base model needs for voice cloning")
    args = MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
    _check(codec.path, CodecEncoder(args), shapes(codec, "encoder.", lambda w: convert_codec_encoder_weights(
        {k[len("encoder."):]: v for k, v in w.items()}, args)), {})


def _with_usage(f: GGUFFile, official: str, value: mx.array) -> dict:
    """Dialects A/B store each codebook divided by its usage already: usage = 1 makes the official
    embedding_sum / max(usage, 1e-5) give the stored codebook exactly."""
    out = {official: value}
    if f.dialect.fused_codebooks and official.endswith(("._codebook.embedding_sum", ".codebook.embed_sum")):
        out[official.rsplit(".", 1)[0] + ".cluster_usage"] = mx.ones((value.shape[0],), dtype=mx.float32)
    return out


def quantized_counts(planned: list) -> tuple[set, dict]:
    """The talker tensors that stay quantized (block-quantized in the GGUF, quantizable here) and what
    they cover: {tensors, candidates, weight_share} as the Hugging Face path records it."""
    chosen = {ours for t, ours in planned if t.kind not in FLOAT_TYPES and should_quantize(ours, t.shape, GROUP_SIZE)}
    sizes = {ours: math.prod(t.shape) for t, ours in planned if ours.startswith(("talker.", "code_predictor."))}
    candidates = sum(1 for t, ours in planned if quantizable(ours, t.shape))
    share = sum(sizes[k] for k in chosen) / max(sum(sizes.values()), 1)
    return chosen, {"tensors": len(chosen), "candidates": candidates, "weight_share": share}


def _write(tmp: Path, talker: GGUFFile, codec: GGUFFile, planned: list, files: dict, progress: bool,
           encoders: bool, chosen: set):
    writer = ShardWriter(tmp)
    for t, ours in progress_bar(planned, progress, "talker"):
        if ours in chosen:
            arrays = read_quantized(t, ours)
        else:
            arrays = {ours: read_float(t)}
        for k, v in arrays.items():
            writer.add(k, v)
    codebooks = {}  # the decoder's codebooks are stacked together; every other tensor streams
    for t, official in progress_bar(codec.tensors, progress, "codec"):
        arrays = _with_usage(codec, official, read_float(t))
        if official.startswith("encoder."):  # the voice-clone encoder is kept under official names
            if not encoders:
                continue
            arrays = {f"codec_encoder.{k[len('encoder.'):]}": v for k, v in arrays.items()}
        elif "._codebook." in official:
            codebooks.update(arrays)
            continue
        else:
            arrays = map_hf_codec_weights(arrays)
        for k, v in arrays.items():
            writer.add(k, v)
    for k, v in map_hf_codec_weights(codebooks).items():
        writer.add(k, v)
    writer.finish()
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text, encoding="utf-8")


def _rebuild_configs(talker: GGUFFile, codec: GGUFFile, support: Path):
    """config.json, speech_tokenizer/config.json and generation_config.json dicts, and the parsed config."""
    base = gen = st_base = None
    if talker.dialect.name == "hf-names":  # no metadata: the snapshot's own config files
        base = _read_json(support / "config.json", "a GGUF with Hugging Face tensor names needs its config.json")
        if (support / "generation_config.json").is_file():
            gen = _read_json(support / "generation_config.json", "")
    if codec.dialect.name == "hf-names":
        st_base = _read_json(support / "speech_tokenizer" / "config.json",
                             "a codec GGUF with Hugging Face tensor names needs its config")
    cfg, gen = talker_config(talker.dialect.name, talker.meta, talker.shapes, str(talker.path), talker.gguf_names,
                             base, gen)
    st_cfg = codec_config(codec.dialect.name, codec.meta, codec.shapes, str(codec.path), codec.gguf_names, st_base)
    try:
        config = parse_model_config(cfg, st_cfg, gen, where=f"{talker.path} (rebuilt config.json)")
    except ConfigError as e:
        raise GGUFError(f"the configuration rebuilt from {talker.path.name} and {codec.path.name} is "
                        f"inconsistent: {e}") from None
    return cfg, st_cfg, gen, config


def convert_gguf(talker_gguf: str | Path, codec_gguf: str | Path, out: str | Path, *,
                 tokenizer_dir: str | Path | None = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Convert a Qwen3-TTS talker GGUF plus its codec (speech tokenizer) GGUF into an MLX model folder.

    Args:
        talker_gguf: the talker file (talker, code predictor, speaker encoder for Base models).
        codec_gguf: the codec file (Qwen3-TTS-Tokenizer-12Hz).
        out: the folder to write; it appears only once complete and verified.
        tokenizer_dir: a Qwen3-TTS folder with vocab.json, merges.txt and tokenizer_config.json, for
            files whose metadata holds no usable vocabulary (CrispASR's). Files with Hugging Face tensor
            names (no metadata) read config.json and the tokenizer there, or beside the talker file.
        overwrite: replace an existing `out`.
        progress: show progress bars.

    Returns:
        The output folder.
    """
    out = Path(out)
    check_output(out, [p for p in (talker_gguf, codec_gguf, tokenizer_dir) if p is not None], overwrite=overwrite)
    talker, codec = GGUFFile(Path(talker_gguf), "talker"), GGUFFile(Path(codec_gguf), "codec")
    support = Path(tokenizer_dir) if tokenizer_dir else talker.path.parent
    cfg, st_cfg, gen, config = _rebuild_configs(talker, codec, support)
    restore_unit_dims(talker, talker_groups(config))  # ggml's writer drops size-1 axes; the model tells them
    restore_unit_dims(codec, codec_groups(config))
    planned = [(t, next(iter(map_hf_model_weights({official: None})))) for t, official in talker.tensors]
    encoders = config.model_type == "base"  # only voice cloning uses the speaker and codec encoders
    if not encoders:
        planned = [(t, ours) for t, ours in planned if not ours.startswith("speaker_encoder.")]
    _check_modules(talker, codec, planned, config)
    if tokenizer_dir or talker.dialect.name == "hf-names":
        missing = [n for n in TOKENIZER_FILES if not (support / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{support} lacks the text tokenizer file(s) {', '.join(missing)}")
        files = {n: (support / n).read_text(encoding="utf-8") for n in TOKENIZER_FILES}
    else:
        files = tokenizer_files(talker, cfg)
    files.update({"generation_config.json": json.dumps(gen, indent=2),
                  "speech_tokenizer/config.json": json.dumps(st_cfg, indent=2),
                  "preprocessor_config.json": json.dumps(PREPROCESSOR, indent=2),
                  "speech_tokenizer/preprocessor_config.json": json.dumps(ST_PREPROCESSOR, indent=2)})
    source = {"kind": "gguf", "dialect": talker.dialect.name, "codec_dialect": codec.dialect.name,
              "writer": talker.dialect.writer, "files": [talker.path.name, codec.path.name],
              "types": dict(Counter(t.kind for f in (talker, codec) for t, _ in f.tensors))}
    # The released weights run in bf16 (fp16 overflows in the code predictor); all-F32 files stay float32.
    dtype = "float32" if {t.kind for t, _ in talker.tensors} == {"F32"} else "bfloat16"

    chosen, counts = quantized_counts(planned)

    def build(tmp):
        _write(tmp, talker, codec, planned, files, progress, encoders, chosen)
        record = {"group_size": GROUP_SIZE, "bits": BITS, "mode": "affine"} if chosen else None
        write_config(tmp, cfg, dtype=dtype, quantization=record, source=source, quantized=counts)

    return publish(out, build, overwrite=overwrite)
