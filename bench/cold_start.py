"""Cold start: from process start to the first audio of `speak`, split into its phases.

    python bench/cold_start.py [--shape tiny|0.6b] [--runs 3]

The tiny model is the test fixture converted to an MLX folder first (as a Hub model is on first
use). Each run is a fresh interpreter (`python -c`) doing what `mlx-qwen-tts speak` does, timed at
each step: interpreter start (spawn to the first line), imports (the CLI and the engine),
load (weights into MLX), compile/warm-up (the first frame step of the session, traced and
JIT-compiled), and prefill + first chunk (time to the first audio chunk of `stream()` after
that). The total is spawn to first audio. Prints one JSON line per run and a summary.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import host_info, thread_env  # noqa: E402
from shapes import FIXTURE  # noqa: E402

CHILD = r"""
import time, json, sys
t = {"started": time.perf_counter()}
from mlx_qwen_tts.cli import main  # noqa: F401  (what the console script imports)
from mlx_qwen_tts.api import stream
from mlx_qwen_tts.loading import load_model
import mlx.core as mx
t["imported"] = time.perf_counter()
SHAPE = sys.argv[1]
if SHAPE == "tiny":
    model = load_model(sys.argv[2], dtype=mx.float32)
else:
    sys.path.insert(0, sys.argv[3])
    from ours import build
    model = build(SHAPE, "float32", codec=True)
t["loaded"] = time.perf_counter()
chunks = stream(model, "Hello! This is a cold start.", voice="vivian", seed=0, max_frames=6, first_chunk_frames=2)
next(chunks)
t["first_audio"] = time.perf_counter()
chunks.close()
print("@cold " + json.dumps({**t, "traces": model.frame_step.traces}))
"""


def converted_fixture(root: Path) -> Path:
    """The tiny fixture as `speak` meets a Hub model: converted once into an MLX folder."""
    from mlx_qwen_tts_convert import convert_model

    return convert_model(FIXTURE, root / "tiny-converted", bits=None, dtype="float32", progress=False)


def run_once(shape: str, model: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, shape, str(model), str(BENCH)], capture_output=True,
                          text=True, env=thread_env(2))
    wall = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@cold ")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-3000:])
    t = json.loads(line[len("@cold "):])
    # perf_counter is per process on Linux (CLOCK_MONOTONIC): the child's stamps share our clock.
    return dict(shape=shape, interpreter_s=t["started"] - t0, imports_s=t["imported"] - t["started"],
                load_s=t["loaded"] - t["imported"], first_audio_after_load_s=t["first_audio"] - t["loaded"],
                total_s=t["first_audio"] - t0, process_wall_s=wall)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=["tiny", "0.6b"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = converted_fixture(Path(tmp)) if args.shape == "tiny" else FIXTURE
        runs = [run_once(args.shape, model) for _ in range(args.runs)]
    for r in runs:
        print(json.dumps(r))
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
    print(json.dumps(dict(kind="cold_start", shape=args.shape, runs=len(runs), median=summary, host=host_info())))


if __name__ == "__main__":
    main()
