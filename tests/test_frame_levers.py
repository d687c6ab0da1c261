"""The frame step's kernel savings change no result: fused projections equal the separate ones bit for
bit (float32, bfloat16, 8-bit, 4-bit), the per-frame noise table equals the per-draw noise, draw plans
change no draw; and bench/frame_kernels.py counts the tiny fixture's frame as the architecture says."""

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3
from mlx_lm.models.cache import KVCache

from mlx_qwen_tts.engine.sampling import (SamplerArrays, SamplerSettings, draw_plan, gumbel, noise_table, sample,
                                          uniform_noise)
from mlx_qwen_tts.models.fused import FusedAttention, FusedMLP, fuse_projections, fused_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


HIDDEN = 1024  # the released 0.6B widths: at the tiny fixture's, OpenBLAS's float32 sgemm rounds some row
# counts (3 or 8 rows at widths 64-128) differently for a wider output; quantized and bf16 matmuls never do


def _block(seed: int):
    args = qwen3.ModelArgs(model_type="qwen3", hidden_size=HIDDEN, num_hidden_layers=1, intermediate_size=3072,
                           num_attention_heads=16, rms_norm_eps=1e-6, vocab_size=64, num_key_value_heads=8,
                           max_position_embeddings=512, head_dim=128, tie_word_embeddings=False, rope_theta=1e6)
    block = qwen3.TransformerBlock(args)
    params = tree_flatten(block.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    block.load_weights([(name, mx.random.normal(v.shape, key=k) * 0.05) for (name, v), k in zip(params, keys)])
    return block


def _run(block, x, dtype):
    """Prefill 3 positions, then two 1-position steps through a KV cache: every output."""
    cache, outs = KVCache(), []
    outs.append(block(x[:, :3].astype(dtype), "causal", cache))
    for t in (3, 4):
        outs.append(block(x[:, t:t + 1].astype(dtype), None, cache))
    mx.eval(outs)
    return [np.array(o.astype(mx.float32)) for o in outs]


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "8-bit", "4-bit"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_projections_equal_separate_ones(kind, batch):
    dtype = mx.bfloat16 if kind in ("bfloat16", "8-bit") else mx.float32
    separate, fused = _block(0), _block(0)
    for block in (separate, fused):
        block.set_dtype(dtype)
        if kind.endswith("bit"):
            nn.quantize(block, group_size=32, bits=int(kind[0]))
    fuse_projections([fused])
    assert isinstance(fused.self_attn, FusedAttention) and isinstance(fused.mlp, FusedMLP)
    assert "q_proj" not in fused.self_attn and "gate_proj" not in fused.mlp
    x = mx.random.normal((batch, 5, HIDDEN), key=mx.random.key(1))
    for a, b in zip(_run(separate, x, dtype), _run(fused, x, dtype)):
        assert np.array_equal(a, b)


def test_projections_quantized_differently_stay_apart():
    block, whole = _block(0), _block(0)
    nn.quantize(block, group_size=32, bits=8, class_predicate=lambda p, m: isinstance(m, nn.Linear)
                and not p.endswith("k_proj") and not p.endswith("up_proj"))
    nn.quantize(block, group_size=32, bits=4)
    nn.quantize(whole, group_size=32, bits=4)
    fuse_projections([block, whole])
    assert isinstance(block.self_attn, qwen3.Attention) and isinstance(block.mlp, qwen3.MLP)
    assert isinstance(whole.self_attn, FusedAttention) and isinstance(whole.mlp, FusedMLP)


def test_fingerprint_shapes_are_the_fused_layout_either_way():
    separate = {"layers.0.self_attn.q_proj.weight": (64, 32), "layers.0.self_attn.k_proj.weight": (32, 32),
                "layers.0.self_attn.v_proj.weight": (32, 32), "layers.0.self_attn.o_proj.weight": (32, 64),
                "layers.0.mlp.gate_proj.weight": (96, 32), "layers.0.mlp.up_proj.weight": (96, 32)}
    fused = {"layers.0.self_attn.qkv_proj.weight": (128, 32), "layers.0.self_attn.o_proj.weight": (32, 64),
             "layers.0.mlp.gate_up_proj.weight": (192, 32)}
    assert fused_shapes(separate) == fused_shapes(fused) == fused


def test_noise_table_equals_the_noise_of_each_draw():
    seeds = mx.array([[1, 2], [0xFFFFFFFF, 7], [123456, 0]], dtype=mx.uint32)
    frames = mx.array([0, 5, 1000], dtype=mx.int32)
    table = noise_table(seeds, frames, 15, 300)
    ids = mx.array(np.random.default_rng(0).integers(0, 300, (3, 40)), dtype=mx.int32)
    for g in (1, 7, 15):
        per_draw = gumbel(uniform_noise(seeds, frames, g, ids))
        assert np.array_equal(np.array(mx.take_along_axis(table[:, g - 1], ids, axis=-1)), np.array(per_draw))
        full = gumbel(uniform_noise(seeds, frames, g, mx.arange(300)[None]))
        assert np.array_equal(np.array(table[:, g - 1]), np.array(full))


@pytest.mark.parametrize("rows", [
    [SamplerSettings()],  # the default: top-k 50, no top-p, no greedy row
    [SamplerSettings(top_k=0), SamplerSettings(top_k=7, temperature=0.5)],
    [SamplerSettings(do_sample=False), SamplerSettings(top_k=30)],
    [SamplerSettings(top_p=0.8), SamplerSettings(top_k=0, top_p=0.5)],
])
def test_draw_plans_and_the_noise_table_change_no_draw(rows):
    plan, arrays = draw_plan(rows), SamplerArrays.of(rows)
    b, vocab = len(rows), 300
    seeds = mx.array([[i + 1, 2 * i] for i in range(b)], dtype=mx.uint32)
    for frame in range(30):
        logits = mx.random.normal((b, vocab), key=mx.random.key(frame)) * 3
        counter = mx.full((b,), frame, dtype=mx.int32)
        table = noise_table(seeds, counter, 3, vocab)
        for g in (1, 3):
            planned = sample(logits.astype(mx.bfloat16).astype(mx.float32), arrays, seeds, counter, g,
                             plan.candidates, top_p=plan.top_p, greedy_rows=plan.greedy_rows, noise=table[:, g - 1])
            rounded = sample(logits.astype(mx.bfloat16).astype(mx.float32), arrays, seeds, counter, g,
                             plan.candidates)  # every flag on, the noise hashed for this draw
            bf16 = sample(logits.astype(mx.bfloat16), arrays, seeds, counter, g, plan.candidates,
                          top_p=plan.top_p, greedy_rows=plan.greedy_rows, noise=table[:, g - 1])
            assert np.array_equal(np.array(planned), np.array(rounded))
            assert np.array_equal(np.array(bf16), np.array(rounded))  # the float32 cast after the candidates


def test_frame_kernels_counts_the_tiny_frame():
    import frame_kernels

    model = frame_kernels.build("tiny")
    talker, predictor = len(model.talker.layers), len(model.code_predictor.layers)
    groups = model.config.num_code_groups
    layer_steps = talker + (groups - 1) * predictor
    counts = frame_kernels.count(model, 1, greedy=False, stages=True)
    metal = counts["metal"]["after"]
    kinds = metal["by_kind"]
    assert kinds["RMSNorm"] == 4 * layer_steps + groups  # 4 per layer call, a final norm per talker/predictor step
    assert kinds["ScatterAxis"] == 2 * layer_steps  # one K and one V write per layer call
    assert "DynamicSliceUpdate" not in kinds and "SliceUpdate" not in kinds and "Full" not in kinds
    # 4 fused projections per layer call, the 2 matmuls of the tiny head dims' unfused attention, 16 heads
    assert kinds["Matmul"] == 6 * layer_steps + groups
    assert metal["copies"] == 2 * predictor  # strided q/k heads: the predictor's first step has 2 positions
    for backend in ("cpu", "metal"):
        for when in ("before", "after"):
            c = counts[backend][when]
            assert sum(s["kernels"] for s in c["stages"].values()) == c["kernels"]
            assert sum(s["primitives"] for s in c["stages"].values()) == c["primitives"]
    assert counts["cpu"]["after"]["primitives"] < counts["cpu"]["before"]["primitives"]
    assert metal["kernels"] < counts["metal"]["before"]["kernels"]
    consts, state, plans = frame_kernels.frame_state(model, 3, greedy=True)
    batched = frame_kernels.count_frame(model, state, consts, plans, metal=True, stages=False)["after"]
    assert batched["copies"] == 2 * layer_steps  # at B > 1 every layer call's q/k heads are strided
