"""GGUF import: the tiny official fixtures written as GGUF in each dialect's naming, metadata and
quantization policy, converted, and compared with the Hugging Face path and the GGUF values."""

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlx_qwen_tts_convert import convert_model
from mlx_qwen_tts_convert.gguf_config import codec_config
from mlx_qwen_tts_convert.gguf_dialects import (CODEC_A, CODEC_B, TALKER_A, TALKER_B, GGUFError, GGUFFile, NameMap,
                                                read_gguf)
from mlx_qwen_tts_convert.gguf_import import convert_gguf, read_float, read_quantized, repack
from mlx_qwen_tts.config import load_model_config, parse_speech_tokenizer_config
from mlx_qwen_tts.loading import FORMAT_KEY, load_model, map_hf_codec_weights, map_hf_model_weights, \
    read_converted_weights
from mlx_qwen_tts.quantize import should_quantize

RNG = np.random.default_rng(0)
TEXT_IDS = ("im_start", "im_end", "tts_pad", "tts_bos", "tts_eos")
CODEC_IDS = ["codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id", "codec_nothink_id",
             "codec_think_bos_id", "codec_think_eos_id"]


# ---- writing GGUF fixtures ----

def _inverse(table):
    """Official name -> GGUF name for one dialect table (each official name must match one rule)."""
    rules = [(re.compile(re.escape(h).replace("\\#", r"(\d+)").replace("\\*", "(.+)")), g)
             for g, h in table.items() if h is not None]

    def to_gguf(name):
        hits = [(m, g) for rx, g in rules if (m := rx.fullmatch(name))]
        assert len(hits) == 1, (name, [g for _, g in hits])
        parts = iter(hits[0][0].groups())
        return re.sub(r"[#*]", lambda _: next(parts), hits[0][1])
    return to_gguf


def _hf(path):
    return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(path)).items()}


def _stored(a, qtype):
    """The float32 values a GGUF tensor of this type holds for `a`."""
    if qtype == Q.F32:
        return a
    return gguf.quants.dequantize(gguf.quants.quantize(a, qtype), qtype).reshape(a.shape)


def write_gguf(path, arch, kv, tensors):
    w = gguf.GGUFWriter(str(path), arch or "none")
    if arch is None:  # RustTTS files carry no metadata at all
        w.kv_data[0].clear()
    for key, v in kv.items():
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, v)
    for name, a, qtype in tensors:
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, a.astype(np.float32 if qtype == Q.F32 else np.float16))
        elif a.dtype == np.uint8:  # hand-built blocks
            w.add_tensor(name, a, raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _fuse(hf):
    """Dialects A/B store codebooks divided by usage (and drop usage, input_proj and the flags)."""
    out = {}
    for k, v in hf.items():
        if k.endswith(("cluster_usage", "initialized")) or re.search(r"rvq_(first|rest)\.input_proj", k):
            continue
        if k.endswith(("embedding_sum", "embed_sum")):
            usage = hf[k.rsplit(".", 1)[0] + ".cluster_usage"]
            v = (v / np.maximum(usage, np.float32(1e-5))[:, None]).astype(np.float32)
        out[k] = v
    return out


def _talker_meta_a(cfg, gen, tokenizer):
    t, cp, p = cfg["talker_config"], cfg["talker_config"]["code_predictor_config"], "qwen3-tts."
    lm = {"embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
          "block_count": "num_hidden_layers", "attention.head_count": "num_attention_heads",
          "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
          "vocab_size": "vocab_size", "context_length": "max_position_embeddings"}
    size = {"0b6": "0.6b", "1b7": "1.7b"}[cfg["tts_model_size"]]
    kv = {p + "model_type": cfg["tts_model_type"], p + "model_size": size,
          p + "num_code_groups": t["num_code_groups"], p + "talker.text_vocab_size": t["text_vocab_size"],
          p + "talker.text_hidden_size": t["text_hidden_size"], p + "talker.rope.mrope_section": [8, 4, 4],
          p + "talker.mrope_interleaved": True, p + "talker.position_id_per_seconds": 13}
    for sect, c in (("talker.", t), ("code_pred.", cp)):
        kv.update({p + sect + g: c[h] for g, h in lm.items()})
        kv[p + sect + "rope.freq_base"] = float(c["rope_theta"])
        kv[p + sect + "attention.layer_norm_rms_epsilon"] = float(c["rms_norm_eps"])
    kv.update({f"{p}codec.{k[6:].replace('_token', '')}": t[k] for k in CODEC_IDS})
    kv.update({f"{p}text.{k}_id": cfg[f"{k}_token_id"] for k in TEXT_IDS})
    kv[p + "codec.language_names"], kv[p + "codec.language_ids"] = map(list, zip(*t["codec_language_id"].items()))
    if t["spk_id"]:
        names = list(t["spk_id"])
        kv.update({p + "codec.speaker_names": names, p + "codec.speaker_ids": [t["spk_id"][n] for n in names],
                   p + "codec.speaker_dialects": [t["spk_is_dialect"][n] or "" for n in names]})
    if cfg["tts_model_type"] == "base":
        kv[p + "spk_enc.embedding_length"] = cfg["speaker_encoder_config"]["enc_dim"]
    kv.update({f"generation.{k.replace('dosample', 'do_sample')}": v for k, v in gen.items()})
    return {**kv, **tokenizer}


def _codec_meta_a(st):
    p, d, e = "qwen3-tts-tokenizer.", st["decoder_config"], st["encoder_config"]
    kv = {p + k: st[k] for k in ("input_sample_rate", "output_sample_rate", "decode_upsample_rate",
                                 "encode_downsample_rate", "encoder_valid_num_quantizers")}
    kv.update({f"{p}decoder.{k}": v for k, v in d.items() if isinstance(v, (int, list)) and not isinstance(v, bool)})
    kv.update({f"{p}encoder.{k}": v for k, v in e.items() if isinstance(v, (int, list)) and not isinstance(v, bool)})
    kv[p + "decoder.rms_norm_eps"] = float(d["rms_norm_eps"])
    return kv


def _talker_meta_b(cfg):
    t, cp, p = cfg["talker_config"], cfg["talker_config"]["code_predictor_config"], "qwen3tts."
    lm = {"n_layers": "num_hidden_layers", "d_model": "hidden_size", "n_heads": "num_attention_heads",
          "n_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size"}
    kv = {f"{p}talker.{g}": t[h] for g, h in {**lm, "head_dim": "head_dim", "ff_dim": "intermediate_size",
                                              "text_vocab_size": "text_vocab_size", "n_code_groups": "num_code_groups",
                                              "text_hidden_size": "text_hidden_size"}.items()}
    kv.update({f"{p}code_pred.{g}": cp[h] for g, h in lm.items()})
    kv.update({p + "talker.rope_theta": 1e6, p + "talker.rms_norm_eps": 1e-6, p + "talker.mrope_section": [8, 4, 4],
               p + "talker.rope_interleaved": True, p + "tts_model_type": cfg["tts_model_type"]})
    kv.update({f"{p}talker.{k}": t[k] for k in CODEC_IDS})
    kv.update({f"{p}{k}_token_id": cfg[f"{k}_token_id"] for k in TEXT_IDS})
    langs = sorted(t["codec_language_id"])
    names = sorted(t["spk_id"])  # CrispASR sorts speakers by name; dialects are language token ids
    kv.update({p + "codec_language_names": langs, p + "codec_language_ids": [t["codec_language_id"][n] for n in langs],
               p + "spk_names": names, p + "spk_token_ids": [t["spk_id"][n] for n in names],
               p + "spk_dialect_token_ids": [t["codec_language_id"].get(t["spk_is_dialect"][n], 0) for n in names]})
    return kv


def _codec_meta_b(st):
    p, d, e = "qwen3tts_codec.", st["decoder_config"], st["encoder_config"]
    return {p + "decode_upsample": 1920, p + "encode_downsample": 1920, p + "dec.n_layers": d["num_hidden_layers"],
            p + "dec.d_model": d["hidden_size"], p + "dec.n_heads": d["num_attention_heads"],
            p + "dec.head_dim": d["head_dim"], p + "dec.ff_dim": d["intermediate_size"],
            p + "dec.n_quantizers": 16, p + "dec.rms_norm_eps": 1e-5, p + "dec.sliding_window": 72,
            p + "dec.upsample_rates": d["upsample_rates"], p + "enc.n_heads": e["num_attention_heads"],
            p + "enc.n_layers": e["num_hidden_layers"]}


def _tokenizer_meta(folder):
    vocab = json.loads((folder / "vocab.json").read_text())
    added = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    tokens = [f"[PAD{i}]" for i in range(151936)]  # padded to text_vocab_size, as qwen3-tts.cpp does
    types = [5] * 151936
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, 1
    for i, spec in added.items():
        tokens[int(i)], types[int(i)] = spec["content"], 3
    merges = [m for m in (folder / "merges.txt").read_text().splitlines() if m and not m.startswith("#")]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges}


def qwentts(quant):
    """qwentts.cpp's quantize policy: 1-D and codebooks stay F32, rows not a multiple of the block F16
    (a BF16 file keeps BF16 there: its block is 1)."""
    def policy(name, a):
        if a.ndim == 1 or quant == Q.F32 or "quantizer." in name:
            return Q.F32
        return quant if quant == Q.BF16 or (a.ndim == 2 and a.shape[-1] % 32 == 0) else Q.F16
    return policy


def crispasr_f16(name, a):
    return Q.F16 if a.ndim > 1 else Q.F32


def rusttts_q4_0(name, a):  # RustTTS: Q4_0 for 2-D weights except norms, the MTP projection, codec embedding
    plain = a.ndim == 2 and name.endswith(".weight") and not re.search(r"norm|small_to_mtp|\.codec_embedding", name)
    return Q.Q4_0 if plain else Q.F32


ARCH = {("qwen3-tts", "talker"): "qwen3-tts", ("qwen3-tts", "codec"): "qwen3-tts-tokenizer",
        ("crispasr", "talker"): "qwen3tts", ("crispasr", "codec"): "qwen3tts_tokenizer"}
TABLES = {("qwen3-tts", "talker"): TALKER_A, ("qwen3-tts", "codec"): CODEC_A,
          ("crispasr", "talker"): TALKER_B, ("crispasr", "codec"): CODEC_B}


def _metadata(dialect, role, folder):
    cfg, st, gen = (json.loads((folder / n).read_text())
                    for n in ("config.json", "speech_tokenizer/config.json", "generation_config.json"))
    if dialect == "qwen3-tts":
        return _talker_meta_a(cfg, gen, _tokenizer_meta(folder)) if role == "talker" else _codec_meta_a(st)
    if dialect == "crispasr":
        return _talker_meta_b(cfg) if role == "talker" else _codec_meta_b(st)
    return {}


@dataclass
class Pair:
    talker: Path
    codec: Path
    values: dict  # official name -> the float32 values the files hold
    parts: dict  # role -> (metadata, [(GGUF name, array, type)])


def ggml_shape(a):
    """`a` as ggml's writer stores it: n_dims = ggml_n_dims(t) drops trailing size-1 ne dimensions, the
    leading size-1 axes of the array (gguf-py's writer keeps them)."""
    keep = next((i for i, d in enumerate(a.shape) if d != 1), a.ndim - 1)
    return a.reshape(a.shape[keep:])


def build(tmp, folder, talker=("qwen3-tts", qwentts(Q.F32)), codec=("qwen3-tts", qwentts(Q.F32)), tag="pair",
          ggml_dims=False):
    """A talker + codec GGUF pair of a fixture folder, each in (dialect, type policy); `ggml_dims` writes
    the shapes as ggml's own writer does."""
    pair = Pair(None, None, {}, {})
    for role, (dialect, policy), file in (("talker", talker, "model.safetensors"),
                                          ("codec", codec, "speech_tokenizer/model.safetensors")):
        weights = _hf(folder / file)
        if role == "codec" and dialect != "hf-names":
            weights = _fuse(weights)
        if role == "codec" and dialect == "qwen3-tts":  # qwentts.cpp keeps the 15 acoustic codebooks in use
            weights = {k: v for k, v in weights.items()
                       if not re.search(r"acoustic_residual_vector_quantizer\.layers\.(1[5-9]|[23]\d)\.", k)}
        to_gguf = _inverse(TABLES[dialect, role]) if dialect != "hf-names" else (lambda n: n)
        tensors = [(to_gguf(k), ggml_shape(a) if ggml_dims else a, policy(k, a)) for k, a in weights.items()]
        pair.values.update({k: _stored(a, q) for (k, a), (_, _, q) in zip(weights.items(), tensors)})
        kv = _metadata(dialect, role, folder)
        setattr(pair, role, write_gguf(tmp / f"{tag}-{role}.gguf", ARCH.get((dialect, role)), kv, tensors))
        pair.parts[role] = (kv, tensors)
    return pair


# ---- tests ----

def _no_leftovers(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def _weights(folder):
    """A converted folder's weights as float32 numpy; quantized ones dequantized in float32."""
    raw = read_converted_weights(folder)
    out = {}
    for k, v in raw.items():
        if k.endswith((".scales", ".biases")):
            continue
        base = k[: -len(".weight")]
        if f"{base}.scales" in raw:
            v = mx.dequantize(v, raw[f"{base}.scales"].astype(mx.float32), raw[f"{base}.biases"].astype(mx.float32),
                              group_size=32, bits=8)
        out[k] = np.array(v.astype(mx.float32))
    return out


def _expected(values):
    """The GGUF's float32 values (official names) under our names, as the HF path maps them."""
    talker = {k: v for k, v in values.items() if not k.startswith(("decoder.", "encoder."))}
    codec = {k: v for k, v in values.items() if k.startswith(("decoder.", "encoder."))}
    for k in [k for k in codec if k.endswith(("embedding_sum", "embed_sum"))]:
        codec.setdefault(k.rsplit(".", 1)[0] + ".cluster_usage", np.ones(codec[k].shape[0], np.float32))
    mapped = {**map_hf_model_weights(talker), **map_hf_codec_weights(codec)}
    return {k: np.array(mx.array(v).astype(mx.float32)) for k, v in mapped.items()}


def _assert_holds(out, values):
    got, want = _weights(out), _expected(values)
    if load_model_config(out).model_type != "base":  # only voice cloning uses the encoders: not converted
        want = {k: v for k, v in want.items() if not k.startswith(("speaker_encoder.", "codec_encoder."))}
    assert sorted(got) == sorted(want)
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def qwentts_f32(work, model_dir):
    return build(work, model_dir("customvoice_0b6"), tag="a-f32")


def test_qwentts_f32_equals_the_hugging_face_path(qwentts_f32, model_dir, work):
    out = convert_gguf(qwentts_f32.talker, qwentts_f32.codec, work / "a-f32")
    ref = convert_model(model_dir("customvoice_0b6"), work / "hf-f32", bits=None, dtype="float32")
    _assert_holds(out, qwentts_f32.values)
    got, want = _weights(out), _weights(ref)
    for k, v in got.items():  # the encoder keeps its codebooks fused (usage 1) and only the 15 it uses
        if k.endswith("embed_sum"):
            usage = want[k.rsplit(".", 1)[0] + ".cluster_usage"]
            np.testing.assert_array_equal(v, want[k] / np.maximum(usage, np.float32(1e-5))[:, None], err_msg=k)
        elif not k.endswith("cluster_usage"):
            np.testing.assert_array_equal(v, want[k], err_msg=k)
    assert {k for k in want if not k.startswith("codec_encoder.")} == \
        {k for k in got if not k.startswith("codec_encoder.")}
    a, b = load_model_config(out).to_dict(), load_model_config(ref).to_dict()
    for cfg in (a, b):
        cfg["speech_tokenizer"]["encoder"].pop("raw")
    assert a == b
    meta = json.loads((out / "config.json").read_text())[FORMAT_KEY]
    assert meta["dtype"] == "float32" and meta["quantization"] is None
    assert meta["source"]["kind"] == "gguf" and meta["source"]["dialect"] == "qwen3-tts"
    assert meta["source"]["writer"] == "qwentts.cpp" and set(meta["source"]["types"]) == {"F32"}
    model_a, model_b = load_model(out), load_model(ref)
    text = "<|im_start|>assistant\nHello world, this is a test.<|im_end|>"
    assert model_a.tokenizer.encode(text) == model_b.tokenizer.encode(text)


def _greedy_frames(model, frames=3):
    from mlx_qwen_tts.engine.generate import GenerationSettings, GenerationStats, generate_frames
    from mlx_qwen_tts.engine.prompt import build_prompt

    prompt = build_prompt(model, "Hello world.", voice="ryan", language="english")
    settings = GenerationSettings.from_config(model.config.generation, greedy=True, max_frames=frames,
                                              ignore_eos=True)
    return np.array(mx.stack(list(generate_frames(model, prompt, settings, GenerationStats()))))


def test_qwentts_q8_0_repacks_exactly_into_8bit_groups_of_32(work, model_dir):
    pair = build(work, model_dir("customvoice_1b7"), talker=("qwen3-tts", qwentts(Q.Q8_0)),
                 codec=("qwen3-tts", qwentts(Q.Q8_0)), tag="a-q8")
    out = convert_gguf(pair.talker, pair.codec, work / "a-q8")
    _assert_holds(out, pair.values)  # quantized and dequantized-to-float tensors hold exactly the Q8_0 values
    raw = read_converted_weights(out)
    shapes = map_hf_model_weights({k: v.shape for k, v in pair.values.items()
                                   if not k.startswith(("decoder.", "encoder."))})
    assert {k[: -len(".scales")] + ".weight" for k in raw if k.endswith(".scales")} == \
        {k for k, shape in shapes.items() if should_quantize(k, shape, 32)}
    assert raw["code_predictor.small_to_mtp_projection.scales"].dtype == mx.float16  # Q8_0's d, exactly
    assert raw["talker.codec_embedding.weight"].dtype == mx.float32  # a float destination: dequantized
    meta = json.loads((out / "config.json").read_text())[FORMAT_KEY]
    assert meta["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"} and meta["dtype"] == "bfloat16"
    counted = meta["quantized"]  # what `convert` reports
    assert counted["tensors"] == sum(k.endswith(".scales") for k in raw) <= counted["candidates"]
    assert 0.5 < counted["weight_share"] <= 1
    written = Counter(q.name for role in ("talker", "codec") for _, _, q in pair.parts[role][1])
    assert meta["source"]["types"] == written
    codes = _greedy_frames(load_model(out, dtype=mx.float32))
    assert codes.shape == (3, 16) and (codes >= 0).all() and (codes < 2048).all()


def test_crispasr_f16_needs_the_tokenizer_folder(work, model_dir):
    folder = model_dir("customvoice_1b7")
    pair = build(work, folder, talker=("crispasr", crispasr_f16), codec=("crispasr", crispasr_f16), tag="b-f16")
    with pytest.raises(GGUFError, match="tokenizer_dir"):
        convert_gguf(pair.talker, pair.codec, work / "b-f16")
    _no_leftovers(work / "b-f16")
    out = convert_gguf(pair.talker, pair.codec, work / "b-f16", tokenizer_dir=folder)
    _assert_holds(out, pair.values)
    a, b = load_model_config(out).to_dict(), load_model_config(folder).to_dict()
    assert a["speech_tokenizer"]["encoder"]["raw"]["num_attention_heads"] == 4
    for cfg in (a, b):
        cfg["speech_tokenizer"]["encoder"].pop("raw")
    assert a == b  # speakers, dialects (stored as language ids), languages, sizes, codec rates
    assert json.loads((out / "config.json").read_text())[FORMAT_KEY]["source"]["dialect"] == "crispasr"


def test_hf_named_q4_0_talker_reads_its_config_alongside(work, model_dir):
    from mlx_qwen_tts.models.codec_encoder import MimiEncoderArgs, load_codec_encoder
    from mlx_qwen_tts.models.speaker_encoder import load_speaker_encoder

    folder, side = model_dir("base_0b6"), work / "rusttts"
    side.mkdir()
    for name in ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(folder / name, side / name)
    pair = build(side, folder, talker=("hf-names", rusttts_q4_0), codec=("qwen3-tts", qwentts(Q.BF16)), tag="c-q4")
    out = convert_gguf(pair.talker, pair.codec, work / "c-q4")
    _assert_holds(out, pair.values)  # Q4_0 widened exactly, BF16 codec read bit-exactly
    model = load_model(out, dtype=mx.float32)
    meta = json.loads((out / "config.json").read_text())[FORMAT_KEY]
    assert meta["source"]["dialect"] == "hf-names" and {"Q4_0", "BF16", "F32"} <= set(meta["source"]["types"])
    a, b = load_model_config(out).speech_tokenizer, load_model_config(folder).speech_tokenizer
    assert (a.decoder, a.sample_rate, a.decode_upsample_rate, a.encode_downsample_rate) == \
        (b.decoder, b.sample_rate, b.decode_upsample_rate, b.encode_downsample_rate)
    assert MimiEncoderArgs.from_config(a.encoder.raw, 16) == MimiEncoderArgs.from_config(b.encoder.raw, 16)

    def part(prefix):
        return {k[len(prefix):]: v for k, v in model.extra_weights.items() if k.startswith(prefix)}

    load_speaker_encoder(part("speaker_encoder."), model.config.speaker_encoder)  # voice cloning works
    st = model.config.speech_tokenizer
    load_codec_encoder(part("codec_encoder."), MimiEncoderArgs.from_config(st.encoder.raw,
                                                                            st.encoder_valid_num_quantizers))


# ---- repacks, reading, names, detection ----

def _k_blocks(qtype, rows, cols):
    """Random K-quant blocks with sane fp16 d / dmin (gguf-py cannot quantize K-types)."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = RNG.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    at = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (size - 2,), Q.Q3_K: (size - 2,), Q.Q2_K: (size - 4, size - 2)}
    for off in at[qtype]:
        b[..., off:off + 2] = RNG.uniform(1e-3, 2e-2, (rows, cols // 256, 1)).astype(np.float16).view(np.uint8)
    return b.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K])
def test_block_types_repack_to_exactly_the_gguf_values(qtype):
    shape = (6, 512)
    if qtype in (Q.Q4_K, Q.Q5_K):
        data = _k_blocks(qtype, *shape)
    else:
        data = gguf.quants.quantize((RNG.standard_normal(shape) * 0.05).astype(np.float32), qtype)
    weight, scales, biases = repack(data, qtype.name, shape)
    assert weight.dtype == np.uint32 and weight.shape == (6, 128) and scales.shape == (6, 16)
    assert scales.dtype == (np.float32 if qtype in (Q.Q4_K, Q.Q5_K) else np.float16)
    got = mx.dequantize(mx.array(weight), mx.array(scales.astype(np.float32)), mx.array(biases.astype(np.float32)),
                        group_size=32, bits=8)
    np.testing.assert_array_equal(np.array(got), gguf.quants.dequantize(data, qtype))


@pytest.mark.parametrize("qtype", [Q.Q6_K, Q.Q3_K, Q.Q2_K])
def test_16_wide_sub_block_types_are_requantized_within_one_8bit_step(tmp_path, qtype):
    data = _k_blocks(qtype, 4, 256)
    path = write_gguf(tmp_path / "k.gguf", "x", {}, [("w", data, qtype)])
    (t,) = read_gguf(path)[1]
    q = read_quantized(t, "w.weight")
    got = mx.dequantize(q["w.weight"], q["w.scales"], q["w.biases"], group_size=32, bits=8)
    want = gguf.quants.dequantize(data, qtype)
    step = np.abs(np.array(q["w.scales"])).repeat(32, axis=1)
    assert (np.abs(np.array(got) - want) <= 1.001 * step).all()


def test_bf16_is_read_bit_exactly_and_float_views_keep_their_shape(tmp_path):
    a = np.array([[1e5, -3e-8, 1.0 + 2 ** -7, 7.0] * 8] * 2, np.float32)  # beyond fp16's range and precision
    path = write_gguf(tmp_path / "b.gguf", "x", {"x.n": [1, 2], "x.s": ["a", "b"], "x.f": 0.5, "x.b": True},
                      [("b", a, Q.BF16), ("h", np.ones((2, 32), np.float32), Q.F16)])
    meta, (b, h) = read_gguf(path)
    bits = gguf.quants.quantize(a, Q.BF16).view(np.uint16)
    np.testing.assert_array_equal(np.array(read_float(b).view(mx.uint16)), bits)
    assert read_float(b).dtype == mx.bfloat16 and b.shape == (2, 32) and read_float(h).dtype == mx.float16
    assert meta["x.n"] == [1, 2] and meta["x.s"] == ["a", "b"] and meta["x.f"] == 0.5 and meta["x.b"] is True


def test_name_tables_follow_the_documented_mapping():
    a, b, codec_a, codec_b = NameMap(TALKER_A), NameMap(TALKER_B), NameMap(CODEC_A), NameMap(CODEC_B)
    assert a("talker.blk.0.attn_q.weight") == "talker.model.layers.0.self_attn.q_proj.weight"
    assert a("code_pred.codec_embd.14.weight") == "talker.code_predictor.model.codec_embedding.14.weight"
    assert a("code_pred.mtp_proj.bias") == "talker.code_predictor.small_to_mtp_projection.bias"
    assert a("spk_enc.blk.2.res2net.6.weight") == "speaker_encoder.blocks.2.res2net_block.blocks.6.conv.weight"
    assert b("talker.token_embd_text.weight") == "talker.model.text_embedding.weight"
    assert b("code_pred.output.3.weight") == "talker.code_predictor.lm_head.3.weight"
    assert b("speaker.blocks.1.se_block.conv2.bias") == "speaker_encoder.blocks.1.se_block.conv2.bias"
    assert codec_a("tok_dec.dec.3.res.2.conv1.weight") == "decoder.decoder.3.block.4.conv1.conv.weight"
    assert codec_a("tok_dec.pre_tfm.blk.7.attn_scale") == "decoder.pre_transformer.layers.7.self_attn_layer_scale.scale"
    assert codec_a("tok_enc.blk.0.ffn_up.weight") == "encoder.encoder_transformer.layers.0.mlp.fc1.weight"
    assert codec_a("tok_enc.vq_acoustic.3.initialized") is None
    assert codec_b("codec.dec.blk.0.res.1.act2_b") == "decoder.decoder.1.block.3.act2.beta"
    assert codec_b("codec.enc.seanet.ds.3.w") == "encoder.encoder.layers.12.conv.weight"
    assert codec_b("codec.dec.rvq_rest.14.codebook") == \
        "decoder.quantizer.rvq_rest.vq.layers.14._codebook.embedding_sum"
    with pytest.raises(KeyError):
        a("talker.blk.0.attn_qkv.weight")


def test_dialects_are_told_apart(qwentts_f32, work, tmp_path):
    talker, codec = qwentts_f32.talker, qwentts_f32.codec
    assert GGUFFile(talker, "talker").dialect.name == "qwen3-tts"
    assert GGUFFile(codec, "codec").dialect.writer == "qwentts.cpp"
    ones = np.ones((4, 32), np.float32)
    spoof = write_gguf(tmp_path / "spoof.gguf", "qwen3vl", {}, [("token_embd.weight", ones, Q.F32),
                                                               ("blk.0.attn_q.weight", ones, Q.F32)])
    with pytest.raises(GGUFError, match="llama.cpp"):
        GGUFFile(spoof, "talker")
    with pytest.raises(GGUFError, match="codec file .* given as the talker"):
        GGUFFile(codec, "talker")
    other = write_gguf(tmp_path / "other.gguf", "whisper", {}, [("encoder.conv1.weight", ones, Q.F32)])
    with pytest.raises(GGUFError, match="not a Qwen3-TTS talker GGUF in a known dialect.*encoder.conv1.weight"):
        GGUFFile(other, "talker")


def test_thin_codec_metadata_is_completed_from_shapes_and_defaults(qwentts_f32, model_dir, tmp_path):
    """qwen3-tts.cpp codec files carry a few keys only; sizes come from the shapes, the rest from defaults."""
    from mlx_qwen_tts.models.codec_encoder import MimiEncoderArgs

    p = "qwen3-tts-tokenizer."
    thin = {p + "num_codebooks": 16, p + "codebook_size": 2048, p + "sample_rate": 24000,
            p + "decoder.num_heads": 4, p + "decoder.num_layers": 2, p + "encoder.num_heads": 4,
            p + "encoder.valid_quantizers": 16}
    codec = write_gguf(tmp_path / "cpp-codec.gguf", "qwen3-tts-tokenizer", thin, qwentts_f32.parts["codec"][1])
    f = GGUFFile(codec, "codec")
    assert f.dialect.writer == "qwen3-tts.cpp"
    got = codec_config(f.dialect.name, f.meta, f.shapes, str(codec), f.gguf_names)
    want = json.loads((model_dir("customvoice_0b6") / "speech_tokenizer" / "config.json").read_text())
    a, b = parse_speech_tokenizer_config(got, "rebuilt"), parse_speech_tokenizer_config(want, "reference")
    assert a.decoder == b.decoder and a.decode_upsample_rate == b.decode_upsample_rate
    assert MimiEncoderArgs.from_config(a.encoder.raw, 16) == MimiEncoderArgs.from_config(b.encoder.raw, 16)


def _rewrite(path, kv, tensors, drop=(), replace=None):
    kv = {k: v for k, v in kv.items() if not k.startswith("tokenizer.")}
    tensors = [(n, (replace or {}).get(n, a), q) for n, a, q in tensors if n not in drop]
    return write_gguf(path, "qwen3-tts", kv, tensors)


@pytest.mark.parametrize("case, match", [
    ("missing", "missing tensors for Talker parameters layers.1.self_attn.v_proj.weight"),
    ("shape", "talker.blk.0.ffn_up.weight has shape \\(64, 128\\)"),
    ("metadata", "talker_config.hidden_size = 48, but tensor talker.output_norm.weight \\(64,\\) implies 64"),
    ("truncated", "truncated"),
    ("unsupported", "IQ4_NL"),
    ("codec", "codec.gguf: missing tensors for CodecDecoder parameters pre_transformer.layers.1.self_attn.q_proj"),
])
def test_broken_files_fail_clearly_without_leftovers(qwentts_f32, work, case, match):
    talker, codec = qwentts_f32.talker, qwentts_f32.codec
    (kv, tensors), (kv_c, tensors_c) = qwentts_f32.parts["talker"], qwentts_f32.parts["codec"]
    broken = work / f"broken-{case}.gguf"
    if case == "missing":
        talker = _rewrite(broken, kv, tensors, drop={"talker.blk.1.attn_v.weight"})
    elif case == "shape":
        up = next(a for n, a, _ in tensors if n == "talker.blk.0.ffn_up.weight")
        talker = _rewrite(broken, kv, tensors, replace={"talker.blk.0.ffn_up.weight": np.ascontiguousarray(up.T)})
    elif case == "metadata":
        talker = _rewrite(broken, {**kv, "qwen3-tts.talker.embedding_length": 48}, tensors)
    elif case == "truncated":
        broken.write_bytes(talker.read_bytes()[: talker.stat().st_size // 2])
        talker = broken
    elif case == "unsupported":
        extra = ("talker.blk.0.attn_v.weight", np.zeros((64, 36), np.uint8), Q.IQ4_NL)  # 64 x 64 weights
        talker = _rewrite(broken, kv, [extra if n == extra[0] else (n, a, q) for n, a, q in tensors])
    else:
        codec = write_gguf(broken, "qwen3-tts-tokenizer", kv_c,
                           [t for t in tensors_c if t[0] != "tok_dec.pre_tfm.blk.1.attn_q.weight"])
    out = work / f"out-{case}"
    with pytest.raises(GGUFError, match=match):
        convert_gguf(talker, codec, out)
    _no_leftovers(out)


def test_names_from_the_file_keep_the_error_on_one_line():
    # Found by the long fuzz run: a tensor name holding a newline split the message in two.
    message = str(GGUFError("codec.gguf: unknown tensor decoder.decoder\n2.block.3\tconv.bias\x00 for the "
                            "hf-names dialect"))
    assert message == "codec.gguf: unknown tensor decoder.decoder\\n2.block.3\\tconv.bias\\x00 for the hf-names dialect"
    assert str(GGUFError("ünïcode path/é.gguf: fine")) == "ünïcode path/é.gguf: fine"


def test_an_array_count_beyond_the_file_is_a_clean_error(tmp_path):
    # Found by the long fuzz run: a count near 2^64 overflowed numpy (OverflowError) instead of
    # being read as a corrupt file.
    import struct

    path = tmp_path / "talker.gguf"
    write_gguf(path, "qwen3-tts", {"odd.array": [1, 2, 3]}, [])
    data = bytearray(path.read_bytes())
    key = data.index(b"odd.array") + len(b"odd.array")  # then: type ARRAY, element type, count
    assert struct.unpack_from("<I", data, key)[0] == 9
    struct.pack_into("<Q", data, key + 8, 2 ** 63 + 5)
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=f"{path} is not a readable GGUF file"):
        GGUFFile(path, "talker")
