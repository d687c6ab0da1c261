"""Fused projections for mlx-lm's Qwen3 decoder blocks: q/k/v as one matmul, gate/up as one.

At decode time a frame is ~100 sequential decoder-layer executions of one position each, so
the number of kernels dispatched, not the arithmetic, sets the pace on a GPU. Concatenating
the weights along their output rows (packed quantized weights, scales and biases alike) turns
three projections into one and two into one, with the same result: every output row is reduced
on its own, whatever the row count (checked bit for bit in tests/test_fused.py). The outputs
are split by slicing (views). Checkpoints keep the official per-projection layout; the fusion
is done once, after loading.

At B > 1 the q and k slices of the fused output are strided, and Metal's RMSNorm copies a
strided input first (one small copy each), so the q/k/v fusion saves 2 kernels per layer call
at B = 1 and breaks even at B > 1 (1 matmul + 2 copies for 3 matmuls). It is kept at every
batch size: same weights read, never more kernels, one layout.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import scaled_dot_product_attention


def fuse_linears(parts: list[nn.Module]) -> nn.Module | None:
    """One Linear / QuantizedLinear whose output is the parts' outputs side by side, or None when
    the parts differ in kind or quantization (per-layer quantization exceptions)."""
    first = parts[0]
    kinds = {(type(p), getattr(p, "bits", None), getattr(p, "group_size", None), getattr(p, "mode", None),
              "bias" in p) for p in parts}
    if len(kinds) != 1 or type(first) not in (nn.Linear, nn.QuantizedLinear):
        return None
    bias = "bias" in first
    if isinstance(first, nn.QuantizedLinear):  # a holder of the right kind: its arrays are replaced below
        fused = nn.QuantizedLinear(first.group_size, 1, bias=bias, group_size=first.group_size, bits=first.bits,
                                   mode=first.mode)
    else:
        fused = nn.Linear(1, 1, bias=bias)
    names = [k for k in ("weight", "scales", "biases", "bias") if k in first]
    fused.update({k: mx.concatenate([p[k] for p in parts], axis=0) for k in names})
    return fused


class FusedAttention(nn.Module):
    """mlx-lm's Qwen3 attention (qwen3.Attention) with q/k/v from one projection."""

    def __init__(self, attn: qwen3.Attention, qkv_proj: nn.Module):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.scale = attn.n_heads, attn.n_kv_heads, attn.scale
        self.qkv_proj, self.o_proj = qkv_proj, attn.o_proj
        self.q_norm, self.k_norm, self.rope = attn.q_norm, attn.k_norm, attn.rope

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        B, L, _ = x.shape
        dim = self.q_norm.weight.shape[0]
        q_end, k_end = self.n_heads * dim, (self.n_heads + self.n_kv_heads) * dim
        queries, keys, values = mx.split(self.qkv_proj(x), [q_end, k_end], axis=-1)  # one view primitive
        queries = self.q_norm(queries.reshape(B, L, self.n_heads, dim)).transpose(0, 2, 1, 3)
        keys = self.k_norm(keys.reshape(B, L, self.n_kv_heads, dim)).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.n_kv_heads, dim).transpose(0, 2, 1, 3)
        if cache is not None:
            queries = self.rope(queries, offset=cache.offset)
            keys = self.rope(keys, offset=cache.offset)
            keys, values = cache.update_and_fetch(keys, values)
        else:
            queries, keys = self.rope(queries), self.rope(keys)
        output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


class FusedMLP(nn.Module):
    """mlx-lm's Qwen3 MLP with gate and up from one projection."""

    def __init__(self, mlp: qwen3.MLP, gate_up_proj: nn.Module):
        super().__init__()
        self.gate_up_proj, self.down_proj = gate_up_proj, mlp.down_proj

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(*mx.split(self.gate_up_proj(x), 2, axis=-1)))


def fuse_projections(layers) -> None:
    """Fuse the projections of loaded qwen3.TransformerBlocks in place (a layer whose parts are
    quantized differently keeps them apart)."""
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        if isinstance(attn, qwen3.Attention):
            qkv = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
            if qkv is not None:
                layer.self_attn = FusedAttention(attn, qkv)
        if isinstance(mlp, qwen3.MLP):
            gate_up = fuse_linears([mlp.gate_proj, mlp.up_proj])
            if gate_up is not None:
                layer.mlp = FusedMLP(mlp, gate_up)
    mx.eval([layer.parameters() for layer in layers])


_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}


def fused_shapes(shapes: dict) -> dict:
    """Parameter name -> shape in the fused layout (separate q/k/v or gate/up weights merged by rows), so that
    a model whose layers could not all be fused compares equal to its fully fused float source."""
    out = {}
    for name, shape in shapes.items():
        owner, _, leaf = name.rpartition(".")
        parent, _, proj = owner.rpartition(".")
        if proj in _FUSED:
            name = f"{parent}.{_FUSED[proj]}.{leaf}"
            shape = (out.get(name, (0,))[0] + shape[0], *shape[1:])
        out[name] = tuple(shape)
    return out
