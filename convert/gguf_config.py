"""Rebuild the Hugging Face configs of a GGUF pair: released defaults, then the file's metadata, then
the sizes read off the tensor shapes (which must agree with any metadata that states them).

The result is the three dicts a Hugging Face snapshot holds (config.json, speech_tokenizer/config.json,
generation_config.json), validated afterwards by mlx_qwen_tts.config.parse_model_config.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np

from .gguf_dialects import GGUFError

TALKER_DEFAULTS = {  # qwen3-tts-architecture.md §1-3; every size is taken from the tensors
    "model_type": "qwen3_tts", "architectures": ["Qwen3TTSForConditionalGeneration"],
    "tokenizer_type": "qwen3_tts_tokenizer_12hz", "im_start_token_id": 151644, "im_end_token_id": 151645,
    "tts_pad_token_id": 151671, "tts_bos_token_id": 151672, "tts_eos_token_id": 151673,
    "assistant_token_id": 77091,
    "talker_config": {
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 32768,
        "attention_bias": False, "use_sliding_window": False, "tie_word_embeddings": False,
        "position_id_per_seconds": 13, "rope_scaling": {"rope_type": "default", "interleaved": True},
        "codec_pad_id": 2148, "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
        "codec_nothink_id": 2155, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
        "codec_language_id": {"english": 2050, "german": 2053, "spanish": 2054, "chinese": 2055, "japanese": 2058,
                              "french": 2061, "korean": 2064, "russian": 2069, "italian": 2070, "portuguese": 2071},
        "code_predictor_config": {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1e6,
                                  "max_position_embeddings": 65536, "attention_bias": False}},
}
GENERATION_DEFAULTS = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0, "top_k": 50,
                       "subtalker_dosample": True, "subtalker_temperature": 0.9, "subtalker_top_p": 1.0,
                       "subtalker_top_k": 50, "max_new_tokens": 8192}
CODEC_DEFAULTS = {  # qwen3-tts-architecture.md §5.1
    "model_type": "qwen3_tts_tokenizer_12hz", "architectures": ["Qwen3TTSTokenizerV2Model"],
    "input_sample_rate": 24000, "output_sample_rate": 24000, "encoder_valid_num_quantizers": 16,
    "decoder_config": {"hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000, "sliding_window": 72,
                       "max_position_embeddings": 8000, "layer_scale_initial_scale": 0.01, "attention_bias": False,
                       "head_dim": 64},
    "encoder_config": {"_frame_rate": 12.5, "sampling_rate": 24000, "audio_channels": 1, "num_residual_layers": 1,
                       "dilation_growth_rate": 2, "hidden_act": "gelu", "norm_eps": 1e-5, "rope_theta": 10000.0,
                       "layer_scale_initial_scale": 0.01, "sliding_window": 250, "max_position_embeddings": 8000,
                       "num_quantizers": 32, "num_semantic_quantizers": 1, "pad_mode": "constant",
                       "use_causal_conv": True, "use_conv_shortcut": False, "attention_bias": False,
                       "trim_right_ratio": 1.0, "head_dim": 64},
}

_A_LM = {"hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
         "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count",
         "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
         "vocab_size": "vocab_size", "max_position_embeddings": "context_length", "rope_theta": "rope.freq_base",
         "rms_norm_eps": "attention.layer_norm_rms_epsilon"}
_B_LM = {"num_hidden_layers": "n_layers", "hidden_size": "d_model", "num_attention_heads": "n_heads",
         "num_key_value_heads": "n_kv_heads", "head_dim": "head_dim", "intermediate_size": "ff_dim",
         "vocab_size": "vocab_size", "max_position_embeddings": "max_pos", "rope_theta": "rope_theta",
         "rms_norm_eps": "rms_norm_eps", "num_code_groups": "n_code_groups"}
_CODEC_IDS = ["codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id", "codec_nothink_id",
              "codec_think_bos_id", "codec_think_eos_id"]
_TEXT_IDS = ["im_start", "im_end", "tts_pad", "tts_bos", "tts_eos"]
T, CP = "talker_config.", "talker_config.code_predictor_config."
# Config path -> metadata keys, first present wins (qwentts.cpp's keys before qwen3-tts.cpp's).
TALKER_META = {
    "qwen3-tts": {
        **{T + h: (f"qwen3-tts.talker.{g}", f"qwen3-tts.{g}") for h, g in _A_LM.items()},
        **{CP + h: (f"qwen3-tts.code_pred.{g}",) for h, g in _A_LM.items()},
        CP + "num_hidden_layers": ("qwen3-tts.code_pred.block_count", "qwen3-tts.code_predictor.layer_count"),
        CP + "vocab_size": ("qwen3-tts.code_pred.vocab_size", "qwen3-tts.code_predictor.vocab_size"),
        **{T + k: (f"qwen3-tts.talker.{k}", f"qwen3-tts.{k}") for k in
           ("text_vocab_size", "text_hidden_size", "position_id_per_seconds")},
        T + "num_code_groups": ("qwen3-tts.num_code_groups",),
        T + "rope_scaling.mrope_section": ("qwen3-tts.talker.rope.mrope_section", "qwen3-tts.rope.mrope_section"),
        T + "rope_scaling.interleaved": ("qwen3-tts.talker.rope.mrope_interleaved",  # what the C++ loader reads
                                         "qwen3-tts.talker.mrope_interleaved"),  # what the converter writes
        **{T + k: (f"qwen3-tts.codec.{k[6:].replace('_token', '')}",) for k in _CODEC_IDS},
        **{f"{k}_token_id": (f"qwen3-tts.text.{k}_id",) for k in _TEXT_IDS},
        "tts_model_type": ("qwen3-tts.model_type",), "tts_model_size": ("qwen3-tts.model_size",),
        "speaker_encoder_config.enc_dim": ("qwen3-tts.spk_enc.embedding_length",
                                           "qwen3-tts.speaker_encoder.embedding_length"),
        "speaker_encoder_config.sample_rate": ("qwen3-tts.spk_enc.sample_rate",
                                               "qwen3-tts.speaker_encoder.sample_rate"),
        **{f"generation.{h}": (f"generation.{g}",) for h, g in
           [(k, k) for k in GENERATION_DEFAULTS if k != "subtalker_dosample"] +
           [("subtalker_dosample", "subtalker_do_sample")]},
    },
    "crispasr": {
        **{T + h: (f"qwen3tts.talker.{g}",) for h, g in _B_LM.items()},
        **{CP + h: (f"qwen3tts.code_pred.{g}",) for h, g in _B_LM.items()},
        **{T + k: (f"qwen3tts.talker.{k}",) for k in
           ("text_vocab_size", "text_hidden_size", "position_id_per_seconds", *_CODEC_IDS)},
        T + "rope_scaling.mrope_section": ("qwen3tts.talker.mrope_section",),
        T + "rope_scaling.interleaved": ("qwen3tts.talker.rope_interleaved",),
        **{f"{k}_token_id": (f"qwen3tts.{k}_token_id",) for k in [*_TEXT_IDS, "assistant"]},
        "tts_model_type": ("qwen3tts.tts_model_type",),
        "speaker_encoder_config.enc_dim": ("qwen3tts.speaker.enc_dim",),
        "speaker_encoder_config.sample_rate": ("qwen3tts.speaker.sample_rate",),
    },
}
# (names, ids, dialects) arrays; a dialect is a language name ("" = none) or a language id (0 = none).
SPEAKER_META = {"qwen3-tts": [("qwen3-tts.codec.speaker_names", "qwen3-tts.codec.speaker_ids",
                               "qwen3-tts.codec.speaker_dialects"),
                              ("qwen3-tts.speaker.names", "qwen3-tts.speaker.ids", "qwen3-tts.speaker.dialects")],
                "crispasr": [("qwen3tts.spk_names", "qwen3tts.spk_token_ids", "qwen3tts.spk_dialect_token_ids")]}
LANGUAGE_META = {"qwen3-tts": [("qwen3-tts.codec.language_names", "qwen3-tts.codec.language_ids"),
                               ("qwen3-tts.language.names", "qwen3-tts.language.ids")],
                 "crispasr": [("qwen3tts.codec_language_names", "qwen3tts.codec_language_ids")]}

_DEC = ["latent_dim", "codebook_dim", "codebook_size", "decoder_dim", "hidden_size", "intermediate_size", "head_dim",
        "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "num_quantizers", "num_semantic_quantizers",
        "rms_norm_eps", "rope_theta", "sliding_window", "layer_scale_initial_scale", "upsample_rates",
        "upsampling_ratios"]
_ENC = ["num_filters", "kernel_size", "last_kernel_size", "residual_kernel_size", "num_residual_layers",
        "dilation_growth_rate", "compress", "upsampling_ratios", "hidden_size", "intermediate_size", "head_dim",
        "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "norm_eps", "rope_theta",
        "layer_scale_initial_scale", "codebook_dim", "codebook_size", "num_quantizers", "num_semantic_quantizers"]
_TOP = ["input_sample_rate", "output_sample_rate", "decode_upsample_rate", "encode_downsample_rate",
        "encoder_valid_num_quantizers"]
_A_TOK, _B_TOK = "qwen3-tts-tokenizer.", "qwen3tts_codec."
CODEC_META = {
    "qwen3-tts": {  # qwentts.cpp mirrors the HF names; qwen3-tts.cpp's few keys are the fallbacks
        **{k: (_A_TOK + k,) for k in _TOP},
        **{f"decoder_config.{k}": (f"{_A_TOK}decoder.{k}",) for k in _DEC},
        **{f"encoder_config.{k}": (f"{_A_TOK}encoder.{k}",) for k in _ENC},
        **{f"{p}_config.{h}": (f"{_A_TOK}{p}.{h}", f"{_A_TOK}{p}.{g}") for p in ("decoder", "encoder")
           for h, g in (("num_hidden_layers", "num_layers"), ("num_attention_heads", "num_heads"))},
        **{f"{p}_config.vector_quantization_hidden_dimension": (f"{_A_TOK}{p}.vector_quantization_hidden_dim",)
           for p in ("decoder", "encoder")},
        "encoder_valid_num_quantizers": (_A_TOK + "encoder_valid_num_quantizers", _A_TOK + "encoder.valid_quantizers"),
        "decoder_config.num_quantizers": (_A_TOK + "decoder.num_quantizers", _A_TOK + "num_codebooks"),
    },
    "crispasr": {
        **{k: (_B_TOK + g,) for k, g in (("input_sample_rate", "input_sample_rate"),
                                         ("output_sample_rate", "output_sample_rate"),
                                         ("encode_downsample_rate", "encode_downsample"),
                                         ("decode_upsample_rate", "decode_upsample"),
                                         ("encoder_valid_num_quantizers", "encoder_valid_num_quantizers"))},
        **{f"{p}_config.{h}": (f"{_B_TOK}{q}.{g}",) for p, q in (("decoder", "dec"), ("encoder", "enc")) for h, g in (
            ("num_hidden_layers", "n_layers"), ("hidden_size", "d_model"), ("num_attention_heads", "n_heads"),
            ("intermediate_size", "ff_dim"), ("num_quantizers", "n_quantizers"), ("codebook_size", "codebook_size"),
            ("codebook_dim", "codebook_dim"), ("head_dim", "head_dim"), ("max_position_embeddings", "max_pos"),
            ("rope_theta", "rope_theta"), ("sliding_window", "sliding_window"))},
        **{f"decoder_config.{h}": (f"{_B_TOK}dec.{g}",) for h, g in (
            ("latent_dim", "latent_dim"), ("decoder_dim", "decoder_dim"), ("rms_norm_eps", "rms_norm_eps"),
            ("layer_scale_initial_scale", "layer_scale_initial"), ("upsample_rates", "upsample_rates"),
            ("upsampling_ratios", "upsampling_ratios"), ("num_semantic_quantizers", "n_semantic_q"),
            ("vector_quantization_hidden_dimension", "vq_hidden_dim"))},
        **{f"encoder_config.{h}": (f"{_B_TOK}enc.{g}",) for h, g in (
            ("norm_eps", "norm_eps"), ("kernel_size", "kernel_size"), ("last_kernel_size", "last_kernel_size"),
            ("compress", "compress"), ("dilation_growth_rate", "dilation_growth_rate"), ("num_filters", "num_filters"),
            ("num_residual_layers", "num_residual_layers"), ("residual_kernel_size", "residual_kernel_size"),
            ("upsampling_ratios", "upsample_ratios"), ("layer_scale_initial_scale", "layer_scale_initial"))},
    },
}


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _put(d: dict, path: str, value):
    *parents, leaf = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value


def _fill(d: dict, defaults: dict):
    for key, value in defaults.items():
        if isinstance(value, dict):
            _fill(d.setdefault(key, {}), value)
        else:
            d.setdefault(key, copy.deepcopy(value))


def _json(value):
    """A metadata value as config JSON; float32 scalars get their shortest decimal (1e-06, not 9.99e-07)."""
    if isinstance(value, float):
        return float(str(np.float32(value)))
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _apply_metadata(cfg: dict, table: dict, meta):
    for path, keys in table.items():
        value = next((v for v in map(meta, keys) if v is not None), None)
        if value is not None:
            _put(cfg, path, _json(value))


class _Facts:
    """Sizes read off the tensor shapes (official names), checked against values the metadata set."""

    def __init__(self, shapes: dict, where: str, gguf_names: dict):
        self.shapes, self.where, self.gguf_names = shapes, where, gguf_names

    def dim(self, name: str, axis: int) -> int:
        if name not in self.shapes:
            raise GGUFError(f"{self.where}: tensor {self.gguf_names.get(name, name)} is missing")
        shape = self.shapes[name]
        if axis >= len(shape):
            raise GGUFError(f"{self.where}: tensor {self.gguf_names.get(name, name)} has shape {tuple(shape)}; "
                            f"expected at least {axis + 1} dimensions")
        return int(shape[axis])

    def count(self, prefix: str) -> int:
        found = {int(m.group(1)) for n in self.shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", n))}
        if found != set(range(len(found))):
            raise GGUFError(f"{self.where}: tensors {prefix}N have a gap in N: {sorted(found)}")
        return len(found)

    def put(self, cfg: dict, path: str, value, evidence: str):
        stated = _get(cfg, path)
        if stated is not None and stated != value:
            name = self.gguf_names.get(evidence, evidence)
            raise GGUFError(f"{self.where}: the metadata gives {path} = {stated!r}, but tensor {name} "
                            f"{tuple(self.shapes[evidence])} implies {value!r}")
        _put(cfg, path, value)

    def attention(self, cfg: dict, path: str, attn: str, default_head_dim: int):
        """Heads x head_dim from the q/k widths and whichever of the two the metadata states."""
        q, k = attn + "q_proj.weight", attn + "k_proj.weight"
        width, heads = self.dim(q, 0), _get(cfg, path + "num_attention_heads")
        head_dim = width // heads if heads else (_get(cfg, path + "head_dim") or default_head_dim)
        if width % head_dim or self.dim(k, 0) % head_dim:
            raise GGUFError(f"{self.where}: {path}head_dim {head_dim} does not divide the attention widths of "
                            f"{self.gguf_names.get(q, q)} ({width}) and {self.gguf_names.get(k, k)}")
        self.put(cfg, path + "head_dim", head_dim, q)
        self.put(cfg, path + "num_attention_heads", width // head_dim, q)
        self.put(cfg, path + "num_key_value_heads", self.dim(k, 0) // head_dim, k)


def _talker_facts(cfg: dict, f: _Facts):
    for path, model in ((T, "talker.model."), (CP, "talker.code_predictor.model.")):
        layer = model + "layers.0."
        head_dim = f.dim(layer + "self_attn.q_norm.weight", 0)
        f.put(cfg, path + "head_dim", head_dim, layer + "self_attn.q_norm.weight")
        f.attention(cfg, path, layer + "self_attn.", head_dim)
        f.put(cfg, path + "hidden_size", f.dim(model + "norm.weight", 0), model + "norm.weight")
        f.put(cfg, path + "intermediate_size", f.dim(layer + "mlp.gate_proj.weight", 0), layer + "mlp.gate_proj.weight")
        f.put(cfg, path + "num_hidden_layers", f.count(model + "layers."), layer + "input_layernorm.weight")
    codec, text, head = "talker.model.codec_embedding.weight", "talker.model.text_embedding.weight", \
        "talker.code_predictor.lm_head.0.weight"
    f.put(cfg, T + "vocab_size", f.dim(codec, 0), codec)
    f.put(cfg, T + "text_vocab_size", f.dim(text, 0), text)
    f.put(cfg, T + "text_hidden_size", f.dim(text, 1), text)
    groups = f.count("talker.code_predictor.lm_head.") + 1
    f.put(cfg, T + "num_code_groups", groups, head)
    f.put(cfg, CP + "num_code_groups", groups, head)
    f.put(cfg, CP + "vocab_size", f.dim(head, 0), head)
    if any(n.startswith("speaker_encoder.") for n in f.shapes):
        s, p = "speaker_encoder.", "speaker_encoder_config."
        convs = [f"{s}blocks.0.conv.weight", *(f"{s}blocks.{i}.tdnn2.conv.weight" for i in (1, 2, 3)),
                 f"{s}mfa.conv.weight"]
        kernels = [convs[0], *(f"{s}blocks.{i}.res2net_block.blocks.0.conv.weight" for i in (1, 2, 3)), convs[4]]
        for key, value, evidence in (
                ("enc_dim", f.dim(s + "fc.weight", 0), s + "fc.weight"), ("mel_dim", f.dim(convs[0], 1), convs[0]),
                ("enc_channels", [f.dim(n, 0) for n in convs], convs[4]),
                ("enc_kernel_sizes", [f.dim(n, 2) for n in kernels], kernels[1]),
                ("enc_attention_channels", f.dim(s + "asp.tdnn.conv.weight", 0), s + "asp.tdnn.conv.weight"),
                ("enc_res2net_scale", f.count(s + "blocks.1.res2net_block.blocks.") + 1, kernels[1]),
                ("enc_se_channels", f.dim(s + "blocks.1.se_block.conv1.weight", 0),
                 s + "blocks.1.se_block.conv1.weight")):
            f.put(cfg, p + key, value, evidence)
        _fill(cfg, {"speaker_encoder_config": {"enc_dilations": [1, 2, 3, 4, 1], "sample_rate": 24000}})


def _codec_facts(cfg: dict, f: _Facts):
    D, rvq = "decoder_config.", "decoder.quantizer.rvq_"
    book, proj = rvq + "first.vq.layers.0._codebook.embedding_sum", rvq + "first.output_proj.weight"
    f.put(cfg, D + "codebook_size", f.dim(book, 0), book)
    f.put(cfg, D + "codebook_dim", f.dim(proj, 0), proj)
    semantic = f.count(rvq + "first.vq.layers.")
    f.put(cfg, D + "num_semantic_quantizers", semantic, book)
    f.put(cfg, D + "num_quantizers", semantic + f.count(rvq + "rest.vq.layers."), book)
    layer = "decoder.pre_transformer.layers.0."
    for key, name, axis in (("latent_dim", "decoder.pre_conv.conv.weight", 0),
                            ("hidden_size", "decoder.pre_transformer.input_proj.weight", 0),
                            ("intermediate_size", layer + "mlp.gate_proj.weight", 0),
                            ("decoder_dim", "decoder.decoder.0.conv.weight", 0)):
        f.put(cfg, D + key, f.dim(name, axis), name)
    f.put(cfg, D + "num_hidden_layers", f.count("decoder.pre_transformer.layers."), layer + "input_layernorm.weight")
    f.attention(cfg, D, layer + "self_attn.", CODEC_DEFAULTS["decoder_config"]["head_dim"])
    ratios = [f.dim(f"decoder.upsample.{i}.0.conv.weight", 2) for i in range(f.count("decoder.upsample."))]
    f.put(cfg, D + "upsampling_ratios", ratios, "decoder.upsample.0.0.conv.weight")
    # decoder.decoder holds an input conv, the upsampling blocks (transposed conv kernel 2r), snake, conv.
    blocks = range(1, f.count("decoder.decoder.") - 2)
    rates = [f.dim(f"decoder.decoder.{i}.block.1.conv.weight", 2) // 2 for i in blocks]
    f.put(cfg, D + "upsample_rates", rates, "decoder.decoder.1.block.1.conv.weight")
    f.put(cfg, "decode_upsample_rate", math.prod(ratios + rates), "decoder.decoder.1.block.1.conv.weight")
    if any(n.startswith("encoder.") for n in f.shapes):
        _encoder_facts(cfg, f)


def _encoder_facts(cfg: dict, f: _Facts):
    E, seanet = "encoder_config.", "encoder.encoder.layers."
    sem = "encoder.quantizer.semantic_residual_vector_quantizer."
    convs = sorted(int(m.group(1)) for n in f.shapes
                   if (m := re.fullmatch(re.escape(seanet) + r"(\d+)\.conv\.weight", n)))
    if len(convs) < 3:
        raise GGUFError(f"{f.where}: the codec encoder's convolutions ({seanet}N.conv) are missing")
    first, last = f"{seanet}{convs[0]}.conv.weight", f"{seanet}{convs[-1]}.conv.weight"
    res = f"{seanet}1.block.1.conv.weight"
    layer, book = "encoder.encoder_transformer.layers.0.", sem + "layers.0.codebook.embed_sum"
    strided = [f.dim(f"{seanet}{i}.conv.weight", 2) // 2 for i in convs[1:-1]]  # kernel 2r, stride r
    for key, value, evidence in (
            ("num_filters", f.dim(first, 0), first), ("kernel_size", f.dim(first, 2), first),
            ("last_kernel_size", f.dim(last, 2), last), ("upsampling_ratios", strided[::-1], last),
            ("residual_kernel_size", f.dim(res, 2), res), ("compress", f.dim(res, 1) // f.dim(res, 0), res),
            ("hidden_size", f.dim(layer + "input_layernorm.weight", 0), layer + "input_layernorm.weight"),
            ("intermediate_size", f.dim(layer + "mlp.fc1.weight", 0), layer + "mlp.fc1.weight"),
            ("num_hidden_layers", f.count("encoder.encoder_transformer.layers."), layer + "mlp.fc1.weight"),
            ("codebook_size", f.dim(book, 0), book), ("codebook_dim", f.dim(book, 1), book),
            ("vector_quantization_hidden_dimension", f.dim(sem + "input_proj.weight", 0), sem + "input_proj.weight"),
            ("num_semantic_quantizers", f.count(sem + "layers."), book)):
        f.put(cfg, E + key, value, evidence)
    f.attention(cfg, E, layer + "self_attn.", CODEC_DEFAULTS["encoder_config"]["head_dim"])
    f.put(cfg, "encode_downsample_rate", math.prod(strided) * 2, last)  # then the stride-2 downsample


MODEL_TYPES = {"customvoice": "custom_voice", "voicedesign": "voice_design", "base": "base"}
MODEL_SIZES = {"06": "0b6", "17": "1b7"}


def _speakers(cfg: dict, dialect: str, meta, where: str):
    """Language and speaker tables; a speaker's dialect is a language name ("" = none) or id (0 = none)."""
    t = cfg["talker_config"]
    for names_key, ids_key in LANGUAGE_META.get(dialect, []):
        if (names := meta(names_key)) is not None:
            t["codec_language_id"] = dict(zip([n.lower() for n in names], _one_each(meta, ids_key, names, where)))
            break
    by_id = {v: k for k, v in t.get("codec_language_id", {}).items()}
    for names_key, ids_key, dialects_key in SPEAKER_META.get(dialect, []):
        if (names := meta(names_key)) is None:
            continue
        names = [n.lower() for n in names]
        t["spk_id"] = dict(zip(names, _one_each(meta, ids_key, names, where)))
        dialects = _one_each(meta, dialects_key, names, where) if meta(dialects_key) is not None else [""] * len(names)
        if any(isinstance(d, int) and d and d not in by_id for d in dialects):
            raise GGUFError(f"{where}: {dialects_key} names a language id the language table lacks: {dialects}")
        t["spk_is_dialect"] = {n: (d.lower() or False) if isinstance(d, str) else (by_id[d] if d else False)
                               for n, d in zip(names, dialects)}
        break


def _one_each(meta, key, names, where):
    values = meta(key)
    if values is None or len(values) != len(names):
        raise GGUFError(f"{where}: {key} does not give one entry per name ({len(names)})")
    return values


def talker_config(dialect: str, meta, shapes: dict, where: str, gguf_names: dict, base: dict | None = None,
                  generation: dict | None = None) -> tuple[dict, dict]:
    """(config.json, generation_config.json) of a talker file. `base` is the config.json that files
    without metadata (dialect hf-names) need."""
    cfg = copy.deepcopy(base) if base is not None else {}
    _apply_metadata(cfg, TALKER_META.get(dialect, {}), meta)
    gen = {**GENERATION_DEFAULTS, **(generation or {}), **cfg.pop("generation", {})}
    _speakers(cfg, dialect, meta, where)
    _talker_facts(cfg, _Facts(shapes, where, gguf_names))
    raw_type = cfg.get("tts_model_type")
    if raw_type is None:
        raise GGUFError(f"{where}: the metadata does not say the model type (base, custom_voice, voice_design)")
    cfg["tts_model_type"] = MODEL_TYPES.get(re.sub(r"[^a-z]", "", str(raw_type).lower()))
    if cfg["tts_model_type"] is None:
        raise GGUFError(f"{where}: unknown model type {raw_type!r}")
    if "tts_model_size" in cfg:
        size = MODEL_SIZES.get(re.sub(r"\D", "", str(cfg["tts_model_size"])))
        cfg["tts_model_size"] = size or cfg["tts_model_size"]
    else:  # only the 1.7B models project the talker's width down to the code predictor's
        cfg["tts_model_size"] = "1b7" if any("small_to_mtp_projection" in n for n in shapes) else "0b6"
    if _get(cfg, T + "head_dim") == 128 and _get(cfg, T + "rope_scaling.mrope_section") is None:
        _put(cfg, T + "rope_scaling.mrope_section", [24, 20, 20])
    _fill(cfg, TALKER_DEFAULTS)
    if cfg["tts_model_type"] == "custom_voice" and not _get(cfg, T + "spk_id"):
        raise GGUFError(f"{where}: a CustomVoice model whose metadata lists no speakers")
    return cfg, gen


def codec_config(dialect: str, meta, shapes: dict, where: str, gguf_names: dict, base: dict | None = None) -> dict:
    """speech_tokenizer/config.json of a codec file; the encoder section only when the file has the encoder."""
    cfg = copy.deepcopy(base) if base is not None else {}
    _apply_metadata(cfg, CODEC_META.get(dialect, {}), meta)
    defaults = copy.deepcopy(CODEC_DEFAULTS)
    if not any(n.startswith("encoder.") for n in shapes):  # a decode-only file: no voice-clone encoder
        for section in (cfg, defaults):
            section.pop("encoder_config", None)
            section.pop("encode_downsample_rate", None)
    _codec_facts(cfg, _Facts(shapes, where, gguf_names))
    _fill(cfg, defaults)
    return cfg
