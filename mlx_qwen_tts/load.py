"""Loading a model folder into a ready `Model`.

A Hugging Face snapshot (the released layout) is mapped to our module names in memory with an
explicit key table: every key must be known, every parameter must be filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from mlx_qwen_tts.code_predictor import CodePredictor
from mlx_qwen_tts.config import ModelConfig, load_model_config
from mlx_qwen_tts.talker import Talker
from mlx_qwen_tts.tokenizer import TextTokenizer

# Official prefix -> (our module, our prefix). Order matters: longer prefixes first.
HF_PREFIXES = [
    ("talker.code_predictor.model.codec_embedding.", "code_predictor", "codec_embedding."),
    ("talker.code_predictor.model.layers.", "code_predictor", "layers."),
    ("talker.code_predictor.model.norm.", "code_predictor", "norm."),
    ("talker.code_predictor.lm_head.", "code_predictor", "lm_head."),
    ("talker.code_predictor.small_to_mtp_projection.", "code_predictor", "small_to_mtp_projection."),
    ("talker.model.text_embedding.", "talker", "text_embedding."),
    ("talker.model.codec_embedding.", "talker", "codec_embedding."),
    ("talker.model.layers.", "talker", "layers."),
    ("talker.model.norm.", "talker", "norm."),
    ("talker.text_projection.", "talker", "text_projection."),
    ("talker.codec_head.", "talker", "codec_head."),
    ("speaker_encoder.", "speaker_encoder", ""),
]


@dataclass
class Model:
    """Everything synthesis needs. Modules hold weights only; generation state is passed in."""

    config: ModelConfig
    talker: Talker
    code_predictor: CodePredictor
    tokenizer: TextTokenizer
    codec: object | None = None
    speaker_encoder_weights: dict | None = None
    path: Path | None = None
    compiled: dict = field(default_factory=dict, repr=False)  # traced per-frame graphs, by sampler setting

    @property
    def sample_rate(self) -> int:
        return self.config.speech_tokenizer.sample_rate


def split_hf_weights(weights: dict) -> dict[str, dict]:
    """Group official `model.safetensors` keys by our module; unknown keys are an error."""
    groups: dict[str, dict] = {"talker": {}, "code_predictor": {}, "speaker_encoder": {}}
    unknown = []
    for key, value in weights.items():
        for prefix, module, ours in HF_PREFIXES:
            if key.startswith(prefix):
                groups[module][ours + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected weights in the checkpoint: {', '.join(sorted(unknown)[:8])}"
                         + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return groups


def default_dtype() -> mx.Dtype:
    # bf16 matmuls are slow and inexact on MLX's CPU backend; GPUs run the released bf16 weights.
    return mx.bfloat16 if mx.default_device() == mx.gpu else mx.float32


def _load_module(module, weights: dict, dtype, what: str):
    items = [(k, v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()]
    try:
        module.load_weights(items, strict=True)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    mx.eval(module.parameters())


def load_model(path: str | Path, *, dtype: mx.Dtype | None = None, codec: bool = True) -> Model:
    """Load a Hugging Face Qwen3-TTS snapshot folder (converted in memory)."""
    folder = Path(path)
    config = load_model_config(folder)
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} is missing: not a complete Qwen3-TTS model folder")
    try:
        raw = mx.load(str(weights_file))
    except Exception as e:  # MLX raises RuntimeError/ValueError for corrupt files
        raise ValueError(f"{weights_file} is not a readable safetensors file: {e}") from None
    groups = split_hf_weights(raw)
    dtype = dtype or default_dtype()
    talker, predictor = Talker(config), CodePredictor(config)
    _load_module(talker, groups["talker"], dtype, f"{weights_file} (talker)")
    _load_module(predictor, groups["code_predictor"], dtype, f"{weights_file} (code predictor)")
    model = Model(config=config, talker=talker, code_predictor=predictor, tokenizer=TextTokenizer(folder),
                  speaker_encoder_weights=groups["speaker_encoder"] or None, path=folder)
    if codec:
        from mlx_qwen_tts.codec import load_codec_decoder

        model.codec = load_codec_decoder(folder / "speech_tokenizer", config.speech_tokenizer.decoder)
    return model
