"""Batched codec calls: chunks of B requests at the same stream position decoded in one call vs
one call each (the scheduler groups them this way), at the released codec shape.

    python bench/bench_codec_batch.py
"""
import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import mlx.core as mx, numpy as np
from bench_codec import build_decoder
from mlx_qwen_tts.engine.scheduler import _stack_states, _row_of
for name, dec in (("released shape", build_decoder()),):
    rng = np.random.default_rng(0)
    for B in (4, 8):
        codes = mx.array(rng.integers(0, 2048, (B, 2, 16)))
        states = [dec.make_state(1) for _ in range(B)]
        # warm both paths
        for rep in range(3):
            t = time.perf_counter()
            outs = [dec(codes[i:i+1], states[i]) for i in range(B)]
            mx.eval(outs)
            seq = time.perf_counter() - t
            t = time.perf_counter()
            wav, st = dec(codes, _stack_states(states)); mx.eval(wav, st)
            bat = time.perf_counter() - t
        print(name, "B", B, f"sequential {seq:.3f}s batched {bat:.3f}s speedup {seq/bat:.2f}x")
