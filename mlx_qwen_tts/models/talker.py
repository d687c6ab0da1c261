"""The talker: a Qwen3-style decoder over summed text-track and codec-track embeddings that
predicts code group 0 (the semantic codebook) of each 80 ms frame.

Shapes: hidden states [B, T, H]. The official model uses interleaved M-RoPE, but every TTS
position feeds the same id to all three streams, which makes it exactly 1-D RoPE.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3
from mlx_lm.models.cache import KVCache

from mlx_qwen_tts.config import ModelConfig, TransformerConfig


def block_args(cfg: TransformerConfig) -> qwen3.ModelArgs:
    return qwen3.ModelArgs(model_type="qwen3", hidden_size=cfg.hidden_size,
                           num_hidden_layers=cfg.num_hidden_layers, intermediate_size=cfg.intermediate_size,
                           num_attention_heads=cfg.num_attention_heads, rms_norm_eps=cfg.rms_norm_eps,
                           vocab_size=cfg.vocab_size, num_key_value_heads=cfg.num_key_value_heads,
                           max_position_embeddings=cfg.max_position_embeddings, head_dim=cfg.head_dim,
                           tie_word_embeddings=False, rope_theta=cfg.rope_theta)


def run_blocks(layers, x: mx.array, caches, mask=None) -> mx.array:
    """Causal pass of mlx-lm Qwen3 blocks; single-token steps need no mask unless the caches
    hold padded rows (then `mask` is given)."""
    if mask is None and x.shape[1] > 1:
        mask = "causal"
    for layer, cache in zip(layers, caches):
        x = layer(x, mask, cache)
    return x


class TextProjection(nn.Module):
    """text_embedding width -> talker width: fc2(silu(fc1(x))), both with bias."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_fc2(nn.silu(self.linear_fc1(x)))


class Talker(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        t = cfg.talker
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)
        self.text_projection = TextProjection(cfg.text_hidden_size, t.hidden_size)
        self.codec_embedding = nn.Embedding(t.vocab_size, t.hidden_size)
        args = block_args(t)
        self.layers = [qwen3.TransformerBlock(args) for _ in range(t.num_hidden_layers)]
        self.norm = nn.RMSNorm(t.hidden_size, eps=t.rms_norm_eps)
        self.codec_head = nn.Linear(t.hidden_size, t.vocab_size, bias=False)

    def embed_text(self, ids: mx.array) -> mx.array:
        """Text-track vectors P(ids) = text_projection(text_embedding(ids))."""
        return self.text_projection(self.text_embedding(ids))

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def __call__(self, embeds: mx.array, cache, mask=None) -> mx.array:
        """embeds [B, L, H] -> final hidden states [B, L, H] (every position; `codec_head` of a
        position's state gives the logits of the next frame's code 0)."""
        return self.norm(run_blocks(self.layers, embeds, cache, mask))
