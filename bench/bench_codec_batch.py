"""Batched codec calls: the chunks of B requests at the same stream position decoded in one call
vs one call each (the scheduler groups chunks this way), at the released codec shape.

    python bench/bench_codec_batch.py [--sizes 4 8] [--frames 2] [--reps 3]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from bench_codec import build_decoder  # noqa: E402
from mlx_qwen_tts.engine.scheduler import stack_states  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    decoder = build_decoder()
    rng = np.random.default_rng(0)
    for size in args.sizes:
        codes = mx.array(rng.integers(0, 2048, (size, args.frames, 16)))
        states = [decoder.make_state(1) for _ in range(size)]
        one_each, batched = [], []
        for _ in range(args.reps):  # the first repetition also warms both paths up
            t0 = time.perf_counter()
            mx.eval([decoder(codes[i:i + 1], states[i]) for i in range(size)])
            one_each.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mx.eval(decoder(codes, stack_states(states)))
            batched.append(time.perf_counter() - t0)
        a, b = min(one_each[1:] or one_each), min(batched[1:] or batched)
        print(json.dumps(dict(kind="codec_batch", requests=size, frames=args.frames, one_call_each_s=a,
                              batched_s=b, speedup=a / b)))


if __name__ == "__main__":
    main()
