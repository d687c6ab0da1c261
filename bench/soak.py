"""Soak: many syntheses and streams in one process, some streams abandoned after their first
chunk, a different temperature and top-k for each; resident and MLX memory before and after,
and the number of frame-step graphs traced (bounded: batch sizes x KV capacities, never one per
setting).

    python bench/soak.py [--runs 1000] [--model tests/.fixtures/models/customvoice_0b6]

Prints JSON lines: progress every 100 runs and a final record. tests/test_soak.py runs a short pass.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Current resident set size (not the peak), from /proc on Linux, else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def soak(model, runs: int, report=None) -> dict:
    import mlx.core as mx

    from mlx_qwen_tts.api import stream, synthesize

    texts = ["Hello world, this is a test.", "Another sentence, a little longer than the first one.", "Hi."]
    voices = model.config.speaker_names or [None]

    def one(i):
        kw = dict(voice=voices[i % len(voices)], seed=i, max_frames=4 + i % 5, temperature=0.3 + (i % 97) / 50,
                  top_k=(0, 5, 50, 300)[i % 4], top_p=(1.0, 0.9)[i % 2])
        if i % 3 == 2:  # a stream abandoned after its first chunk
            chunks = stream(model, texts[i % 3], **kw)
            next(chunks)
            chunks.close()
        else:
            synthesize(model, texts[i % 3], **kw)

    for i in range(10):  # warm-up: traces what the steady state uses
        one(i)
    mx.clear_cache()
    start = dict(rss_mb=rss_mb(), mlx_active_mb=mx.get_active_memory() / 1e6, traces=model.frame_step.traces)
    t0 = time.perf_counter()
    for i in range(10, 10 + runs):
        one(i)
        if report and (i - 9) % 100 == 0:
            report(dict(done=i - 9, rss_mb=rss_mb(), mlx_active_mb=mx.get_active_memory() / 1e6,
                        traces=model.frame_step.traces, elapsed_s=time.perf_counter() - t0))
    mx.clear_cache()
    end = dict(rss_mb=rss_mb(), mlx_active_mb=mx.get_active_memory() / 1e6, traces=model.frame_step.traces)
    return dict(runs=runs, start=start, end=end, elapsed_s=time.perf_counter() - t0,
                rss_growth=end["rss_mb"] / start["rss_mb"] - 1, new_traces=end["traces"] - start["traces"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=ROOT / "tests" / ".fixtures" / "models" / "customvoice_0b6")
    args = parser.parse_args()
    import mlx.core as mx

    from mlx_qwen_tts.loading import load_model

    model = load_model(args.model, dtype=mx.float32)
    result = soak(model, args.runs, report=lambda r: print(json.dumps(r), flush=True))
    print(json.dumps(dict(kind="soak", **result)))


if __name__ == "__main__":
    main()
