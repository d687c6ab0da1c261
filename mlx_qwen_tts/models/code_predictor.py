"""The code predictor ("sub-talker"): from the talker's hidden state and code 0 it predicts
code groups 1..15 of a frame, one group per step, with a fresh 16-position cache per frame.

The 15 steps are the dominant per-frame cost; the engine's frame step (engine/step.py) runs
them inside its one compiled graph. The group embeddings summed over a frame form the next
talker input.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3

from mlx_qwen_tts.config import ModelConfig
from mlx_qwen_tts.models.talker import block_args, run_blocks


class CodePredictor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, talker_hidden = cfg.code_predictor, cfg.talker.hidden_size
        groups = cfg.num_code_groups - 1
        # Embeddings are at the talker's width: their sum is the talker's next input.
        self.codec_embedding = [nn.Embedding(c.vocab_size, talker_hidden) for _ in range(groups)]
        if c.hidden_size != talker_hidden:  # 1.7B; identity for 0.6B
            self.small_to_mtp_projection = nn.Linear(talker_hidden, c.hidden_size, bias=True)
        args = block_args(c)
        self.layers = [qwen3.TransformerBlock(args) for _ in range(c.num_hidden_layers)]
        self.norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.lm_head = [nn.Linear(c.hidden_size, c.vocab_size, bias=False) for _ in range(groups)]

    def _project(self, x: mx.array) -> mx.array:
        return self.small_to_mtp_projection(x) if "small_to_mtp_projection" in self else x

    def __call__(self, x: mx.array, cache) -> mx.array:
        """x [B, L, talker H] -> final hidden states [B, L, H] at every position (`lm_head[g - 1]`
        of position g's state gives the logits of code group g)."""
        return self.norm(run_blocks(self.layers, self._project(x), cache))

    def step_logits(self, x: mx.array, cache, group: int) -> mx.array:
        """Logits for code group `group` (1-based) after feeding x [B, L, talker H]."""
        return self.lm_head[group - 1](self(x, cache)[:, -1])
