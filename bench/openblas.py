"""MLX's CPU float32 matmuls with and without the system OpenBLAS preloaded (what the CLI's re-exec buys).

Each mode runs in its own process (the preload must be in place before MLX loads): a square matmul, a
batch-8 projection at the 0.6B talker's width, greedy synthesis on the tiny fixture, and the CLI's
start-up (`--version`) with and without its one re-exec.

    .venv/bin/python bench/openblas.py --out bench/runs/2026-12-05/openblas.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import write_report  # bench/ is the script's folder

CHILD = """
import json, os, sys, time
import mlx.core as mx
mx.set_default_device(mx.cpu)

def timed(f, reps):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1e3

out = {}
for name, (m, k, n), reps in (("square_1024", (1024, 1024, 1024), 10), ("talker_mlp_b8", (8, 1024, 3072), 200)):
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b)
    out[name + "_ms"] = timed(lambda: mx.eval(a @ b), reps)
from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.loading import load_model
model = load_model(sys.argv[1], dtype=mx.float32)
synthesize(model, "Warm up.", greedy=True, max_frames=8)
t = time.perf_counter()
result = synthesize(model, "Hello world, this is a test of the tiny model.", greedy=True, max_frames=50)
out["tiny_frames_per_s"] = result.stats.frames / (time.perf_counter() - t)
out["openblas_loaded"] = "libopenblas" in open("/proc/self/maps").read()
print(json.dumps(out))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(os.environ.get("MLX_QWEN_TTS_FIXTURES", "tests/.fixtures"),
                                                        "models", "customvoice_0b6"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from mlx_qwen_tts.__main__ import system_openblas

    library = system_openblas()
    if library is None:
        sys.exit("the system OpenBLAS is not installed (Debian/Ubuntu: apt-get install libopenblas0-pthread)")
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    runs = {}
    for mode, env in (("mlx_own_blas", base), ("openblas_preloaded", {**base, "LD_PRELOAD": library})):
        proc = subprocess.run([sys.executable, "-c", CHILD, args.model], env=env, capture_output=True, text=True,
                              check=True)
        runs[mode] = json.loads(proc.stdout)
        starts = []
        for _ in range(5):  # the CLI itself: without a preload it re-executes once
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlx_qwen_tts", "--version"], env=env, check=True,
                           capture_output=True)
            starts.append(time.perf_counter() - t)
        runs[mode]["cli_version_s"] = min(starts)
    own, blas = runs["mlx_own_blas"], runs["openblas_preloaded"]
    report = {"library": library, "runs": runs,
              "speedup": {k: own[k] / blas[k] for k in ("square_1024_ms", "talker_mlp_b8_ms")} |
              {"tiny_frames_per_s": blas["tiny_frames_per_s"] / own["tiny_frames_per_s"]},
              "reexec_cost_s": own["cli_version_s"] - blas["cli_version_s"]}
    write_report(report, args.out, indent=2)


if __name__ == "__main__":
    main()
