"""Typed configuration of a Qwen3-TTS 12 Hz model, read from a Hugging Face snapshot.

Sources: `config.json` (talker, code predictor, speaker encoder, special ids, speakers,
languages), `speech_tokenizer/config.json` (codec decoder and encoder) and
`generation_config.json` (sampling defaults). Meanings: shared/docs/qwen3-tts-architecture.md.
Missing or inconsistent fields raise ConfigError naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlx_qwen_tts.config_fields import POSITIVE, SIZES, ConfigError, _Reader, check_sizes


MAX_PARAMETERS = 100e9  # per transformer stack, from its sizes: 60x the largest released talker


@dataclass(frozen=True)
class TransformerConfig:
    """A Qwen3-style decoder stack (the talker or the code predictor)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int

    @classmethod
    def read(cls, r: _Reader, default_theta: float) -> "TransformerConfig":
        check_sizes(r)
        heads = r.req("num_attention_heads", POSITIVE)
        hidden = r.req("hidden_size", POSITIVE)
        kv = r.req("num_key_value_heads", POSITIVE)
        cfg = cls(hidden_size=hidden, intermediate_size=r.req("intermediate_size", POSITIVE),
                  num_hidden_layers=r.req("num_hidden_layers", POSITIVE), num_attention_heads=heads,
                  num_key_value_heads=kv, head_dim=r.opt("head_dim", max(hidden // heads, 1), POSITIVE),
                  vocab_size=r.req("vocab_size", POSITIVE), rms_norm_eps=r.opt("rms_norm_eps", 1e-6, float),
                  rope_theta=r.opt("rope_theta", default_theta, float),
                  max_position_embeddings=r.opt("max_position_embeddings", 32768, POSITIVE))
        if heads % kv:
            raise ConfigError(f"{r.where}: num_attention_heads {heads} is not a multiple of "
                              f"num_key_value_heads {kv}")
        if cfg.head_dim % 2:
            raise ConfigError(f"{r.where}: head_dim {cfg.head_dim} must be even for RoPE")
        if cfg.parameters > MAX_PARAMETERS:
            raise ConfigError(f"{r.where}: hidden_size {hidden}, intermediate_size {cfg.intermediate_size}, "
                              f"num_hidden_layers {cfg.num_hidden_layers} and vocab_size {cfg.vocab_size} describe "
                              f"{cfg.parameters / 1e9:.0f} B parameters: refusing to build such a model")
        return cfg

    @property
    def parameters(self) -> int:
        """Roughly: attention, MLP and the token table (what building the stack allocates)."""
        h, d = self.hidden_size, self.head_dim
        attention = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        return self.num_hidden_layers * (attention + 3 * h * self.intermediate_size) + self.vocab_size * h


@dataclass(frozen=True)
class SpecialIds:
    codec_pad: int
    codec_bos: int
    codec_eos: int
    codec_think: int
    codec_nothink: int
    codec_think_bos: int
    codec_think_eos: int
    tts_pad: int
    tts_bos: int
    tts_eos: int
    im_start: int
    im_end: int


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    mel_dim: int
    enc_dim: int
    channels: tuple
    kernel_sizes: tuple
    dilations: tuple
    attention_channels: int
    res2net_scale: int
    se_channels: int
    sample_rate: int

    @classmethod
    def read(cls, r: _Reader) -> "SpeakerEncoderConfig":
        check_sizes(r)
        cfg = cls(mel_dim=r.opt("mel_dim", 128, POSITIVE), enc_dim=r.req("enc_dim", POSITIVE),
                  channels=tuple(r.opt("enc_channels", [512, 512, 512, 512, 1536], SIZES)),
                  kernel_sizes=tuple(r.opt("enc_kernel_sizes", [5, 3, 3, 3, 1], SIZES)),
                  dilations=tuple(r.opt("enc_dilations", [1, 2, 3, 4, 1], SIZES)),
                  attention_channels=r.opt("enc_attention_channels", 128, POSITIVE),
                  res2net_scale=r.opt("enc_res2net_scale", 8, POSITIVE),
                  se_channels=r.opt("enc_se_channels", 128, POSITIVE),
                  sample_rate=r.opt("sample_rate", 24000, POSITIVE))
        if not len(cfg.channels) == len(cfg.kernel_sizes) == len(cfg.dilations) == 5:
            raise ConfigError(f"{r.where}: enc_channels, enc_kernel_sizes and enc_dilations need 5 entries")
        if cfg.channels[1] % cfg.res2net_scale:
            raise ConfigError(f"{r.where}: channels {cfg.channels[1]} not divisible by res2net scale "
                              f"{cfg.res2net_scale}")
        return cfg


@dataclass(frozen=True)
class CodecDecoderConfig:
    codebook_size: int
    codebook_dim: int
    latent_dim: int
    decoder_dim: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    sliding_window: int
    num_quantizers: int
    upsample_rates: tuple
    upsampling_ratios: tuple

    @classmethod
    def read(cls, r: _Reader) -> "CodecDecoderConfig":
        check_sizes(r)
        P = POSITIVE
        heads = r.opt("num_attention_heads", 16, P)
        hidden = r.opt("hidden_size", 1024, P)
        return cls(codebook_size=r.opt("codebook_size", 2048, P), codebook_dim=r.req("codebook_dim", P),
                   latent_dim=r.opt("latent_dim", 1024, P), decoder_dim=r.opt("decoder_dim", 1536, P),
                   hidden_size=hidden, intermediate_size=r.opt("intermediate_size", 3072, P),
                   num_hidden_layers=r.opt("num_hidden_layers", 8, P), num_attention_heads=heads,
                   num_key_value_heads=r.opt("num_key_value_heads", 16, P),
                   head_dim=r.opt("head_dim", max(hidden // heads, 1), P),
                   rms_norm_eps=r.opt("rms_norm_eps", 1e-5, float), rope_theta=r.opt("rope_theta", 10000, float),
                   sliding_window=r.opt("sliding_window", 72, P), num_quantizers=r.opt("num_quantizers", 16, P),
                   upsample_rates=tuple(r.opt("upsample_rates", [8, 5, 4, 3], SIZES)),
                   upsampling_ratios=tuple(r.opt("upsampling_ratios", [2, 2], SIZES)))

    @property
    def samples_per_frame(self) -> int:
        n = 1
        for f in self.upsample_rates + self.upsampling_ratios:
            n *= f
        return n


@dataclass(frozen=True)
class CodecEncoderConfig:
    """The Mimi-based speech-tokenizer encoder (used only for voice cloning)."""

    raw: dict = field(repr=False)
    num_filters: int = 64
    hidden_size: int = 512
    upsampling_ratios: tuple = (8, 6, 5, 4)
    num_quantizers: int = 32
    codebook_size: int = 2048
    codebook_dim: int = 256


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    decoder: CodecDecoderConfig
    encoder: CodecEncoderConfig | None
    sample_rate: int
    decode_upsample_rate: int
    encode_downsample_rate: int
    encoder_valid_num_quantizers: int


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling defaults; priority is explicit argument, then generation_config.json, then these."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_do_sample: bool = True
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    max_new_tokens: int = 2048

    @classmethod
    def read(cls, r: _Reader) -> "GenerationConfig":
        d = cls()
        cfg = cls(do_sample=r.opt("do_sample", d.do_sample, bool),
                  temperature=r.opt("temperature", d.temperature, float), top_k=r.opt("top_k", d.top_k, int),
                  top_p=r.opt("top_p", d.top_p, float),
                  repetition_penalty=r.opt("repetition_penalty", d.repetition_penalty, float),
                  subtalker_do_sample=r.opt("subtalker_dosample", d.subtalker_do_sample, bool),
                  subtalker_temperature=r.opt("subtalker_temperature", d.subtalker_temperature, float),
                  subtalker_top_k=r.opt("subtalker_top_k", d.subtalker_top_k, int),
                  subtalker_top_p=r.opt("subtalker_top_p", d.subtalker_top_p, float),
                  max_new_tokens=r.opt("max_new_tokens", d.max_new_tokens, POSITIVE))
        checks = {"temperature": (cfg.temperature >= 0, ">= 0"), "top_k": (0 <= cfg.top_k < 2 ** 31, "in [0, 2^31)"),
                  "top_p": (0 < cfg.top_p <= 1, "in (0, 1]"), "repetition_penalty": (cfg.repetition_penalty > 0, "> 0"),
                  "subtalker_temperature": (cfg.subtalker_temperature >= 0, ">= 0"),
                  "subtalker_top_k": (0 <= cfg.subtalker_top_k < 2 ** 31, "in [0, 2^31)"),
                  "subtalker_top_p": (0 < cfg.subtalker_top_p <= 1, "in (0, 1]")}
        for key, (ok, wanted) in checks.items():
            if not ok:
                raise ConfigError(f"{r.where}: field '{key}' must be {wanted}, got {r.data.get(key)!r:.40}")
        return cfg


MODEL_TYPES = ("custom_voice", "voice_design", "base")
# The order of the official model card; configs store speakers alphabetically.
DOCUMENTED_SPEAKERS = ("vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str  # custom_voice | voice_design | base
    model_size: str  # "0b6" | "1b7"
    talker: TransformerConfig
    code_predictor: TransformerConfig
    text_vocab_size: int
    text_hidden_size: int
    num_code_groups: int
    ids: SpecialIds
    speakers: dict  # name -> codec id
    speaker_dialects: dict  # name -> dialect language key, or False
    languages: dict  # name -> codec id (dialects included)
    speaker_encoder: SpeakerEncoderConfig | None
    speech_tokenizer: SpeechTokenizerConfig
    generation: GenerationConfig

    @property
    def codebook_size(self) -> int:
        return self.code_predictor.vocab_size

    @property
    def speaker_names(self) -> list[str]:
        """The speakers in the model card's order; the first is the default voice."""
        known = [s for s in DOCUMENTED_SPEAKERS if s in self.speakers]
        return known + [s for s in self.speakers if s not in known]

    @property
    def honours_instruct(self) -> bool:
        # The official wrapper drops `instruct` for 0.6B (a substring test on the size string).
        return self.model_size not in "0b6"

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict:
    from mlx_qwen_tts.paths import path_problem

    problem = path_problem(path)
    if problem:
        raise ConfigError(f"{path} is missing: not a Qwen3-TTS model folder?" if problem == "does not exist"
                          else f"{path} {problem}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON: {e}") from None


def _ids_in(where, mapping, low, high, what):
    for name, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
            raise ConfigError(f"{where}: {what} '{name}' has id {value!r}, outside [{low}, {high})")


def parse_model_config(cfg: dict, st_cfg: dict, gen_cfg: dict | None, where: str = "config.json",
                       st_where: str = "speech_tokenizer/config.json",
                       gen_where: str = "generation_config.json") -> ModelConfig:
    root = _Reader(cfg, where)
    if root.opt("model_type", "qwen3_tts") != "qwen3_tts":
        raise ConfigError(f"{where}: model_type is {cfg.get('model_type')!r}, expected 'qwen3_tts'")
    model_type = root.req("tts_model_type", str)
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{where}: tts_model_type {model_type!r} is not one of {MODEL_TYPES}")
    tok_type = root.opt("tokenizer_type", "qwen3_tts_tokenizer_12hz")
    if tok_type != "qwen3_tts_tokenizer_12hz":
        raise ConfigError(f"{where}: tokenizer_type {tok_type!r} is not supported (only the 12 Hz tokenizer)")
    t = root.sub("talker_config")
    check_sizes(t)
    talker = TransformerConfig.read(t, 1e6)
    code_predictor = TransformerConfig.read(t.sub("code_predictor_config"), 1e6)
    groups = t.req("num_code_groups", POSITIVE)
    cp_groups = t.sub("code_predictor_config").opt("num_code_groups", groups, POSITIVE)
    if cp_groups != groups:
        raise ConfigError(f"{where}: talker num_code_groups {groups} != code predictor's {cp_groups}")
    rope = t.opt("rope_scaling", {}, dict)
    _Reader(rope, f"{where}:talker_config.rope_scaling").opt("mrope_section", None, SIZES)
    if rope.get("mrope_section") and sum(rope["mrope_section"]) != talker.head_dim // 2:
        raise ConfigError(f"{where}: talker_config.rope_scaling.mrope_section {rope['mrope_section']} "
                          f"must sum to head_dim/2 = {talker.head_dim // 2}")
    ids = SpecialIds(
        codec_pad=t.req("codec_pad_id", int), codec_bos=t.req("codec_bos_id", int),
        codec_eos=t.req("codec_eos_token_id", int), codec_think=t.req("codec_think_id", int),
        codec_nothink=t.req("codec_nothink_id", int), codec_think_bos=t.req("codec_think_bos_id", int),
        codec_think_eos=t.req("codec_think_eos_id", int), tts_pad=root.req("tts_pad_token_id", int),
        tts_bos=root.req("tts_bos_token_id", int), tts_eos=root.req("tts_eos_token_id", int),
        im_start=root.opt("im_start_token_id", 151644, int), im_end=root.opt("im_end_token_id", 151645, int))
    codebook = code_predictor.vocab_size
    vocab = talker.vocab_size
    control = {k: v for k, v in asdict(ids).items() if k.startswith("codec_")}
    _ids_in(f"{where}:talker_config", control, codebook, vocab, "control id")
    text_vocab = t.req("text_vocab_size", int)
    _ids_in(where, {k: v for k, v in asdict(ids).items() if not k.startswith("codec_")}, 0, text_vocab,
            "text id")
    if vocab - 1024 != codebook:
        raise ConfigError(f"{where}: talker vocab_size {vocab} must be the codebook size {codebook} + 1024 "
                          "(ids above the codebook are control, language and speaker tokens)")
    languages = {k.lower(): v for k, v in t.opt("codec_language_id", {}, dict).items()}
    speakers = {k.lower(): v for k, v in t.opt("spk_id", {}, dict).items()}
    _ids_in(f"{where}:talker_config.codec_language_id", languages, codebook, vocab, "language")
    _ids_in(f"{where}:talker_config.spk_id", speakers, codebook, vocab, "speaker")
    if model_type == "custom_voice" and not speakers:
        raise ConfigError(f"{where}: talker_config.spk_id lists no speaker; a custom_voice model needs at least one")
    dialects = {k.lower(): v for k, v in t.opt("spk_is_dialect", {}, dict).items()}
    for name in speakers:
        if name in dialects and dialects[name] not in (None, False) and not isinstance(dialects[name], str):
            raise ConfigError(f"{where}: talker_config.spk_is_dialect['{name}'] must be a language name or "
                              f"false, got {dialects[name]!r:.40}")
        if name not in dialects:
            raise ConfigError(f"{where}: talker_config.spk_is_dialect has no entry for speaker '{name}'")
        if dialects[name] and dialects[name] not in languages:
            raise ConfigError(f"{where}: speaker '{name}' uses dialect {dialects[name]!r}, "
                              "which codec_language_id lacks")
    speaker_encoder = None
    if model_type == "base":
        speaker_encoder = SpeakerEncoderConfig.read(root.sub("speaker_encoder_config"))
        if speaker_encoder.enc_dim != talker.hidden_size:
            raise ConfigError(f"{where}: speaker_encoder_config.enc_dim {speaker_encoder.enc_dim} must equal "
                              f"the talker hidden size {talker.hidden_size}")
    speech_tokenizer = parse_speech_tokenizer_config(st_cfg, st_where)
    if speech_tokenizer.decoder.num_quantizers != groups:
        raise ConfigError(f"{st_where}: decoder num_quantizers "
                          f"{speech_tokenizer.decoder.num_quantizers} != talker num_code_groups {groups}")
    if speech_tokenizer.decoder.codebook_size != codebook:
        raise ConfigError(f"{st_where}: codebook_size {speech_tokenizer.decoder.codebook_size}"
                          f" != code predictor vocab_size {codebook}")
    generation = GenerationConfig.read(_Reader({} if gen_cfg is None else gen_cfg, gen_where))
    return ModelConfig(model_type=model_type, model_size=root.opt("tts_model_size", "", str), talker=talker,
                       code_predictor=code_predictor, text_vocab_size=text_vocab,
                       text_hidden_size=t.req("text_hidden_size", int), num_code_groups=groups, ids=ids,
                       speakers=speakers, speaker_dialects=dialects, languages=languages,
                       speaker_encoder=speaker_encoder, speech_tokenizer=speech_tokenizer, generation=generation)


ENCODER_SIZES = ("kernel_size", "residual_kernel_size", "last_kernel_size", "num_residual_layers",
                 "dilation_growth_rate", "compress", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "intermediate_size", "sampling_rate", "num_semantic_quantizers",
                 "vector_quantization_hidden_dimension")


def parse_speech_tokenizer_config(cfg: dict, where: str) -> SpeechTokenizerConfig:
    root = _Reader(cfg, where)
    decoder = CodecDecoderConfig.read(root.sub("decoder_config"))
    upsample = root.opt("decode_upsample_rate", 1920, POSITIVE)
    if decoder.samples_per_frame != upsample:
        raise ConfigError(f"{where}: decoder rates give {decoder.samples_per_frame} samples per frame but "
                          f"decode_upsample_rate is {upsample}")
    enc = root.sub("encoder_config", required=False)
    encoder = None
    if enc is not None:
        check_sizes(enc)
        for key in ENCODER_SIZES:  # what the voice-clone encoder (models/codec_encoder.py) is built from
            enc.opt(key, None, POSITIVE)
        for key in ("norm_eps", "rope_theta", "_frame_rate"):
            enc.opt(key, None, float)
        encoder = CodecEncoderConfig(
            raw=dict(enc.data), num_filters=enc.opt("num_filters", 64, POSITIVE),
            hidden_size=enc.opt("hidden_size", 512, POSITIVE),
            upsampling_ratios=tuple(enc.opt("upsampling_ratios", [8, 6, 5, 4], SIZES)),
            num_quantizers=enc.opt("num_quantizers", 32, POSITIVE),
            codebook_size=enc.opt("codebook_size", 2048, POSITIVE), codebook_dim=enc.opt("codebook_dim", 256, POSITIVE))
    valid = root.opt("encoder_valid_num_quantizers", 16, POSITIVE)
    if encoder is not None:
        from mlx_qwen_tts.models.codec_encoder import MimiEncoderArgs  # its own checks, at load time

        try:
            MimiEncoderArgs.from_config(encoder.raw, valid)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return SpeechTokenizerConfig(decoder=decoder, encoder=encoder,
                                 sample_rate=root.opt("output_sample_rate", 24000, POSITIVE),
                                 decode_upsample_rate=upsample,
                                 encode_downsample_rate=root.opt("encode_downsample_rate", 1920, POSITIVE),
                                 encoder_valid_num_quantizers=valid)


def load_model_config(folder: str | Path) -> ModelConfig:
    """Read config.json, speech_tokenizer/config.json and (optional) generation_config.json."""
    from mlx_qwen_tts.paths import path_problem

    folder = Path(folder)
    problem = path_problem(folder, "folder")
    if problem:
        raise ConfigError(f"{folder} {problem}")
    paths = [folder / "config.json", folder / "speech_tokenizer" / "config.json", folder / "generation_config.json"]
    generation = _read_json(paths[2]) if paths[2].exists() or paths[2].is_symlink() else None
    return parse_model_config(_read_json(paths[0]), _read_json(paths[1]), generation, *map(str, paths))


def config_summary(cfg: ModelConfig) -> dict[str, Any]:
    """What `voices` shows: speakers, languages and capabilities."""
    return dict(model_type=cfg.model_type, model_size=cfg.model_size, speakers=cfg.speaker_names,
                languages=["auto"] + sorted(k for k in cfg.languages if not k.endswith("_dialect")),
                instruct=cfg.model_type == "voice_design" or (cfg.model_type == "custom_voice"
                                                              and cfg.honours_instruct),
                voice_clone=cfg.model_type == "base")
