"""Qwen3-TTS GGUF files: a lean reader, dialect detection and tensor-name tables (GGUF -> Hugging Face).

Other projects publish Qwen3-TTS as two GGUF files (talker, codec) in incompatible namings
(shared/docs/gguf-dialects.md): "qwen3-tts" (qwentts.cpp, qwen3-tts.cpp, koboldcpp), "crispasr"
(CrispASR) and "hf-names" (RustTTS: Hugging Face names, no metadata). llama.cpp spoofs
(`qwen3vl`) hold only part of the model and are refused. Tables map GGUF names to the official
names; "#" stands for an index and "*" for the rest of a name, copied over in order.

The reader parses the header, metadata and tensor table itself and memory-maps tensor data:
gguf-py's GGUFReader takes ~10 s per file to index the 150k-entry vocabulary arrays.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


class GGUFError(ValueError):
    """A GGUF file cannot be converted; the message names the file and the tensor or key."""

    def __init__(self, message: str):
        # Names come from the file: a control character in one must not break the one-line message.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def _wb(gguf: str, hf: str, w="weight", b="bias") -> dict:
    return {f"{gguf}{w}": f"{hf}weight", f"{gguf}{b}": f"{hf}bias"}


def _roles(gguf_prefix: str, hf_prefix: str, roles: dict) -> dict:
    return {gguf_prefix + g: hf_prefix + h for g, h in roles.items()}


# A Qwen3 decoder layer (talker and code predictor, dialects A and B).
QWEN3_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# The official speaker-encoder modules (Conv1d weight + bias each).
SPEAKER_MODULES = ["blocks.0.conv", "blocks.#.tdnn1.conv", "blocks.#.tdnn2.conv",
                   "blocks.#.res2net_block.blocks.#.conv", "blocks.#.se_block.conv1", "blocks.#.se_block.conv2",
                   "mfa.conv", "asp.tdnn.conv", "asp.conv", "fc"]
SPEAKER_A = {"conv0": "blocks.0.conv", "blk.#.tdnn1": "blocks.#.tdnn1.conv", "blk.#.tdnn2": "blocks.#.tdnn2.conv",
             "blk.#.res2net.#": "blocks.#.res2net_block.blocks.#.conv", "blk.#.se.conv1": "blocks.#.se_block.conv1",
             "blk.#.se.conv2": "blocks.#.se_block.conv2", "mfa": "mfa.conv", "asp.tdnn": "asp.tdnn.conv",
             "asp.conv": "asp.conv", "fc": "fc"}

TALKER_A = {
    "talker.codec_embd.weight": "talker.model.codec_embedding.weight",
    "talker.text_embd.weight": "talker.model.text_embedding.weight",
    "talker.output_norm.weight": "talker.model.norm.weight",
    "talker.codec_head.weight": "talker.codec_head.weight",
    **_wb("talker.text_proj.fc#.", "talker.text_projection.linear_fc#."),
    **_roles("talker.blk.#.", "talker.model.layers.#.", QWEN3_LAYER),
    **_roles("code_pred.blk.#.", "talker.code_predictor.model.layers.#.", QWEN3_LAYER),
    "code_pred.output_norm.weight": "talker.code_predictor.model.norm.weight",
    "code_pred.codec_embd.#.weight": "talker.code_predictor.model.codec_embedding.#.weight",
    "code_pred.lm_head.#.weight": "talker.code_predictor.lm_head.#.weight",
    **_wb("code_pred.mtp_proj.", "talker.code_predictor.small_to_mtp_projection."),
    **{k: v for g, h in SPEAKER_A.items() for k, v in _wb(f"spk_enc.{g}.", f"speaker_encoder.{h}.").items()},
}
TALKER_B = {
    "talker.token_embd.weight": "talker.model.codec_embedding.weight",
    "talker.token_embd_text.weight": "talker.model.text_embedding.weight",
    "talker.output_norm.weight": "talker.model.norm.weight",
    "talker.output.weight": "talker.codec_head.weight",
    **_wb("talker.text_proj.fc#.", "talker.text_projection.linear_fc#."),
    **_roles("talker.blk.#.", "talker.model.layers.#.", QWEN3_LAYER),
    **_roles("code_pred.blk.#.", "talker.code_predictor.model.layers.#.", QWEN3_LAYER),
    "code_pred.output_norm.weight": "talker.code_predictor.model.norm.weight",
    "code_pred.token_embd.#.weight": "talker.code_predictor.model.codec_embedding.#.weight",
    "code_pred.output.#.weight": "talker.code_predictor.lm_head.#.weight",
    **_wb("code_pred.small_to_mtp.", "talker.code_predictor.small_to_mtp_projection."),
    **{k: v for m in SPEAKER_MODULES for k, v in _wb(f"speaker.{m}.", f"speaker_encoder.{m}.").items()},
}

# Codec transformer layers: the decoder's (SwiGLU, RMSNorm) and the encoder's (GELU MLP, LayerNorm).
CODEC_DEC_LAYER = {**{k: v for k, v in QWEN3_LAYER.items() if "q_norm" not in k and "k_norm" not in k},
                   "attn_scale": "self_attn_layer_scale.scale", "ffn_scale": "mlp_layer_scale.scale"}
CODEC_ENC_LAYER = {**_wb("attn_norm.", "input_layernorm."), **_wb("ffn_norm.", "post_attention_layernorm."),
                   "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
                   "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
                   "ffn_up.weight": "mlp.fc1.weight", "ffn_down.weight": "mlp.fc2.weight",
                   "attn_scale": "self_attn_layer_scale.scale", "ffn_scale": "mlp_layer_scale.scale"}
DEC_RVQ = "decoder.quantizer.rvq_"
ENC_RVQ = "encoder.quantizer."
RESIDUAL_UNIT = {"act1.alpha": "act1.alpha", "act1.beta": "act1.beta", "act2.alpha": "act2.alpha",
                 "act2.beta": "act2.beta", **_wb("conv1.", "conv1.conv."), **_wb("conv2.", "conv2.conv.")}

CODEC_A = {
    **_wb("tok_dec.pre_conv.", "decoder.pre_conv.conv."),
    **_wb("tok_dec.pre_tfm.input_proj.", "decoder.pre_transformer.input_proj."),
    **_wb("tok_dec.pre_tfm.output_proj.", "decoder.pre_transformer.output_proj."),
    "tok_dec.pre_tfm.norm.weight": "decoder.pre_transformer.norm.weight",
    **_roles("tok_dec.pre_tfm.blk.#.", "decoder.pre_transformer.layers.#.", CODEC_DEC_LAYER),
    **_wb("tok_dec.upsample.#.conv.", "decoder.upsample.#.0.conv."),
    **_wb("tok_dec.upsample.#.dwconv.", "decoder.upsample.#.1.dwconv.conv."),
    **{k: v for m in ("norm", "pwconv1", "pwconv2") for k, v in
       _wb(f"tok_dec.upsample.#.{m}.", f"decoder.upsample.#.1.{m}.").items()},
    "tok_dec.upsample.#.gamma": "decoder.upsample.#.1.gamma",
    **_wb("tok_dec.dec.0.conv.", "decoder.decoder.0.conv."), **_wb("tok_dec.dec.6.conv.", "decoder.decoder.6.conv."),
    "tok_dec.dec.5.snake.alpha": "decoder.decoder.5.alpha", "tok_dec.dec.5.snake.beta": "decoder.decoder.5.beta",
    "tok_dec.dec.#.snake.alpha": "decoder.decoder.#.block.0.alpha",
    "tok_dec.dec.#.snake.beta": "decoder.decoder.#.block.0.beta",
    **_wb("tok_dec.dec.#.conv_t.", "decoder.decoder.#.block.1.conv."),
    **{f"tok_dec.dec.#.res.{u}.{g}": f"decoder.decoder.#.block.{u + 2}.{h}"
       for u in range(3) for g, h in RESIDUAL_UNIT.items()},
    **{f"tok_dec.vq_{q}.{p}.weight": f"{DEC_RVQ}{q}.{p}.weight" for q in ("first", "rest")
       for p in ("input_proj", "output_proj")},
    **{f"tok_dec.vq_{q}.#.codebook": f"{DEC_RVQ}{q}.vq.layers.#._codebook.embedding_sum" for q in ("first", "rest")},
    **_wb("tok_enc.conv.#.", "encoder.encoder.layers.#.conv."),
    **_wb("tok_enc.res.#.blk.#.", "encoder.encoder.layers.#.block.#.conv."),
    **_roles("tok_enc.blk.#.", "encoder.encoder_transformer.layers.#.", CODEC_ENC_LAYER),
    "tok_enc.downsample.weight": "encoder.downsample.conv.weight",
    **{f"tok_enc.vq_{q}.{p}.weight": f"{ENC_RVQ}{q}_residual_vector_quantizer.{p}.weight"
       for q in ("semantic", "acoustic") for p in ("input_proj", "output_proj")},
    **{f"tok_enc.vq_{q}.#.codebook": f"{ENC_RVQ}{q}_residual_vector_quantizer.layers.#.codebook.embed_sum"
       for q in ("semantic", "acoustic")},
    **{f"tok_enc.vq_{q}.#.initialized": None for q in ("semantic", "acoustic")},  # training state: dropped
}
# CrispASR's SEANet names stage s of the official layer list [conv, (res, ELU, conv) x 4, ELU, conv].
SEANET_B = {**_wb("init_", "layers.0.conv.", "w", "b"), **_wb("final_", "layers.14.conv.", "w", "b"),
            **{k: v for s in range(4) for k, v in {
                **_wb(f"blk.{s}.short_", f"layers.{3 * s + 1}.block.1.conv.", "w", "b"),
                **_wb(f"blk.{s}.exp_", f"layers.{3 * s + 1}.block.3.conv.", "w", "b"),
                **_wb(f"ds.{s}.", f"layers.{3 * s + 3}.conv.", "w", "b")}.items()}}
CODEC_B = {
    "codec.dec.rvq_first.codebook": f"{DEC_RVQ}first.vq.layers.0._codebook.embedding_sum",
    "codec.dec.rvq_rest.#.codebook": f"{DEC_RVQ}rest.vq.layers.#._codebook.embedding_sum",
    **{f"codec.dec.rvq_{q}.out_proj_w": f"{DEC_RVQ}{q}.output_proj.weight" for q in ("first", "rest")},
    **_wb("codec.dec.pre_conv_", "decoder.pre_conv.conv.", "w", "b"),
    **_wb("codec.dec.xfmr.in_proj_", "decoder.pre_transformer.input_proj.", "w", "b"),
    **_wb("codec.dec.xfmr.out_proj_", "decoder.pre_transformer.output_proj.", "w", "b"),
    "codec.dec.xfmr.norm_w": "decoder.pre_transformer.norm.weight",
    **_roles("codec.dec.xfmr.blk.#.", "decoder.pre_transformer.layers.#.", {
        "attn_norm_w": "input_layernorm.weight", "ffn_norm_w": "post_attention_layernorm.weight",
        "attn_q_w": "self_attn.q_proj.weight", "attn_k_w": "self_attn.k_proj.weight",
        "attn_v_w": "self_attn.v_proj.weight", "attn_o_w": "self_attn.o_proj.weight",
        "attn_ls_w": "self_attn_layer_scale.scale", "ffn_gate_w": "mlp.gate_proj.weight",
        "ffn_up_w": "mlp.up_proj.weight", "ffn_down_w": "mlp.down_proj.weight", "ffn_ls_w": "mlp_layer_scale.scale"}),
    **_wb("codec.dec.up.#.tconv_", "decoder.upsample.#.0.conv.", "w", "b"),
    **_wb("codec.dec.up.#.cnx.dw_", "decoder.upsample.#.1.dwconv.conv.", "w", "b"),
    **{k: v for m, h in (("norm", "norm"), ("pw1", "pwconv1"), ("pw2", "pwconv2")) for k, v in
       _wb(f"codec.dec.up.#.cnx.{m}_", f"decoder.upsample.#.1.{h}.", "w", "b").items()},
    "codec.dec.up.#.cnx.gamma": "decoder.upsample.#.1.gamma",
    **_wb("codec.dec.in_conv_", "decoder.decoder.0.conv.", "w", "b"),
    **_wb("codec.dec.out_conv_", "decoder.decoder.6.conv.", "w", "b"),
    "codec.dec.out_snake_a": "decoder.decoder.5.alpha", "codec.dec.out_snake_b": "decoder.decoder.5.beta",
    **{k: v for b in range(4) for k, v in {
        f"codec.dec.blk.{b}.snake_a": f"decoder.decoder.{b + 1}.block.0.alpha",
        f"codec.dec.blk.{b}.snake_b": f"decoder.decoder.{b + 1}.block.0.beta",
        **_wb(f"codec.dec.blk.{b}.tconv_", f"decoder.decoder.{b + 1}.block.1.conv.", "w", "b"),
        **{f"codec.dec.blk.{b}.res.{u}.{g}": f"decoder.decoder.{b + 1}.block.{u + 2}.{h}" for u in range(3)
           for g, h in {"act1_a": "act1.alpha", "act1_b": "act1.beta", "act2_a": "act2.alpha",
                        "act2_b": "act2.beta", **_wb("conv1_", "conv1.conv.", "w", "b"),
                        **_wb("conv2_", "conv2.conv.", "w", "b")}.items()}}.items()},
    **{f"codec.enc.seanet.{g}": f"encoder.encoder.{h}" for g, h in SEANET_B.items()},
    **_roles("codec.enc.xfmr.blk.#.", "encoder.encoder_transformer.layers.#.", {
        **_wb("norm1_", "input_layernorm.", "w", "b"), **_wb("norm2_", "post_attention_layernorm.", "w", "b"),
        "attn_q_w": "self_attn.q_proj.weight", "attn_k_w": "self_attn.k_proj.weight",
        "attn_v_w": "self_attn.v_proj.weight", "attn_o_w": "self_attn.o_proj.weight",
        "attn_ls": "self_attn_layer_scale.scale", "fc1_w": "mlp.fc1.weight", "fc2_w": "mlp.fc2.weight",
        "ffn_ls": "mlp_layer_scale.scale"}),
    "codec.enc.ds_w": "encoder.downsample.conv.weight",
    **{f"codec.enc.rvq.{g}.{p}_w": f"{ENC_RVQ}{q}_residual_vector_quantizer.{h}.weight"
       for g, q in (("sem", "semantic"), ("ac", "acoustic"))
       for p, h in (("in", "input_proj"), ("out", "output_proj"))},
    "codec.enc.rvq.sem.cb": f"{ENC_RVQ}semantic_residual_vector_quantizer.layers.0.codebook.embed_sum",
    "codec.enc.rvq.ac.#.cb": f"{ENC_RVQ}acoustic_residual_vector_quantizer.layers.#.codebook.embed_sum",
}


class NameMap:
    """GGUF name -> official name (None: a tensor deliberately dropped); unknown names raise."""

    def __init__(self, table: dict):
        self._exact = {k: v for k, v in table.items() if "#" not in k and "*" not in k}
        self._patterns = [(re.compile(re.escape(k).replace("\\#", r"(\d+)").replace("\\*", "(.+)")), v)
                          for k, v in table.items() if "#" in k or "*" in k]

    def __call__(self, name: str) -> str | None:
        if name in self._exact:
            return self._exact[name]
        for pattern, template in self._patterns:
            if m := pattern.fullmatch(name):
                if template is None:
                    return None
                parts = iter(m.groups())
                return re.sub(r"[#*]", lambda _: next(parts), template)
        raise KeyError(name)


@dataclass(frozen=True)
class Dialect:
    name: str  # "qwen3-tts" | "crispasr" | "hf-names"
    names: NameMap
    fused_codebooks: bool  # codebooks stored as embedding_sum / usage (dialects A and B)
    writer: str = ""  # the sub-variant, where metadata tells it


IDENTITY_TALKER = NameMap({"talker.*": "talker.*", "speaker_encoder.*": "speaker_encoder.*"})
IDENTITY_CODEC = NameMap({"decoder.*": "decoder.*", "encoder.*": "encoder.*"})


def detect(path, role: str, arch: str | None, keys: set, names: list[str]) -> Dialect:
    """The dialect of one file from `general.architecture`, its metadata keys and tensor names."""
    has = set(names).__contains__
    if role == "talker":
        if arch == "qwen3-tts" and has("talker.codec_embd.weight"):
            writer = "qwentts.cpp" if "qwen3-tts.talker.block_count" in keys else "qwen3-tts.cpp"
            return Dialect("qwen3-tts", NameMap(TALKER_A), False, writer)
        if arch == "qwen3tts":
            return Dialect("crispasr", NameMap(TALKER_B), False, "CrispASR")
        if not arch and any(n.startswith("talker.model.layers.") for n in names):
            return Dialect("hf-names", IDENTITY_TALKER, False)
    else:
        if arch == "qwen3-tts-tokenizer" and any(n.startswith("tok_dec.") for n in names):
            writer = "qwentts.cpp" if "qwen3-tts-tokenizer.decoder.latent_dim" in keys else "qwen3-tts.cpp"
            return Dialect("qwen3-tts", NameMap(CODEC_A), True, writer)
        if arch == "qwen3tts_tokenizer" and any(n.startswith("codec.dec.") for n in names):
            return Dialect("crispasr", NameMap(CODEC_B), True, "CrispASR")
        if not arch and any(n.startswith("decoder.") for n in names):
            return Dialect("hf-names", IDENTITY_CODEC, False)
    if names and all(n.startswith(("blk.", "token_embd.", "output")) for n in names):
        raise GGUFError(f"{path}: a llama.cpp-style GGUF (architecture {arch!r}, stock 'blk.N' names), as "
                        "published by HaujetZhao/Qwen3-TTS-GGUF; it holds only part of the model (the "
                        "rest is ONNX/.npy) and cannot be converted. Use a qwentts.cpp, CrispASR or "
                        "Hugging Face checkpoint instead")
    other = {"talker": "codec", "codec": "talker"}[role]
    if arch in ("qwen3-tts", "qwen3tts", "qwen3-tts-tokenizer", "qwen3tts_tokenizer") and \
            arch.endswith("tokenizer") == (role == "talker"):
        raise GGUFError(f"{path}: this is a Qwen3-TTS {other} file (architecture {arch!r}), given as the {role}")
    raise GGUFError(f"{path}: not a Qwen3-TTS {role} GGUF in a known dialect (architecture {arch!r}; "
                    f"first tensors: {', '.join(names[:5]) or 'none'})")


# ---- reading: GGUF v2/v3, little-endian (the format spec of gguf-py / ggml) ----

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K")
_NUMPY = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        self.pos += n
        if self.pos > len(self.buf):
            raise struct.error("string past the end of the file")
        return self.buf[self.pos - n:self.pos].decode("utf-8")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            return self.take(_SCALAR[kind])
        sub, n = self.take("<I"), self.take("<Q")
        if sub in _SCALAR:  # numeric arrays in one go
            dtype = np.dtype(_SCALAR[sub])
            if n * dtype.itemsize > len(self.buf) - self.pos:  # a count beyond the file (or beyond ssize_t)
                raise struct.error("array past the end of the file")
            values = np.frombuffer(self.buf, dtype, n, self.pos).tolist()
            self.pos += n * dtype.itemsize
            return values
        return [self.value(sub) for _ in range(n)]


@dataclass(frozen=True)
class Tensor:
    name: str
    kind: str  # the GGML type name: F32, Q8_0, ...
    shape: tuple  # Hugging Face order (GGUF lists dimensions innermost first)
    data: np.ndarray  # F32/F16 as float, BF16 as uint16, block types as uint8 [*rows, bytes per row]


def read_gguf(path: Path) -> tuple[dict, list[Tensor]]:
    """(metadata, tensors) of a GGUF file; tensor data are views into a read-only memory map."""
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    c = _Cursor(buf)
    if buf[:4] != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (no GGUF magic)")
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name, dims = c.string(), c.take("<I")
        infos.append((name, tuple(c.take("<Q") for _ in range(dims))[::-1], c.take("<I"), c.take("<Q")))
    align = meta.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or not 0 < align <= 1 << 20:
        raise GGUFError(f"{path}: general.alignment {align!r:.40} is not a positive byte count")
    start = -(-c.pos // align) * align
    tensors = []
    for name, shape, type_id, offset in infos:
        try:
            kind = gguf.GGMLQuantizationType(type_id).name
        except ValueError:
            raise GGUFError(f"{path}: tensor {name} has an unknown GGML type id {type_id}") from None
        if kind not in FLOAT_TYPES + BLOCK_TYPES:
            raise GGUFError(f"{path}: tensor {name} has type {kind}, which is not supported "
                            f"({', '.join(FLOAT_TYPES + BLOCK_TYPES)})")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
        if not all(0 < d < 2 ** 31 for d in shape):  # ggml's ne are >= 1; MLX holds int32 dimensions
            raise GGUFError(f"{path}: tensor {name} has impossible dimensions {shape}")
        if not shape or shape[-1] % block:
            raise GGUFError(f"{path}: tensor {name} {shape} does not split into {kind} blocks of {block}")
        n_bytes = math.prod(shape) // block * size
        if start + offset + n_bytes > len(buf):
            raise GGUFError(f"{path} is truncated: tensor {name} ends past the end of the file")
        if kind in _NUMPY:
            data = np.frombuffer(buf, _NUMPY[kind], math.prod(shape), start + offset).reshape(shape)
        else:
            data = np.frombuffer(buf, np.uint8, n_bytes, start + offset).reshape(*shape[:-1], -1)
        tensors.append(Tensor(name, kind, shape, data))
    return meta, tensors


class GGUFFile:
    """One GGUF file of a pair: its dialect, metadata and tensors under official names."""

    def __init__(self, path: Path, role: str):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the {role} GGUF)")
        try:
            self.metadata, tensors = read_gguf(path)
        except (struct.error, UnicodeDecodeError, KeyError, ValueError, RecursionError) as e:
            if isinstance(e, GGUFError):
                raise
            raise GGUFError(f"{path} is not a readable GGUF file (truncated or corrupt?): {e}") from None
        self.path = path
        names = [t.name for t in tensors]
        self.dialect = detect(path, role, self.metadata.get("general.architecture"), set(self.metadata), names)
        self.tensors, self.shapes, self.gguf_names = [], {}, {}
        for t in tensors:
            try:
                official = self.dialect.names(t.name)
            except KeyError:
                raise GGUFError(f"{path}: unknown tensor {t.name} for the {self.dialect.name} dialect") from None
            if official is not None:
                self.tensors.append((t, official))
                self.shapes[official], self.gguf_names[official] = t.shape, t.name

    def meta(self, key: str):
        return self.metadata.get(key)
