"""Quality gate for quantized models: teacher-forced comparison with the float source.

For fixed prompts the float model generates reference codes (greedy). Both models are then
fed exactly those codes (teacher forcing) and their talker and code-predictor distributions
are compared at every step: mean KL(float || quantized), top-1 agreement and top-5 agreement
(the float model's choice within the quantized model's five best). The quantized model's own
argmax codes under teacher forcing are decoded and compared with the float codes' audio (SNR).

Thresholds: mean KL <= 0.02 and top-5 >= 97 % (a peer's published gate for 8-bit Qwen3-TTS);
top-1 >= 90 % because near-tied random choices legitimately flip. SNR is reported, not gated:
one flipped code changes a whole 80 ms frame, so SNR measures tie-breaking more than accuracy.

The reference must be the float source of the quantized model: `check_reference` compares a
fingerprint (model type and size, the shape-giving config, every talker and code-predictor tensor's
logical shape) and refuses a quantized reference. Base models have no built-in voice: both models get
the same x-vector, the float model's speaker encoder run on a fixed synthetic tone (`gate_voice`), so
the gate compares the talkers under a realistic speaker embedding without needing a recording.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_qwen_tts.engine.generate import GenerationSettings, generate_frames
from mlx_qwen_tts.engine.prompt import build_prompt, codes_embedding
from mlx_qwen_tts.engine.sampling import code0_bias
from mlx_qwen_tts.models.fused import fused_shapes

GATE_PROMPTS = [("Hello! This is a short test of the quantized voice.", "english"),
                ("The quick brown fox jumps over the lazy dog, twice.", "english"),
                ("你好，欢迎使用语音合成。", "chinese")]
THRESHOLDS = {"kl_max": 0.02, "top1_min": 0.90, "top5_min": 0.97}


@dataclass
class GateReport:
    talker_kl: float
    talker_top1: float
    talker_top5: float
    predictor_kl: float
    predictor_top1: float
    predictor_top5: float
    snr_db: float
    frames: int

    @property
    def passed(self) -> bool:
        t = THRESHOLDS
        return (max(self.talker_kl, self.predictor_kl) <= t["kl_max"]
                and min(self.talker_top1, self.predictor_top1) >= t["top1_min"]
                and min(self.talker_top5, self.predictor_top5) >= t["top5_min"])

    def to_dict(self) -> dict:
        """Strict-JSON values: snr_db is "inf" when the decoded audio is identical (no noise), None
        when no audio was decoded (a model without its codec)."""
        snr = "inf" if self.snr_db == float("inf") else self.snr_db if np.isfinite(self.snr_db) else None
        return {**asdict(self), "snr_db": snr, "passed": self.passed, "thresholds": THRESHOLDS}


def teacher_forced_logits(model, prompt, codes: mx.array):
    """Talker logits predicting each frame's code 0 [T, V] and predictor logits [T, 15, 2048]."""
    talker, predictor = model.talker, model.code_predictor
    frames = codes_embedding(model, codes)  # [1, T, H]
    T = codes.shape[0]
    text = mx.concatenate([prompt.trailing, mx.repeat(prompt.tts_pad, max(T - prompt.trailing.shape[1], 0), 1)],
                          axis=1)[:, :T]
    x = mx.concatenate([prompt.embeds, (frames + text)[:, :-1]], axis=1)
    dtype = talker.norm.weight.dtype
    hidden = talker(x.astype(dtype), [None] * len(talker.layers))  # the real forward pass, every position
    hidden = hidden[:, prompt.embeds.shape[1] - 1:]  # [1, T, H]: position k predicts frame k
    talker_logits = talker.codec_head(hidden)[0]
    code_vectors = [talker.codec_embedding(codes[:, 0])] + [
        table(codes[:, g]) for g, table in enumerate(predictor.codec_embedding[:-1], start=1)]
    seq = mx.concatenate([hidden[0][:, None]] + [v[:, None] for v in code_vectors], axis=1)  # [T, 16, H]
    h = predictor(seq.astype(dtype), [None] * len(predictor.layers))
    pred = mx.stack([head(h[:, g + 1]) for g, head in enumerate(predictor.lm_head)], axis=1)
    return talker_logits.astype(mx.float32), pred.astype(mx.float32)


def _compare(ref: np.ndarray, test: np.ndarray):
    """Mean KL(ref || test), top-1 and top-5 agreement over the leading axes."""
    ref = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    test = test.reshape(-1, test.shape[-1]).astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(test)
    ref, test = np.where(finite, ref, -1e30), np.where(finite, test, -1e30)
    lp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lq = test - np.logaddexp.reduce(test, axis=-1, keepdims=True)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    top = np.argmax(ref, axis=-1)
    top5 = np.argsort(-test, axis=-1)[:, :5]
    return float(kl.mean()), float(np.mean(np.argmax(test, -1) == top)), float(np.mean((top5 == top[:, None]).any(-1)))


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((ref - test) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


def _describe(model) -> str:
    cfg = model.config
    bits = f"{model.quantization['bits']}-bit " if model.quantization else "float "
    return f"{bits}{cfg.model_size} {cfg.model_type} model {model.path}"


def fingerprint(model) -> dict:
    """What a model's float source shares with it: the shape-giving config and, for every talker and
    code-predictor tensor, its logical shape (a quantized weight counts as the matrix it packs)."""
    cfg = model.config
    shapes = {}
    for prefix, module in (("talker.", model.talker), ("code_predictor.", model.code_predictor)):
        packed = {name: m.bits for name, m in module.named_modules()
                  if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
        for name, value in tree_flatten(module.parameters()):
            owner, _, leaf = name.rpartition(".")
            if owner in packed and leaf in ("scales", "biases"):
                continue
            shape = tuple(value.shape)
            if owner in packed and leaf == "weight":
                shape = (*shape[:-1], shape[-1] * 32 // packed[owner])
            shapes[prefix + name] = shape
    return {"model_type": cfg.model_type, "model_size": cfg.model_size, "talker": cfg.talker,
            "code_predictor": cfg.code_predictor, "text": (cfg.text_vocab_size, cfg.text_hidden_size),
            "ids": cfg.ids, "speakers": cfg.speakers, "languages": cfg.languages,
            "shapes": fused_shapes(shapes)}  # layers left unfused (mixed quantization) compare equal


def check_reference(float_model, quant_model) -> None:
    """A one-line ValueError unless `float_model` is the unquantized source of `quant_model`."""
    if float_model.quantization:
        raise ValueError(f"the reference {float_model.path} is quantized "
                         f"({float_model.quantization['bits']}-bit); give the float model "
                         f"{quant_model.path} was converted from")
    a, b = fingerprint(float_model), fingerprint(quant_model)
    hint = f"the reference is a {_describe(float_model)}, but the model checked is a {_describe(quant_model)}"
    if (a["model_type"], a["model_size"]) != (b["model_type"], b["model_size"]):
        raise ValueError(f"{hint}; give the float model it was converted from")
    differ = [k for k in a if k != "shapes" and a[k] != b[k]]
    if differ:
        raise ValueError(f"{hint}, and their configs differ in {', '.join(differ)}; give the float model it "
                         "was converted from")
    sa, sb = a["shapes"], b["shapes"]
    diff = sorted(set(sa) ^ set(sb)) or [k for k in sorted(sa) if sa[k] != sb[k]]
    if diff:
        k = diff[0]
        raise ValueError(f"{hint}, and tensor {k} has shape {sa.get(k, 'none')} in the reference but "
                         f"{sb.get(k, 'none')} in {quant_model.path}; give the float model it was converted from")


GATE_TONE_HZ, GATE_TONE_SECONDS = 180.0, 3.0


def gate_voice(float_model):
    """Base models: an x-vector-only clone from the float model's speaker encoder on a synthetic voiced
    tone (a 180 Hz harmonic series with slow vibrato), the same for both models of the pair."""
    from mlx_qwen_tts.voice import SAMPLE_RATE, make_voice_clone

    t = np.arange(int(GATE_TONE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * GATE_TONE_HZ * (t + 0.02 * np.sin(2 * np.pi * 5 * t) / (2 * np.pi * 5))
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    wave = (0.3 * wave / np.abs(wave).max()).astype(np.float32)
    return make_voice_clone(float_model, (wave, SAMPLE_RATE))


def quality_gate(float_model, quant_model, *, frames: int = 40, voice=None) -> GateReport:
    """Teacher-forced comparison of `quant_model` with `float_model`, its float source (checked first)."""
    check_reference(float_model, quant_model)
    cfg = float_model.config
    clone = gate_voice(float_model) if cfg.model_type == "base" else None
    suppress, _ = code0_bias(cfg.talker.vocab_size, cfg.ids.codec_eos)
    tl_ref, tl_q, pl_ref, pl_q, audio_ref, audio_q = [], [], [], [], [], []
    settings = GenerationSettings.from_config(cfg.generation, greedy=True, max_frames=frames)
    for text, language in GATE_PROMPTS:
        kwargs = dict(voice=voice, language=language if language in cfg.languages else "auto", clone=clone)
        p_ref = build_prompt(float_model, text, **kwargs)
        codes = mx.stack(list(generate_frames(float_model, p_ref, settings)))
        t_ref, c_ref = teacher_forced_logits(float_model, p_ref, codes)
        t_q, c_q = teacher_forced_logits(quant_model, build_prompt(quant_model, text, **kwargs), codes)
        tl_ref.append(np.array(t_ref + suppress))
        tl_q.append(np.array(t_q + suppress))
        pl_ref.append(np.array(c_ref))
        pl_q.append(np.array(c_q))
        if float_model.codec is not None:
            q_codes = mx.concatenate([mx.argmax(t_q + suppress, -1)[:, None], mx.argmax(c_q, -1)], axis=1)
            q_codes = mx.minimum(q_codes, cfg.codebook_size - 1)  # an EOS choice decodes as a code
            audio_ref.append(np.array(float_model.codec(codes[None])[0][0]))
            audio_q.append(np.array(float_model.codec(q_codes[None].astype(mx.int32))[0][0]))
    talker = _compare(np.concatenate(tl_ref), np.concatenate(tl_q))
    predictor = _compare(np.concatenate(pl_ref), np.concatenate(pl_q))
    snr = _snr_db(np.concatenate(audio_ref), np.concatenate(audio_q)) if audio_ref else float("nan")
    return GateReport(*talker, *predictor, snr_db=snr, frames=sum(len(t) for t in tl_ref))
