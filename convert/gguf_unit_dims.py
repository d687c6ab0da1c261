"""Unit dimensions that ggml's GGUF writer dropped, restored from the shapes the model expects.

ggml's writer (qwentts.cpp's `quantize`, llama.cpp's tools) stores `n_dims = ggml_n_dims(t)`: trailing
size-1 dimensions in ggml's ne order, the leading size-1 axes of the Hugging Face shape, are left out.
The codec's last conv (official (1, C, 7), ne [7, C, 1]) then arrives as [7, C]. gguf-py keeps them.

Each tensor's stored shape is tried against the module parameter it fills (modules built lazily from the
rebuilt config: nothing is allocated). Only when it does not fit is a shape with size-1 axes put back in
front tried: same element count, only unit axes differ. Anything else is left for the strict check,
and a shape the converters cannot even read is an error naming the tensor.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
from mlx.utils import tree_flatten

from .gguf_dialects import FLOAT_TYPES, GGUFError, GGUFFile, Tensor
from mlx_qwen_tts.loading import map_hf_codec_weights, map_hf_model_weights

MAX_DIMS = 4  # GGML_MAX_DIMS
_PAIRED = ("embedding_sum", "embed_sum", "cluster_usage")  # codebook halves convert only together


def _params(module, prefix: str) -> dict:
    return {prefix + k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}


def _strip(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def talker_groups(config) -> list:
    """(official prefix, official -> our names and layouts, our name -> expected shape) per talker module."""
    from mlx_qwen_tts.models.code_predictor import CodePredictor
    from mlx_qwen_tts.models.speaker_encoder import SpeakerEncoder, convert_speaker_encoder_weights
    from mlx_qwen_tts.models.talker import Talker

    groups = [("talker.", map_hf_model_weights,
               {**_params(Talker(config), "talker."), **_params(CodePredictor(config), "code_predictor.")})]
    if config.model_type == "base":
        groups.append(("speaker_encoder.", lambda w: {
            f"speaker_encoder.{k}": v for k, v in
            convert_speaker_encoder_weights(_strip(w, "speaker_encoder.")).items()},
            _params(SpeakerEncoder(config.speaker_encoder), "speaker_encoder.")))
    return groups


def codec_groups(config) -> list:
    from mlx_qwen_tts.models.codec import CodecDecoder
    from mlx_qwen_tts.models.codec_encoder import CodecEncoder, MimiEncoderArgs, convert_codec_encoder_weights

    st = config.speech_tokenizer
    groups = [("decoder.", map_hf_codec_weights, _params(CodecDecoder(st.decoder), "codec."))]
    if config.model_type == "base" and st.encoder is not None:
        args = MimiEncoderArgs.from_config(st.encoder.raw, st.encoder_valid_num_quantizers)
        groups.append(("encoder.", lambda w: {
            f"codec_encoder.{k}": v for k, v in convert_codec_encoder_weights(_strip(w, "encoder."), args).items()},
            _params(CodecEncoder(args), "codec_encoder.")))
    return groups


def _reshaped(t: Tensor, shape: tuple) -> Tensor:
    # float data have the tensor's shape; block types are [*rows, bytes per row]
    data = t.data.reshape(shape) if t.kind in FLOAT_TYPES else t.data.reshape(*shape[:-1], t.data.shape[-1])
    return dataclasses.replace(t, shape=shape, data=data)


def restore_unit_dims(f: GGUFFile, groups: list) -> None:
    """Put back the unit axes ggml dropped from `f`'s tensors, in place (f.tensors and f.shapes)."""
    def fits(official, convert, expected, shape):
        try:
            got = convert({official: mx.zeros(shape)})
        except (ValueError, IndexError) as e:
            return e
        return bool(got) and all(expected.get(k) == tuple(v.shape) for k, v in got.items())

    for i, (t, official) in enumerate(f.tensors):
        group = next((g for g in groups if official.startswith(g[0])), None)
        if group is None or official.endswith(_PAIRED):
            continue
        _, convert, expected = group
        stored = fits(official, convert, expected, t.shape)
        if stored is True:
            continue
        for n in range(1, MAX_DIMS - len(t.shape) + 1):
            shape = (1,) * n + tuple(t.shape)
            if fits(official, convert, expected, shape) is True:
                f.tensors[i] = (_reshaped(t, shape), official)
                f.shapes[official] = shape
                break
        else:
            if isinstance(stored, Exception):
                raise GGUFError(f"{f.path}: tensor {t.name} has shape {tuple(t.shape)}, which does not fit "
                                f"{official} ({stored})") from None
