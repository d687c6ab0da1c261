"""Loading a model folder into a ready `Model`.

Two folder kinds, told apart by the format marker in config.json (never by shapes):
- a converted MLX folder (written by `convert`): weights already under our names and layouts,
  possibly quantized;
- a Hugging Face snapshot (the released layout): mapped to our names in memory with the same
  explicit key tables the converter uses. Every key must be known, every parameter filled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_qwen_tts.models.code_predictor import CodePredictor
from mlx_qwen_tts.models.fused import fuse_projections
from mlx_qwen_tts.config import ModelConfig, load_model_config
from mlx_qwen_tts.quantize import apply_quantization
from mlx_qwen_tts.models.talker import Talker
from mlx_qwen_tts.tokenizer import TextTokenizer

FORMAT_KEY = "mlx_qwen_tts"
FORMAT_VERSION = 1

# Official prefix -> our prefix. Order matters: longer prefixes first.
HF_PREFIXES = [
    ("talker.code_predictor.model.codec_embedding.", "code_predictor.codec_embedding."),
    ("talker.code_predictor.model.layers.", "code_predictor.layers."),
    ("talker.code_predictor.model.norm.", "code_predictor.norm."),
    ("talker.code_predictor.lm_head.", "code_predictor.lm_head."),
    ("talker.code_predictor.small_to_mtp_projection.", "code_predictor.small_to_mtp_projection."),
    ("talker.model.text_embedding.", "talker.text_embedding."),
    ("talker.model.codec_embedding.", "talker.codec_embedding."),
    ("talker.model.layers.", "talker.layers."),
    ("talker.model.norm.", "talker.norm."),
    ("talker.text_projection.", "talker.text_projection."),
    ("talker.codec_head.", "talker.codec_head."),
    ("speaker_encoder.", "speaker_encoder."),
]


@dataclass
class Model:
    """Everything synthesis needs. Modules hold weights only; generation state is passed in."""

    config: ModelConfig
    talker: Talker
    code_predictor: CodePredictor
    tokenizer: TextTokenizer
    codec: object | None = None
    extra_weights: dict = field(default_factory=dict, repr=False)  # Base only: speaker_encoder.*, codec_encoder.*
    path: Path | None = None
    quantization: dict | None = None
    frame_step: object = field(default=None, repr=False)  # the one compiled frame step (engine/step.py)

    def __post_init__(self):
        from mlx_qwen_tts.engine.step import FrameStep

        fuse_projections(self.talker.layers)  # fewer kernels per frame, same results (models/fused.py)
        fuse_projections(self.code_predictor.layers)
        self.frame_step = FrameStep(self)

    @property
    def sample_rate(self) -> int:
        return self.config.speech_tokenizer.sample_rate


def map_hf_model_weights(weights: dict, where="the checkpoint") -> dict:
    """Official `model.safetensors` keys -> our names; unknown keys are an error naming `where`."""
    out, unknown = {}, []
    for key, value in weights.items():
        for prefix, ours in HF_PREFIXES:
            if key.startswith(prefix):
                out[ours + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected weights in {where}: {', '.join(sorted(unknown)[:8])}"
                         + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return out


def map_hf_codec_weights(weights: dict, where="the speech tokenizer") -> dict:
    """Official `speech_tokenizer/model.safetensors` -> `codec.*` (decoder, MLX layout, float32)
    and `codec_encoder.*` (the voice-clone encoder, kept as stored)."""
    from mlx_qwen_tts.models.codec import convert_decoder_weights

    decoder = {k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")}
    encoder = {f"codec_encoder.{k[len('encoder.'):]}": v for k, v in weights.items() if k.startswith("encoder.")}
    unknown = [k for k in weights if not k.startswith(("decoder.", "encoder."))]
    if unknown:
        raise ValueError(f"unexpected weights in {where}: {', '.join(sorted(unknown)[:8])}")
    converted = convert_decoder_weights({f"decoder.{k}": v for k, v in decoder.items()})
    return {**{f"codec.{k}": v.astype(mx.float32) for k, v in converted.items()}, **encoder}


def read_safetensors(path: Path) -> dict:
    from mlx_qwen_tts.paths import path_problem

    problem = path_problem(path)
    if problem:
        raise FileNotFoundError(f"{path} is missing: not a complete Qwen3-TTS model folder"
                                if problem == "does not exist" else f"{path} {problem}")
    try:
        return mx.load(str(path))
    except Exception as e:  # MLX raises RuntimeError/ValueError for corrupt or truncated files
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def default_dtype() -> mx.Dtype:
    # bf16 matmuls are slow and inexact on MLX's CPU backend; GPUs run the released bf16 weights.
    return mx.bfloat16 if mx.default_device() == mx.gpu else mx.float32


def _take(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def load_strict(module, weights: dict, dtype, what: str):
    """Fill every parameter of `module` (floats cast to `dtype`, quantization scales kept);
    a missing or unexpected name is a ValueError that says `what` was being loaded."""
    items = [(k, v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith((".scales", ".biases"))
              else v) for k, v in weights.items()]
    try:
        module.load_weights(items, strict=True)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    mx.eval(module.parameters())
    return module


def check_shapes(module, shapes: dict, what: str) -> None:
    """Parameter names -> shapes against the parameters `module` declares (all present, all fitting);
    building a module allocates nothing until evaluated, so this costs no weight memory."""
    expected = {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}
    problems = [f"{k} has shape {s}, but the model needs {expected[k]}"
                for k, s in shapes.items() if k in expected and s != expected[k]]
    problems += [f"unexpected weight {k}" for k in shapes if k not in expected]
    missing = sorted(set(expected) - set(shapes))
    if missing:
        problems.append(f"missing weights {', '.join(missing[:6])}" +
                        (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems[:4])}")


def check_encoders(config: ModelConfig, weights: dict, where, with_codec: bool) -> None:
    """Validate the voice-clone encoders' weights (names and shapes, lazily: nothing is read) against
    the modules the config builds, so that a broken file fails at load, not at `voice create`."""
    from mlx_qwen_tts.models.codec_encoder import CodecEncoder, MimiEncoderArgs, convert_codec_encoder_weights
    from mlx_qwen_tts.models.speaker_encoder import SpeakerEncoder, convert_speaker_encoder_weights

    def converted(prefix, convert, what):
        try:
            return {k: tuple(v.shape) for k, v in convert(_take(weights, prefix)).items()}
        except ValueError as e:
            raise ValueError(f"{where}: {what} ({prefix}*): {e}") from None

    speaker = converted("speaker_encoder.", convert_speaker_encoder_weights, "speaker encoder")
    if config.speaker_encoder is not None:
        check_shapes(SpeakerEncoder(config.speaker_encoder), speaker, f"{where}: speaker encoder (speaker_encoder)")
    st = config.speech_tokenizer
    present = any(k.startswith("codec_encoder.") for k in weights)
    if not (present or (with_codec and config.model_type == "base")):
        return  # a snapshot loaded without its codec: voice.py reads the encoder on first use
    if st.encoder is None:
        if config.model_type == "base":
            raise ValueError(f"{where}: speech_tokenizer/config.json has no encoder_config")
        return
    args = MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
    codec = converted("codec_encoder.", lambda w: convert_codec_encoder_weights(w, args), "codec encoder")
    check_shapes(CodecEncoder(args), codec, f"{where}: codec encoder (codec_encoder)")


def _load_module(module, prefix, weights, quantization, dtype, where):
    apply_quantization(module, prefix, weights, quantization)
    load_strict(module, _take(weights, prefix), dtype, f"{where} ({prefix.rstrip('.')})")


def build_model(config: ModelConfig, weights: dict, folder: Path, *, quantization=None, dtype=None,
                codec=True) -> Model:
    """Modules from our-named weights; strict: missing or unexpected keys are an error."""
    dtype = dtype or default_dtype()
    known = ("talker.", "code_predictor.", "codec.", "speaker_encoder.", "codec_encoder.")
    unknown = [k for k in weights if not k.startswith(known)]
    if unknown:
        raise ValueError(f"{folder}: unexpected weights {', '.join(sorted(unknown)[:8])}")
    talker, predictor = Talker(config), CodePredictor(config)
    _load_module(talker, "talker.", weights, quantization, dtype, folder)
    _load_module(predictor, "code_predictor.", weights, quantization, dtype, folder)
    extra = {k: v for k, v in weights.items() if k.startswith(("speaker_encoder.", "codec_encoder."))}
    check_encoders(config, extra, folder, with_codec=any(k.startswith("codec.") for k in weights))
    if config.model_type != "base":
        extra = {}  # folders converted before 0.1 carry encoders only voice cloning uses: validated, dropped
    elif not any(k.startswith("speaker_encoder.") for k in extra):
        raise ValueError(f"{folder}: this Base model has no speaker encoder weights (speaker_encoder.*)")
    model = Model(config=config, talker=talker, code_predictor=predictor, tokenizer=TextTokenizer(folder),
                  extra_weights=extra, path=folder, quantization=quantization)
    if codec:
        from mlx_qwen_tts.models.codec import CodecDecoder

        model.codec = CodecDecoder(config.speech_tokenizer.decoder)
        _load_module(model.codec, "codec.", weights, None, mx.float32, folder)  # the codec stays float32
    return model


def is_converted(folder: Path) -> bool:
    return converted_meta(folder) is not None


DTYPE_NAMES = ("float32", "bfloat16", "float16")


def converted_meta(folder: Path) -> dict | None:
    """The converted-folder marker in config.json (None for a Hugging Face snapshot), checked field by field."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or FORMAT_KEY not in data:
        return None
    meta = data[FORMAT_KEY]
    version = meta.get("format_version", 0) if isinstance(meta, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{cfg}: {FORMAT_KEY} must be an object with an integer format_version, got {meta!r:.80}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{folder} was converted by a newer mlx-qwen-tts (format {version}); upgrade mlx-qwen-tts")
    if meta.get("dtype") not in (None, *DTYPE_NAMES):
        raise ValueError(f"{cfg}: {FORMAT_KEY}.dtype {meta['dtype']!r:.40} is not one of {', '.join(DTYPE_NAMES)}")
    q = meta.get("quantization")
    specs = [q, *(q.get("layers") or {}).values()] if isinstance(q, dict) and isinstance(q.get("layers", {}),
                                                                                          dict) else [q]
    if q is not None and not all(isinstance(p, dict) and p.get("group_size") in (32, 64, 128)
                                 and p.get("bits") in (2, 3, 4, 5, 6, 8) for p in specs):
        raise ValueError(f"{cfg}: {FORMAT_KEY}.quantization {q!r:.80} needs group_size 32/64/128 and bits 2-8")
    return meta


def read_converted_weights(folder: Path) -> dict:
    """All tensors of a converted folder: model.safetensors, or the shards its index names (and exactly
    the tensors the index lists)."""
    index = folder / "model.safetensors.index.json"
    weight_map = None
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{index} is not a readable index: {e}") from None
        if not (isinstance(weight_map, dict) and weight_map and
                all(isinstance(v, str) and v == Path(v).name and v.endswith(".safetensors")
                    for v in weight_map.values())):
            raise ValueError(f"{index}: weight_map must map tensor names to .safetensors files in this folder")
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        part = read_safetensors(folder / name)
        stray = [k for k in part if weight_map is not None and weight_map.get(k) != name]
        if stray:
            raise ValueError(f"{folder / name} holds {stray[0]}, which {index.name} does not place there")
        weights.update(part)
    if weight_map is not None and len(weights) != len(weight_map):
        missing = sorted(set(weight_map) - set(weights))
        raise ValueError(f"{index} lists {missing[0]}, which no shard holds")
    return weights


def load_model(path: str | Path, *, dtype: mx.Dtype | None = None, codec: bool = True) -> Model:
    """Load a converted MLX folder, or a Hugging Face snapshot folder (converted in memory)."""
    folder = Path(path)
    config = load_model_config(folder)
    meta = converted_meta(folder)
    if meta is not None:
        weights = read_converted_weights(folder)
        if dtype is None and meta.get("dtype"):
            dtype = getattr(mx, meta["dtype"])
        return build_model(config, weights, folder, quantization=meta.get("quantization"), dtype=dtype,
                           codec=codec)
    path = folder / "model.safetensors"
    weights = map_hf_model_weights(read_safetensors(path), path)
    if codec:
        path = folder / "speech_tokenizer" / "model.safetensors"
        weights.update(map_hf_codec_weights(read_safetensors(path), path))
    return build_model(config, weights, folder, dtype=dtype, codec=codec)
