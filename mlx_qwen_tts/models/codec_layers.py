"""Streaming building blocks of the speech-tokenizer decoder (channels-last, float32).

Every stateful layer has `make_state(batch)` and `__call__(x, state) -> (y, new_state)`; modules
hold weights only. A state is what the layer needs from earlier input to continue it exactly: the
last inputs of a causal conv, the spill of a transposed conv into the next frame, the windowed
keys/values of attention. Zero states reproduce the official zero padding, so one code path serves
one-shot and streaming decoding. Layouts: hidden [B, T, C]; conv weights [out, kernel, in].
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn


def native_conv_default() -> bool:
    """mx.conv1d everywhere but on the CPU, where the matmul form below is much faster."""
    return mx.default_device() != mx.cpu


def conv1d(x: mx.array, weight: mx.array, dilation: int = 1, groups: int = 1, native: bool = True) -> mx.array:
    """Valid (unpadded) conv1d with stride 1; weight [out, kernel, in / groups]."""
    if groups > 1 or native:
        return mx.conv1d(x, weight, dilation=dilation, groups=groups)
    # MLX's CPU conv1d is ~100x slower with dilation and ~10x with one output channel, so use
    # matmuls. They need contiguous operands: copy the smaller of the unfolded input (short
    # inputs) and the per-tap weight slices (long inputs).
    out_dim, kernel, _ = weight.shape
    length = x.shape[1] - (kernel - 1) * dilation
    taps = [x[:, k * dilation : k * dilation + length] for k in range(kernel)]
    if length < out_dim:
        return mx.concatenate(taps, axis=-1) @ weight.reshape(out_dim, -1).T
    y = taps[0] @ weight[:, 0].T
    for k in range(1, kernel):
        y = y + taps[k] @ weight[:, k].T
    return y


class CausalConv1d(nn.Module):
    """Conv1d with (k-1)*d zeros of left padding; the state is the last (k-1)*d inputs."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.weight = mx.zeros((out_dim, kernel, in_dim // groups))
        self.bias = mx.zeros((out_dim,))
        self.in_dim, self.dilation, self.groups = in_dim, dilation, groups
        self.context = (kernel - 1) * dilation
        self.native = native_conv_default()  # CodecDecoder(native_conv=...) decides for every layer

    def make_state(self, batch: int):
        return mx.zeros((batch, self.context, self.in_dim)) if self.context else None

    def __call__(self, x, tail):
        if self.context:
            x = mx.concatenate([tail, x], axis=1)
            tail = x[:, x.shape[1] - self.context :]
        return conv1d(x, self.weight, self.dilation, self.groups, self.native) + self.bias, tail


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed on the right to exactly L*stride outputs (kernel = stride or 2*stride).

    Computed as one matmul plus an overlap-add (MLX's conv_transpose1d is ~100x slower on CPU, and
    the matmul is also the natural form on Metal). With kernel 2*stride, input frame i also spills
    into output block i+1; the last frame's spill (bias excluded) is the state for the next chunk.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int):
        super().__init__()
        if kernel not in (stride, 2 * stride):
            raise ValueError(f"transposed conv kernel {kernel} must be stride {stride} or twice it")
        self.weight = mx.zeros((out_dim, kernel, in_dim))  # nn.ConvTranspose1d layout
        self.bias = mx.zeros((out_dim,))
        self.stride = stride

    def make_state(self, batch: int):
        out_dim, kernel, _ = self.weight.shape
        return mx.zeros((batch, 1, self.stride, out_dim)) if kernel > self.stride else None

    def __call__(self, x, spill):
        B, L, _ = x.shape
        out_dim, kernel, in_dim = self.weight.shape
        y = x @ self.weight.reshape(out_dim * kernel, in_dim).T
        y = y.reshape(B, L, out_dim, kernel).transpose(0, 1, 3, 2)  # frame i -> samples i*s .. i*s+k-1
        out = y[:, :, : self.stride]
        if spill is not None:
            later = y[:, :, self.stride :]
            out = out + mx.concatenate([spill, later[:, :-1]], axis=1)
            spill = later[:, -1:]
        return out.reshape(B, L * self.stride, out_dim) + self.bias, spill


@partial(mx.compile, shapeless=True)
def _snake(x, frequency, inverse_magnitude):
    return x + inverse_magnitude * mx.square(mx.sin(x * frequency))


class SnakeBeta(nn.Module):
    """x + sin²(x·e^alpha) / (e^beta + 1e-9); alpha and beta are stored in log space."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = mx.zeros((dim,))
        self.beta = mx.zeros((dim,))

    def __call__(self, x):
        return _snake(x, mx.exp(self.alpha), 1.0 / (mx.exp(self.beta) + 1e-9))


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def make_state(self, batch: int):
        return self.conv1.make_state(batch)

    def __call__(self, x, tail):
        h, tail = self.conv1(self.act1(x), tail)
        h, _ = self.conv2(self.act2(h), None)
        return x + h, tail


class DecoderBlock(nn.Module):
    """SnakeBeta, transposed-conv upsampling by `rate`, residual units with dilations 1, 3, 9."""

    def __init__(self, in_dim: int, out_dim: int, rate: int):
        super().__init__()
        self.block = [SnakeBeta(in_dim), CausalConvTranspose1d(in_dim, out_dim, 2 * rate, rate),
                      *(ResidualUnit(out_dim, d) for d in (1, 3, 9))]

    def make_state(self, batch: int):
        return tuple(layer.make_state(batch) for layer in self.block[1:])

    def __call__(self, x, state):
        snake, upsample, *units = self.block
        x, spill = upsample(snake(x), state[0])
        tails = []
        for unit, tail in zip(units, state[1:]):
            x, tail = unit(x, tail)
            tails.append(tail)
        return x, (spill, *tails)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = mx.ones((dim,))

    def make_state(self, batch: int):
        return self.dwconv.make_state(batch)

    def __call__(self, x, tail):
        h, tail = self.dwconv(x, tail)
        h = self.pwconv2(nn.gelu(self.pwconv1(self.norm(h))))
        return x + self.gamma * h, tail


def window_mask(queries: int, keys: int, window: int):
    """Causal sliding-window mask: the query at key index i sees keys j with i - window < j <= i."""
    if queries == 1 and keys <= window:
        return None
    q = mx.arange(keys - queries, keys)[:, None]
    k = mx.arange(keys)[None]
    return (k <= q) & (k > q - window)


class WindowedAttention(nn.Module):
    """Multi-head attention with RoPE, no q/k norm, over a causal window; the state keeps the last
    window-1 keys and values (after RoPE), all that a later query can still see."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, rope_theta: float,
                 window: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.window = heads, kv_heads, head_dim, window
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.rope = nn.RoPE(head_dim, traditional=False, base=rope_theta)

    def make_state(self, batch: int):
        empty = mx.zeros((batch, self.kv_heads, 0, self.head_dim))
        return empty, empty

    def __call__(self, x, kv, offset: int):
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        k = mx.concatenate([kv[0], k], axis=2)
        v = mx.concatenate([kv[1], v], axis=2)
        mask = window_mask(T, k.shape[2], self.window)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        keep = max(k.shape[2] - (self.window - 1), 0)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1)), (k[:, :, keep:], v[:, :, keep:])


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    """Pre-norm block with LayerScale on both residual branches."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.self_attn = WindowedAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                                           c.head_dim, c.rope_theta, c.sliding_window)
        self.mlp = MLP(c.hidden_size, c.intermediate_size)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.self_attn_layer_scale = mx.ones((c.hidden_size,))
        self.mlp_layer_scale = mx.ones((c.hidden_size,))

    def __call__(self, x, kv, offset: int):
        h, kv = self.self_attn(self.input_layernorm(x), kv, offset)
        x = x + self.self_attn_layer_scale * h
        x = x + self.mlp_layer_scale * self.mlp(self.post_attention_layernorm(x))
        return x, kv


class WindowedTransformer(nn.Module):
    """latent -> hidden, sliding-window layers, RMSNorm, hidden -> latent."""

    def __init__(self, config):
        super().__init__()
        self.input_proj = nn.Linear(config.latent_dim, config.hidden_size)
        self.layers = [TransformerLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.output_proj = nn.Linear(config.hidden_size, config.latent_dim)

    def make_state(self, batch: int):
        return tuple(layer.self_attn.make_state(batch) for layer in self.layers)

    def __call__(self, x, kv, offset: int):
        x = self.input_proj(x)
        new_kv = []
        for layer, layer_kv in zip(self.layers, kv):
            x, layer_kv = layer(x, layer_kv, offset)
            new_kv.append(layer_kv)
        return self.output_proj(self.norm(x)), tuple(new_kv)
