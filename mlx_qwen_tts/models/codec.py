"""Speech-tokenizer decoder ("Qwen3-TTS-Tokenizer-12Hz"): codes [B, T, 16] -> 24 kHz audio [B, T*1920].

Stages: split-RVQ dequantisation, causal pre-conv, sliding-window transformer, two ConvNeXt
upsampling stages, and a SnakeBeta conv vocoder (math: shared/docs/qwen3-tts-architecture.md §5.2).
Everything is causal, so `CodecDecoder.__call__` takes and returns a `CodecState`: decoding a
stream chunk by chunk gives the same samples as one pass. `decode` reproduces the official
`Qwen3TTSTokenizerV2Model.decode`, whose 300-frame chunking differs from one pass beyond 300 frames.
The codec always runs in float32. Module names mirror the official ones (`decoder.N` is the vocoder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn

from mlx_qwen_tts.models.codec_layers import (CausalConv1d, CausalConvTranspose1d, ConvNeXtBlock, DecoderBlock,
                                       SnakeBeta, WindowedTransformer, native_conv_default)
from mlx_qwen_tts.config import CodecDecoderConfig


class CodecState(NamedTuple):
    """Everything a decoder call needs from earlier frames (a tuple tree: `mx.eval(wav, state)` works)."""

    offset: int  # frames decoded so far: the RoPE position of the next frame
    pre_conv: mx.array
    kv: tuple  # per transformer layer: (keys, values) of the last window-1 frames
    upsample: tuple  # per stage: (transposed-conv spill or None, ConvNeXt depthwise tail)
    vocoder_in: mx.array
    blocks: tuple  # per DecoderBlock: (spill, three residual-unit tails)
    vocoder_out: mx.array


class ResidualVQ(nn.Module):
    """Decode side of one residual VQ: the sum of one lookup per codebook, then a 1x1 projection."""

    def __init__(self, codebooks: int, codebook_size: int, dim: int, out_dim: int):
        super().__init__()
        self.codebook = mx.zeros((codebooks, codebook_size, dim))
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)

    def __call__(self, codes):
        n, size, dim = self.codebook.shape
        vectors = self.codebook.reshape(n * size, dim)[codes + mx.arange(n) * size]  # [B, T, n, dim]
        return self.output_proj(vectors.sum(axis=2))


class SplitRVQ(nn.Module):
    """Group 0 (semantic) and groups 1.. (acoustic) have separate codebooks and projections."""

    def __init__(self, config: CodecDecoderConfig):
        super().__init__()
        dim, size = config.codebook_dim // 2, config.codebook_size
        self.rvq_first = ResidualVQ(1, size, dim, config.codebook_dim)
        self.rvq_rest = ResidualVQ(config.num_quantizers - 1, size, dim, config.codebook_dim)

    def __call__(self, codes):
        return self.rvq_first(codes[..., :1]) + self.rvq_rest(codes[..., 1:])


class CodecDecoder(nn.Module):
    """`decoder(codes [B, T, groups], state=None) -> (wav [B, T*samples_per_frame], new_state)`."""

    def __init__(self, config: CodecDecoderConfig, native_conv: bool | None = None):
        """native_conv: mx.conv1d (the GPU path) or matmul convolutions (faster on the CPU);
        None chooses by the default device. Both give the same samples."""
        super().__init__()
        c = config
        self.config = config
        self.samples_per_frame = c.samples_per_frame
        self.quantizer = SplitRVQ(c)
        self.pre_conv = CausalConv1d(c.codebook_dim, c.latent_dim, 3)
        self.pre_transformer = WindowedTransformer(c)
        self.upsample = [[CausalConvTranspose1d(c.latent_dim, c.latent_dim, f, f), ConvNeXtBlock(c.latent_dim)]
                         for f in c.upsampling_ratios]
        dims = [c.decoder_dim // 2**i for i in range(len(c.upsample_rates) + 1)]
        self.decoder = [CausalConv1d(c.latent_dim, dims[0], 7),
                        *(DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(c.upsample_rates)),
                        SnakeBeta(dims[-1]), CausalConv1d(dims[-1], 1, 7)]
        native = native_conv_default() if native_conv is None else native_conv
        for layer in self.modules():
            if isinstance(layer, CausalConv1d):
                layer.native = native

    def make_state(self, batch: int = 1) -> CodecState:
        """The state before the first frame (zeros, as the official causal padding)."""
        conv_in, *blocks, _, conv_out = self.decoder
        return CodecState(
            offset=0, pre_conv=self.pre_conv.make_state(batch), kv=self.pre_transformer.make_state(batch),
            upsample=tuple((up.make_state(batch), block.make_state(batch)) for up, block in self.upsample),
            vocoder_in=conv_in.make_state(batch), blocks=tuple(b.make_state(batch) for b in blocks),
            vocoder_out=conv_out.make_state(batch))

    def __call__(self, codes: mx.array, state: CodecState | None = None) -> tuple[mx.array, CodecState]:
        codes = check_codes(codes, self.config)
        batch = codes.shape[0]
        if state is None:
            state = self.make_state(batch)
        elif state.pre_conv.shape[0] != batch:
            raise ValueError(f"the codec state was made for batch {state.pre_conv.shape[0]}, codes have {batch}")
        x, pre_conv = self.pre_conv(self.quantizer(codes), state.pre_conv)
        x, kv = self.pre_transformer(x, state.kv, state.offset)
        upsample = []
        for (up, convnext), (spill, tail) in zip(self.upsample, state.upsample):
            x, spill = up(x, spill)
            x, tail = convnext(x, tail)
            upsample.append((spill, tail))
        conv_in, *blocks, snake, conv_out = self.decoder
        x, vocoder_in = conv_in(x, state.vocoder_in)
        block_states = []
        for block, block_state in zip(blocks, state.blocks):
            x, block_state = block(x, block_state)
            block_states.append(block_state)
        x, vocoder_out = conv_out(snake(x), state.vocoder_out)
        new_state = CodecState(offset=state.offset + codes.shape[1], pre_conv=pre_conv, kv=kv,
                               upsample=tuple(upsample), vocoder_in=vocoder_in, blocks=tuple(block_states),
                               vocoder_out=vocoder_out)
        return mx.clip(x[..., 0], -1.0, 1.0), new_state


def check_codes(codes, config: CodecDecoderConfig) -> mx.array:
    """Codes as an integer mx.array [B, T, groups] with every value a valid codebook index."""
    codes = codes if isinstance(codes, mx.array) else mx.array(codes)
    groups, size = config.num_quantizers, config.codebook_size
    if codes.ndim != 3 or codes.shape[2] != groups or codes.shape[1] == 0:
        raise ValueError(f"codes must have shape [batch, frames >= 1, {groups}], got {tuple(codes.shape)}")
    if not mx.issubdtype(codes.dtype, mx.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if mx.any((codes < 0) | (codes >= size)).item():
        raise ValueError(f"codes must lie in [0, {size}), got values from {mx.min(codes).item()} to "
                         f"{mx.max(codes).item()} (strip padding and control ids before decoding)")
    return codes


def decode(decoder: CodecDecoder, codes, chunk_size: int = 300, left_context: int = 25) -> mx.array:
    """The official `decode()`: chunks of `chunk_size` frames, each decoded from a fresh state with
    up to `left_context` earlier frames whose samples are dropped. codes [B, T, G] or [T, G]; returns
    [B, T*samples_per_frame] or [T*samples_per_frame], evaluated."""
    codes = codes if isinstance(codes, mx.array) else mx.array(codes)
    single = codes.ndim == 2
    codes = check_codes(codes[None] if single else codes, decoder.config)
    frames, pieces = codes.shape[1], []
    for start in range(0, frames, chunk_size):
        context = left_context if start - left_context > 0 else start
        wav, _ = decoder(codes[:, start - context : start + chunk_size])
        pieces.append(wav[:, context * decoder.samples_per_frame :])
        mx.eval(pieces[-1])  # bound memory to one chunk's activations
    wav = mx.concatenate(pieces, axis=1)
    return wav[0] if single else wav


# Official `decoder.*` key (without the prefix) -> (our key, layout of the official module type).
# Layouts: Conv1d [out, in, k] and depthwise [C, 1, k] -> [out, k, in]; ConvTranspose1d [in, out, k]
# -> [out, k, in]; None: as stored. Codebooks and the encode-only input projections are handled apart.
_CONV, _CONV_T, _DEPTHWISE = "conv", "conv_transpose", "depthwise"
_LAYOUTS = {_CONV: (0, 2, 1), _DEPTHWISE: (0, 2, 1), _CONV_T: (1, 2, 0)}
_RULES = [
    (r"quantizer\.rvq_(first|rest)\.output_proj\.weight", r"quantizer.rvq_\1.output_proj.weight", _CONV),
    (r"pre_conv\.conv\.(weight|bias)", r"pre_conv.\1", _CONV),
    (r"pre_transformer\.(input_proj|output_proj)\.(weight|bias)", r"\g<0>", None),
    (r"pre_transformer\.norm\.weight", r"\g<0>", None),
    (r"pre_transformer\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|input_layernorm"
     r"|post_attention_layernorm)\.weight", r"\g<0>", None),
    (r"pre_transformer\.layers\.(\d+)\.(self_attn|mlp)_layer_scale\.scale",
     r"pre_transformer.layers.\1.\2_layer_scale", None),
    (r"upsample\.(\d+)\.0\.conv\.(weight|bias)", r"upsample.\1.0.\2", _CONV_T),
    (r"upsample\.(\d+)\.1\.dwconv\.conv\.(weight|bias)", r"upsample.\1.1.dwconv.\2", _DEPTHWISE),
    (r"upsample\.(\d+)\.1\.(norm|pwconv1|pwconv2)\.(weight|bias)", r"\g<0>", None),
    (r"upsample\.(\d+)\.1\.gamma", r"\g<0>", None),
    (r"decoder\.(\d+)\.conv\.(weight|bias)", r"decoder.\1.\2", _CONV),  # vocoder input/output convs
    (r"decoder\.(\d+)\.(alpha|beta)", r"\g<0>", None),  # final SnakeBeta
    (r"decoder\.(\d+)\.block\.0\.(alpha|beta)", r"\g<0>", None),
    (r"decoder\.(\d+)\.block\.1\.conv\.(weight|bias)", r"decoder.\1.block.1.\2", _CONV_T),
    (r"decoder\.(\d+)\.block\.(\d+)\.(act1|act2)\.(alpha|beta)", r"\g<0>", None),
    (r"decoder\.(\d+)\.block\.(\d+)\.(conv1|conv2)\.conv\.(weight|bias)", r"decoder.\1.block.\2.\3.\4", _CONV),
]
_CODEBOOK = re.compile(r"quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(embedding_sum|cluster_usage)")
_ENCODE_ONLY = re.compile(r"quantizer\.rvq_(first|rest)\.input_proj\.weight")


def convert_decoder_weights(weights: dict) -> dict:
    """Official speech-tokenizer keys (`decoder.*`, numpy or mx arrays) -> CodecDecoder parameters
    (float32, MLX layouts, codebooks precomputed). `encoder.*` keys are skipped; any other unknown
    key, or half of a codebook, raises ValueError. Accepts raw official keys only: converted keys
    are rejected as unknown, so layouts are never transposed twice."""
    out, codebooks = {}, {}
    for key, value in weights.items():
        if key.startswith("encoder."):
            continue
        if not key.startswith("decoder."):
            raise ValueError(f"unknown speech-tokenizer weight '{key}' (expected official decoder.* keys)")
        name = key[len("decoder."):]
        if _ENCODE_ONLY.fullmatch(name):
            continue
        value = mx.array(value).astype(mx.float32)
        if m := _CODEBOOK.fullmatch(name):
            codebooks.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = value
            continue
        for pattern, target, layout in _RULES:
            if m := re.fullmatch(pattern, name):
                if layout is not None and name.endswith(".weight"):
                    value = mx.contiguous(value.transpose(_LAYOUTS[layout]))
                out[m.expand(target)] = value
                break
        else:
            raise ValueError(f"unknown speech-tokenizer weight '{key}'")
    for rvq, layers in codebooks.items():
        out[f"quantizer.{rvq}.codebook"] = _stack_codebooks(rvq, layers)
    return out


def _stack_codebooks(rvq: str, layers: dict) -> mx.array:
    books = []
    for i in range(max(layers) + 1):
        part = layers.get(i, {})
        for field in ("embedding_sum", "cluster_usage"):
            if field not in part:
                raise ValueError(f"missing speech-tokenizer weight 'decoder.quantizer.{rvq}.vq.layers.{i}"
                                 f"._codebook.{field}'")
        books.append(part["embedding_sum"] / mx.maximum(part["cluster_usage"], 1e-5)[:, None])
    return mx.stack(books)


def load_codec_decoder(folder_or_file: str | Path, config: CodecDecoderConfig,
                       native_conv: bool | None = None) -> CodecDecoder:
    """Build a CodecDecoder from an official `speech_tokenizer/model.safetensors` (or the model
    folder, or its speech_tokenizer folder). Missing or unexpected parameters raise ValueError."""
    path = Path(folder_or_file)
    if path.is_dir():
        nested = path / "speech_tokenizer" / "model.safetensors"
        path = nested if nested.is_file() else path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected the speech tokenizer's model.safetensors")
    decoder = CodecDecoder(config, native_conv)
    try:
        decoder.load_weights(list(convert_decoder_weights(mx.load(str(path))).items()), strict=True)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    mx.eval(decoder.parameters())
    return decoder
