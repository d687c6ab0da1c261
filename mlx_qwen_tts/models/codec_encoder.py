"""Speech-tokenizer encoder (Mimi), used only to turn a cloning reference into codes (architecture §5.4).

waveform [B, N] at 24 kHz -> SEANet causal convs (25 Hz) -> causal transformer -> stride-2
downsample (12.5 Hz) -> split RVQ -> codes [B, T, 16]. Features are channels-last, [B, T, C].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_qwen_tts.loading import load_strict


@dataclass(frozen=True)
class MimiEncoderArgs:
    num_filters: int
    kernel_size: int
    residual_kernel_size: int
    last_kernel_size: int
    num_residual_layers: int
    dilation_growth_rate: int
    compress: int
    upsampling_ratios: tuple
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    frame_rate: float
    sampling_rate: int
    num_semantic_quantizers: int
    codebook_size: int
    codebook_dim: int
    valid_quantizers: int  # codes kept: the first n of semantic + acoustic

    @classmethod
    def from_config(cls, raw: dict, valid_quantizers: int) -> "MimiEncoderArgs":
        """From the `encoder_config` (a MimiConfig) of speech_tokenizer/config.json."""
        implemented = {"use_causal_conv": True, "pad_mode": "constant", "use_conv_shortcut": False,
                       "hidden_act": "gelu", "audio_channels": 1, "attention_bias": False}
        for key, value in implemented.items():
            if raw.get(key, value) != value:
                raise ValueError(f"speech_tokenizer encoder_config.{key} = {raw[key]!r} is not supported "
                                 f"(only {value!r})")
        raw = {k: v for k, v in raw.items() if v is not None}  # null means the default, as in MimiConfig
        heads = raw.get("num_attention_heads", 8)
        hidden = raw.get("hidden_size", 512)
        vq_dim = raw.get("vector_quantization_hidden_dimension", 256)
        if raw.get("codebook_dim", 256) != vq_dim:
            raise ValueError(f"encoder_config.codebook_dim {raw.get('codebook_dim')} must equal "
                             f"vector_quantization_hidden_dimension {vq_dim}")
        args = cls(num_filters=raw.get("num_filters", 64), kernel_size=raw.get("kernel_size", 7),
                   residual_kernel_size=raw.get("residual_kernel_size", 3),
                   last_kernel_size=raw.get("last_kernel_size", 3),
                   num_residual_layers=raw.get("num_residual_layers", 1),
                   dilation_growth_rate=raw.get("dilation_growth_rate", 2), compress=raw.get("compress", 2),
                   upsampling_ratios=tuple(raw.get("upsampling_ratios", (8, 6, 5, 4))), hidden_size=hidden,
                   num_hidden_layers=raw.get("num_hidden_layers", 8), num_attention_heads=heads,
                   num_key_value_heads=raw.get("num_key_value_heads", heads),
                   head_dim=raw.get("head_dim") or hidden // heads,
                   intermediate_size=raw.get("intermediate_size", 2048), norm_eps=raw.get("norm_eps", 1e-5),
                   rope_theta=raw.get("rope_theta", 10000.0), frame_rate=raw.get("_frame_rate", 12.5),
                   sampling_rate=raw.get("sampling_rate", 24000),
                   num_semantic_quantizers=raw.get("num_semantic_quantizers", 1),
                   codebook_size=raw.get("codebook_size", 2048), codebook_dim=vq_dim,
                   valid_quantizers=valid_quantizers)
        if not args.num_semantic_quantizers <= valid_quantizers <= raw.get("num_quantizers", 32):
            raise ValueError(f"encoder_valid_num_quantizers {valid_quantizers} is outside "
                             f"[{args.num_semantic_quantizers}, {raw.get('num_quantizers', 32)}]")
        return args

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)


class CausalConv1d(nn.Module):
    """Left-padded conv; the right side is padded just enough that every input sample reaches a frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                              bias=bias)
        self.stride, self.pad_mode = stride, pad_mode
        self.left = (kernel_size - 1) * dilation + 1 - stride

    def __call__(self, x: mx.array) -> mx.array:
        length = x.shape[1]
        right = -length % self.stride  # output length is ceil(length / stride)
        x = mx.pad(x, [(0, 0), (self.left, right), (0, 0)], mode=self.pad_mode)
        return self.conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, args: MimiEncoderArgs, dim: int, dilation: int):
        super().__init__()
        hidden = dim // args.compress
        self.block = [nn.ELU(), CausalConv1d(dim, hidden, args.residual_kernel_size, dilation=dilation),
                      nn.ELU(), CausalConv1d(hidden, dim, 1)]

    def __call__(self, x: mx.array) -> mx.array:
        h = x
        for layer in self.block:
            h = layer(h)
        return x + h


class SEANetEncoder(nn.Module):
    """[B, N, 1] waveform -> [B, N / hop, hidden]. Indices mirror the official `layers` list."""

    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        layers = [CausalConv1d(1, args.num_filters, args.kernel_size)]
        channels = args.num_filters
        for ratio in reversed(args.upsampling_ratios):
            layers += [ResnetBlock(args, channels, args.dilation_growth_rate ** j)
                       for j in range(args.num_residual_layers)]
            layers += [nn.ELU(), CausalConv1d(channels, channels * 2, ratio * 2, stride=ratio)]
            channels *= 2
        layers += [nn.ELU(), CausalConv1d(channels, args.hidden_size, args.last_kernel_size)]
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class LayerScale(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.scale = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.scale * x


class Attention(nn.Module):
    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        h, kv, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.heads, self.kv_heads, self.scale = h, kv, d ** -0.5
        self.q_proj = nn.Linear(args.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, args.hidden_size, bias=False)
        self.rope = nn.RoPE(d, traditional=False, base=args.rope_theta)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.kv_heads, -1).transpose(0, 2, 1, 3)
        # The pinned transformers applies a plain causal mask: the configured sliding window is unused.
        out = mx.fast.scaled_dot_product_attention(self.rope(q), self.rope(k), v, scale=self.scale,
                                                   mask="causal")
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        self.fc1 = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.fc2 = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.self_attn = Attention(args)
        self.self_attn_layer_scale = LayerScale(args.hidden_size)
        self.post_attention_layernorm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps)
        self.mlp = MLP(args)
        self.mlp_layer_scale = LayerScale(args.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x)))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        self.layers = [TransformerLayer(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class ResidualVQ(nn.Module):
    """Residual nearest-codeword search; `codebooks[i]` is embed_sum / usage, precomputed at load."""

    def __init__(self, args: MimiEncoderArgs, num_quantizers: int):
        super().__init__()
        if args.codebook_dim != args.hidden_size:  # as in Mimi: a projection only when the widths differ
            self.input_proj = nn.Linear(args.hidden_size, args.codebook_dim, bias=False)
        self.codebooks = [mx.zeros((args.codebook_size, args.codebook_dim)) for _ in range(num_quantizers)]

    def __call__(self, x: mx.array) -> mx.array:
        residual = self.input_proj(x) if "input_proj" in self else x
        codes = []
        for codebook in self.codebooks:
            # argmin of ||r - e||^2 = ||r||^2 - 2 r.e + ||e||^2; ||r||^2 is constant per row.
            scores = (codebook * codebook).sum(axis=-1) - 2 * (residual @ codebook.T)
            index = mx.argmin(scores, axis=-1)
            residual = residual - codebook[index]
            codes.append(index)
        return mx.stack(codes, axis=-1)


class SplitRVQ(nn.Module):
    """Semantic and acoustic RVQs both encode the same latents; their codes are concatenated."""

    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        semantic = args.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVQ(args, semantic)
        self.acoustic_residual_vector_quantizer = ResidualVQ(args, args.valid_quantizers - semantic)

    def __call__(self, x: mx.array) -> mx.array:
        return mx.concatenate([self.semantic_residual_vector_quantizer(x),
                               self.acoustic_residual_vector_quantizer(x)], axis=-1)


class CodecEncoder(nn.Module):
    """waveform [B, N] at 24 kHz -> codes [B, ceil(N / 1920), valid_quantizers]."""

    def __init__(self, args: MimiEncoderArgs):
        super().__init__()
        self.encoder = SEANetEncoder(args)
        self.encoder_transformer = Transformer(args)
        encoder_rate = args.sampling_rate / args.hop_length
        kernel = 2 * int(encoder_rate / args.frame_rate)
        self.downsample = CausalConv1d(args.hidden_size, args.hidden_size, kernel, stride=2, bias=False,
                                       pad_mode="edge")  # replicate padding
        self.quantizer = SplitRVQ(args)

    def latents(self, wave: mx.array) -> mx.array:
        """The quantizer input, [B, T, hidden] at the code frame rate."""
        x = self.encoder(wave[..., None])
        return self.downsample(self.encoder_transformer(x))

    def __call__(self, wave: mx.array) -> mx.array:
        return self.quantizer(self.latents(wave))


_CONV = re.compile(r"(encoder\.layers\.\d+(\.block\.\d+)?|downsample)\.conv\.(weight|bias)")
_TRANSFORMER = re.compile(r"encoder_transformer\.layers\.\d+\.("
                          r"(input|post_attention)_layernorm\.(weight|bias)|self_attn\.[qkvo]_proj\.weight|"
                          r"mlp\.fc[12]\.weight|(self_attn|mlp)_layer_scale\.scale)")
_RVQ = re.compile(r"quantizer\.(?P<rvq>semantic|acoustic)_residual_vector_quantizer\."
                  r"(?P<part>input_proj\.weight|output_proj\.weight|"
                  r"layers\.(?P<index>\d+)\.codebook\.(?P<leaf>embed_sum|cluster_usage|initialized))")


def convert_codec_encoder_weights(weights: dict, args: MimiEncoderArgs) -> dict:
    """Official `encoder.*` tensors (prefix stripped) -> CodecEncoder parameters.

    Conv weights [out, in, k] become [out, k, in]; each codebook becomes embed_sum / max(usage, 1e-5).
    Dropped on purpose: decode-only output_proj, the `initialized` flags, and codebooks past
    `valid_quantizers` (their codes are never kept).
    """
    semantic = args.num_semantic_quantizers
    kept = {"semantic": semantic, "acoustic": args.valid_quantizers - semantic}
    out, codebook_parts = {}, {}
    for key, value in weights.items():
        if _CONV.fullmatch(key):
            out[key] = mx.contiguous(value.transpose(0, 2, 1)) if key.endswith("weight") else value
        elif _TRANSFORMER.fullmatch(key):
            out[key] = value
        elif m := _RVQ.fullmatch(key):
            prefix = f"quantizer.{m['rvq']}_residual_vector_quantizer"
            if m["part"] == "input_proj.weight":
                out[f"{prefix}.input_proj.weight"] = value[:, :, 0]  # 1x1 conv -> Linear
            elif m["index"] is not None and int(m["index"]) < kept[m["rvq"]] and m["leaf"] != "initialized":
                codebook_parts.setdefault(f"{prefix}.codebooks.{m['index']}", {})[m["leaf"]] = value
        else:
            raise ValueError(f"unexpected codec encoder weight '{key}'")
    for name, parts in codebook_parts.items():
        if set(parts) != {"embed_sum", "cluster_usage"}:
            raise ValueError(f"codec encoder codebook '{name}' needs both embed_sum and cluster_usage")
        usage = mx.maximum(parts["cluster_usage"].astype(mx.float32), 1e-5)
        out[name] = parts["embed_sum"].astype(mx.float32) / usage[:, None]
    return out


def load_codec_encoder(weights: dict, args: MimiEncoderArgs, dtype: mx.Dtype = mx.float32) -> CodecEncoder:
    """Build the encoder from the official `encoder.*` tensors (prefix stripped)."""
    return load_strict(CodecEncoder(args), convert_codec_encoder_weights(weights, args), dtype,
                       "codec encoder weights do not match its config")
