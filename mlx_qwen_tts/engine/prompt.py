"""Prefill layout of the talker (qwen3-tts-architecture.md §2.4).

Every prefill position is a text-track vector P(id) plus a codec-track vector C(id):
  [instruct: P only] [role: P only] [control block: tts_pad.. tts_bos + codec prefix, speaker, pad]
  then the text part, which depends on the text mode (non-streaming: all text up front;
  streaming: one text token per generated frame through `trailing`) or on in-context cloning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.config import ModelConfig

# Text that goes into every prefill whole (never split), so it has a limit. An instruct is a
# sentence or two describing a voice; a transcript covers at most 30 s of reference audio
# (voice.MAX_SECONDS), and even fast speech stays under 25 characters a second.
MAX_INSTRUCT_CHARS = 1000
MAX_REF_TEXT_CHARS = 1000
# The prompt's fixed part: chat markers, the control block (codec prefix, speaker, pad, bos), tts_eos.
PROMPT_OVERHEAD_TOKENS = 24


@dataclass
class VoiceClone:
    """A Base-model voice: the speaker x-vector, plus reference codes and text for in-context mode."""

    xvector: mx.array  # [H]
    ref_codes: mx.array | None = None  # [T_ref, 16]
    ref_text: str | None = None


@dataclass
class Prompt:
    embeds: mx.array  # [1, L, H] prefill input
    trailing: mx.array  # [1, T, H] text-track vectors fed one per generated frame
    tts_pad: mx.array  # [1, 1, H] text-track filler once `trailing` is used up
    text_tokens: int  # target-text token count (sizes the runaway guard)
    ref_frames: int = 0  # in-context reference frames (their audio is trimmed after decoding)


def check_text_limit(name: str, text: str | None, limit: int) -> None:
    """A one-line error for text longer than `limit` characters, before any model work."""
    if text is not None and len(text) > limit:
        raise ValueError(f"{name} is too long ({len(text):,} characters); the limit is {limit:,}")


def check_positions(cfg: ModelConfig, tokens: int, estimate: bool = False) -> None:
    limit = cfg.talker.max_position_embeddings
    if tokens > limit:
        raise ValueError(f"the prompt is {'up to ' if estimate else ''}{tokens:,} tokens; this model's talker "
                         f"takes at most {limit:,} (max_position_embeddings): shorten the instruct or reference, "
                         "or use smaller segments")


def resolve_voice(cfg: ModelConfig, voice: str | None) -> str | None:
    if cfg.model_type != "custom_voice":
        if voice:
            raise ValueError(f"this {cfg.model_type} model has no built-in voices; "
                             + ("describe the voice with instruct" if cfg.model_type == "voice_design"
                                else "clone one with a reference recording"))
        return None
    if voice is None:
        return cfg.speaker_names[0]
    name = voice.lower()
    if name not in cfg.speakers:
        raise ValueError(f"unknown voice {voice!r}; this model has: {', '.join(cfg.speaker_names)}")
    return name


def resolve_language(cfg: ModelConfig, language: str | None) -> str:
    name = (language or "auto").lower()
    if name != "auto" and name not in cfg.languages:
        raise ValueError(f"unknown language {language!r}; use auto or one of: {', '.join(cfg.languages)}")
    return name


def codec_prefix(cfg: ModelConfig, language: str, voice: str | None) -> list[int]:
    ids = cfg.ids
    lang_id = None if language == "auto" else cfg.languages[language]
    dialect = cfg.speaker_dialects.get(voice) if voice else None
    if language in ("chinese", "auto") and dialect:
        lang_id = cfg.languages[dialect]  # dylan / eric speak their dialect
    if lang_id is None:
        return [ids.codec_nothink, ids.codec_think_bos, ids.codec_think_eos]
    return [ids.codec_think, ids.codec_think_bos, lang_id, ids.codec_think_eos]


# The chat templates; their markers are control tokens, the {fields} are user text (never markup).
TEXT_TEMPLATE = "<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"
INSTRUCT_TEMPLATE = "<|im_start|>user\n{instruct}<|im_end|>\n"
REF_TEMPLATE = "<|im_start|>assistant\n{text}<|im_end|>\n"


def _ids(values) -> mx.array:
    return mx.array(np.asarray(values, dtype=np.int32))[None]


def build_prompt(model, text: str | list[int], *, voice: str | None = None, language: str = "auto",
                 instruct: str | None = None, non_streaming_text: bool = True,
                 clone: VoiceClone | None = None, open_text: bool = False) -> Prompt:
    """`text` is the text, or its token ids (live input, engine/live.py). `open_text` (streaming
    layout only): more text follows through `trailing`, so the text part has no tts_eos yet."""
    cfg: ModelConfig = model.config
    talker, tok, ids = model.talker, model.tokenizer, cfg.ids
    if not text or (isinstance(text, str) and not text.strip()):
        raise ValueError("text is empty: nothing to say")
    check_text_limit("instruct", instruct, MAX_INSTRUCT_CHARS)
    if clone is not None and cfg.model_type != "base":
        raise ValueError(f"voice cloning needs a Base model; this one is {cfg.model_type}")
    if clone is None and cfg.model_type == "base":
        raise ValueError("this Base model needs a reference voice (ref_audio or voice_file) to clone")
    voice = resolve_voice(cfg, voice)
    language = resolve_language(cfg, language)
    if instruct and cfg.model_type != "voice_design" and not (cfg.model_type == "custom_voice"
                                                               and cfg.honours_instruct):
        warnings.warn(f"this {cfg.model_size} {cfg.model_type} model ignores instruct (as the official one does)",
                      stacklevel=2)
        instruct = None

    text_ids = tok.encode_template(TEXT_TEMPLATE, text=text if isinstance(text, str) else "")
    role, body = text_ids[:3], (text_ids[3:-5] if isinstance(text, str) else list(text))
    if not body:
        raise ValueError("text produced no tokens")
    P, C = talker.embed_text, talker.codec_embedding
    tts_bos, tts_eos, tts_pad = mx.split(P(_ids([ids.tts_bos, ids.tts_eos, ids.tts_pad])), 3, axis=1)

    codec = C(_ids(codec_prefix(cfg, language, voice)))
    if clone is not None:
        codec = mx.concatenate([codec, clone.xvector.reshape(1, 1, -1).astype(codec.dtype)], axis=1)
    elif voice is not None:
        codec = mx.concatenate([codec, C(_ids([cfg.speakers[voice]]))], axis=1)
    codec = mx.concatenate([codec, C(_ids([ids.codec_pad, ids.codec_bos]))], axis=1)
    n = codec.shape[1]
    text_track = mx.concatenate([mx.repeat(tts_pad, n - 2, axis=1), tts_bos], axis=1)
    parts = [P(_ids(role)), text_track + codec[:, :-1]]
    if instruct:
        parts.insert(0, P(_ids(tok.encode_template(INSTRUCT_TEMPLATE, instruct=instruct))))

    ref_frames = 0
    if clone is not None and clone.ref_codes is not None:
        if not clone.ref_text:
            raise ValueError("in-context cloning needs the reference text (ref_text)")
        check_text_limit("ref_text", clone.ref_text, MAX_REF_TEXT_CHARS)
        ref_ids = tok.encode_template(REF_TEMPLATE, text=clone.ref_text)[3:-2]
        part, trailing = _icl_part(model, ref_ids + body, clone.ref_codes, tts_eos, tts_pad, non_streaming_text,
                                   open_text)
        parts.append(part)
        ref_frames = clone.ref_codes.shape[0]
    elif non_streaming_text:
        pad = C(_ids([ids.codec_pad] * (len(body) + 1)))
        parts += [mx.concatenate([P(_ids(body)), tts_eos], axis=1) + pad, tts_pad + codec[:, -1:]]
        trailing = tts_pad
    else:
        parts.append(P(_ids(body[:1])) + codec[:, -1:])
        vectors = ([P(_ids(body[1:]))] if len(body) > 1 else []) + ([] if open_text else [tts_eos])
        trailing = mx.concatenate(vectors, axis=1) if vectors else tts_eos[:, :0]
    embeds = mx.concatenate(parts, axis=1)
    check_positions(cfg, embeds.shape[1])
    return Prompt(embeds=embeds, trailing=trailing, tts_pad=tts_pad,
                  text_tokens=len(body), ref_frames=ref_frames)


def codes_embedding(model, codes: mx.array) -> mx.array:
    """Sum of the 16 group embeddings per frame: codes [T, 16] -> [1, T, H]."""
    out = model.talker.codec_embedding(codes[:, 0])
    for g, table in enumerate(model.code_predictor.codec_embedding, start=1):
        out = out + table(codes[:, g])
    return out[None]


def _icl_part(model, text_ids, ref_codes, tts_eos, tts_pad, non_streaming_text, open_text=False):
    """In-context cloning: reference + target text against codec bos + reference frames. Open
    (live) text must already cover the codec part (engine/live.py waits for that much)."""
    P, C, ids = model.talker.embed_text, model.talker.codec_embedding, model.config.ids
    text = P(_ids(text_ids)) if open_text else mx.concatenate([P(_ids(text_ids)), tts_eos], axis=1)
    codec = mx.concatenate([C(_ids([ids.codec_bos])), codes_embedding(model, ref_codes)], axis=1)
    n_text, n_codec = text.shape[1], codec.shape[1]
    if non_streaming_text:
        part = mx.concatenate([text + C(_ids([ids.codec_pad] * n_text)), codec + tts_pad], axis=1)
        return part, tts_pad
    if n_text > n_codec or open_text:
        return text[:, :n_codec] + codec, text[:, n_codec:]
    text = mx.concatenate([text, mx.repeat(tts_pad, n_codec - n_text, axis=1)], axis=1)
    return text + codec, tts_pad
