"""The benchmark, in one command: our MLX pipeline and the official PyTorch qwen-tts 0.1.1 on
identical work (same prompt and token ids, same fixed number of frames with EOS impossible,
same thread count, interleaved repetitions), written as JSON lines, a markdown table and a chart.

    python bench/run.py [--quick] [--out DIR] [--threads N]

Each side runs in its own worker process (ours in this venv, the official one in .venv-ref)
that keeps its model loaded; repetitions alternate between the two so that both see the same
machine load. Definitions and the recorded numbers: bench/README.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import TEXTS, WorkerProcess, host_info, spread, thread_env  # noqa: E402
from shapes import PARAMS, ROOT  # noqa: E402

REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"
OPENBLAS = f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libopenblas.so.0"
TEXT = "short"  # fixed frames: the text only sets the prefill length (see prefill_by_text_ms)
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "8bit": 1.2}

# What each mode measures. Overhead regime: the tiny fixture, at 1 thread and at --threads. Real
# shapes: each case's frames and repetitions, and the texts whose prefill is timed (an 8-bit or
# bfloat16 prefill on the CPU takes seconds to tens of seconds: fewer repetitions there).
BOTH = ("ours", "official")
FULL = dict(overhead=dict(frames=60, reps=5), stage_steps=4, stream=["tiny", "0.6b"], codec_args=[], real=[
    dict(shape="0.6b", precision="float32", sides=BOTH, frames=8, reps=3, texts=tuple(TEXTS), profile=True),
    dict(shape="0.6b", precision="bfloat16", sides=BOTH, frames=4, reps=2),
    dict(shape="0.6b", precision="8bit", sides=("ours",), frames=6, reps=2, prefill_reps=1),
    dict(shape="1.7b", precision="float32", sides=BOTH, frames=4, reps=2, texts=tuple(TEXTS)),
    dict(shape="1.7b", precision="bfloat16", sides=BOTH, frames=3, reps=2, prefill_reps=1),
    dict(shape="1.7b", precision="8bit", sides=("ours",), frames=3, reps=2, prefill_reps=1)])
QUICK = dict(overhead=dict(frames=20, reps=3), stage_steps=2, stream=["tiny"], codec_args=["--quick"], real=[
    dict(shape="0.6b", precision="float32", sides=BOTH, frames=3, reps=2, profile=True)])


class Worker(WorkerProcess):
    """One side's worker process (bench/ours.py or bench/official.py), driven by JSON commands."""

    def __init__(self, side: str, threads: int, log):
        env = thread_env(threads)
        if side == "official":
            env.pop("LD_PRELOAD", None)  # torch brings its own BLAS (MKL)
        python = sys.executable if side == "ours" else str(REF_PYTHON)
        self.side = side
        super().__init__(side, [python, BENCH / f"{side}.py"], env, log, BENCH)


class Bench:
    def __init__(self, args, out: Path):
        self.args, self.threads = args, args.threads
        self.jsonl = open(out / "results.jsonl", "w")
        self.log = open(out / "workers.log", "w")
        self.records = []
        self.ids = None

    def emit(self, record: dict):
        self.records.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        print(_summary(record), flush=True)

    def token_ids(self) -> dict:
        """The exact prompt ids both sides get, per text (the fixture's tokenizer: valid for both)."""
        if self.ids is None:
            from mlx_qwen_tts.tokenizer import TextTokenizer
            from shapes import FIXTURE
            tok = TextTokenizer(FIXTURE)
            self.ids = {name: tok.encode(f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n")
                        for name, text in TEXTS.items()}
        return self.ids

    def compare(self, shape, precision, sides, frames, reps, threads, stage_steps, texts=(TEXT,), prefill_reps=None,
                profile=False):
        """Both sides on the same work; repetitions interleaved when both models fit in memory."""
        sides = [s for s in sides if s == "ours" or REF_PYTHON.exists()]
        together = _fits(shape, precision, len(sides))
        groups = [sides] if together else [[s] for s in sides]
        for group in groups:
            workers = {s: Worker(s, threads, self.log) for s in group}
            builds = {s: w.call("build", shape=shape, precision=precision, threads=threads, seed=0, text=TEXT,
                                **(dict(token_ids=self.token_ids()) if s == "official" else {}))
                      for s, w in workers.items()}
            reps_out = {s: [] for s in group}
            for rep in range(reps):
                for s, w in workers.items():
                    reps_out[s].append(w.call("rep", frames=frames, seed=rep + 1))
            for s, w in workers.items():
                prefill = w.call("prefill", texts=list(texts), reps=prefill_reps or reps)
                done = w.call("finish", **(dict(stage_steps=stage_steps, seed=0) if s == "ours" else {}))
                if profile and s == "ours":
                    done["profile"] = w.call("profile", frames=max(frames, 4), seed=0)
                w.close()
                self.emit(_generate_record(s, shape, precision, frames, reps, threads, together, builds[s],
                                           reps_out[s], prefill, done))

    def stream(self, shape):
        w = Worker("ours", self.threads, self.log)
        out = w.call("stream", shape=shape, precision="float32", threads=self.threads, text=TEXT, reps=3,
                     max_frames=8)
        w.close()
        self.emit(dict(kind="stream", side="ours", shape=shape, precision="float32", threads=self.threads,
                       first_audio_ms=spread([r["first_audio_s"] * 1e3 for r in out["runs"]]),
                       frames_before_first_audio=max(r["frames"] for r in out["runs"]),
                       prefill_ms=_ms_spread(out["prefill_s"]), env=out["env"]))

    def bandwidth(self):
        w = Worker("ours", self.threads, self.log)
        out = w.call("bandwidth", threads=self.threads)
        w.close()
        self.emit(dict(kind="bandwidth", side="ours", threads=self.threads, **out))

    def codec(self, extra_args):
        """bench/bench_codec.py (the codec-only measurements, ours and official) as it is."""
        proc = subprocess.run([sys.executable, str(BENCH / "bench_codec.py"), *extra_args], cwd=ROOT, text=True,
                              capture_output=True, env=thread_env(self.threads))
        self.log.write(proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"bench_codec.py failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                self.emit(dict(kind="codec", side="ours" if record["impl"] == "mlx" else "official", **record))


def _fits(shape, precision, sides) -> bool:
    """Both models resident at once only with room to spare (other jobs share the machine)."""
    need = PARAMS[shape] * (BYTES_PER_PARAM[precision] + 4 * (sides - 1))
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except OSError:
        return True
    return need < 0.6 * avail


def _generate_record(side, shape, precision, frames, reps, threads, interleaved, build, reps_out, prefill,
                     done) -> dict:
    ms = lambda key: _ms_spread([r[key] for r in reps_out])  # noqa: E731
    flat = lambda key: _ms_spread(done.get(key) or sum((r[key] for r in reps_out), []))  # noqa: E731
    record = dict(kind="generate", side=side, shape=shape, precision=precision, threads=threads, frames=frames,
                  reps=reps, text=TEXT, interleaved=interleaved, ms_per_frame=ms("frame_s"),
                  ms_per_frame_reps=[r["frame_s"] * 1e3 for r in reps_out],
                  prefill_ms=_ms_spread(prefill[TEXT]),
                  prefill_by_text_ms={t: _ms_spread(v) for t, v in prefill.items()},
                  **(dict(step_ms=flat("step_s")) if side == "ours" else
                     dict(talker_ms=flat("talker_s"), predictor_ms=flat("predictor_s"))),
                  peak_rss_gb=done["peak_rss_gb"], build_s=build["build_s"], env=done["env"])
    if side == "ours":
        record.update(python_ms_per_frame=ms("python_s"), syncs_per_frame=max(r["syncs"] for r in reps_out),
                      peak_mlx_gb=done["peak_mlx_gb"], profile=done.get("profile"),
                      weights_gb=build["weights_gb"], frame_bytes=done["frame_bytes"])
    return record


def _ms_spread(seconds) -> dict:
    return spread([s * 1e3 for s in seconds])


def _summary(r: dict) -> str:
    if r["kind"] == "generate":
        return (f"{r['side']:>8} {r['shape']:>4} {r['precision']:>8} {r['threads']}t: "
                f"{r['ms_per_frame']['median']:8.1f} ms/frame [{r['ms_per_frame']['min']:.1f}-"
                f"{r['ms_per_frame']['max']:.1f}], prefill {r['prefill_ms']['median']:.0f} ms")
    return f"{r['kind']}: " + json.dumps({k: v for k, v in r.items() if k not in ("env", "kernels")})[:160]


def ensure_openblas():
    """MLX's Linux CPU wheel bundles reference BLAS (~30x slower float32 matmuls): re-run this
    process with the system OpenBLAS preloaded when it is installed."""
    if platform.system() != "Linux" or OPENBLAS in os.environ.get("LD_PRELOAD", ""):
        return
    if not os.path.exists(OPENBLAS):
        print(f"note: {OPENBLAS} is missing (apt-get install libopenblas0-pthread): MLX float32 on the CPU "
              "will run on the bundled reference BLAS", file=sys.stderr)
        return
    preload = ":".join(p for p in (OPENBLAS, os.environ.get("LD_PRELOAD")) if p)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": preload})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repetitions, 0.6B only (~3 min)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="output folder (default bench/results)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="threads for both sides (torch.set_num_threads, BLAS/OpenMP pools); default 2")
    args = parser.parse_args()
    ensure_openblas()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    if not REF_PYTHON.exists():
        print(f"note: {REF_PYTHON} is missing (bash tests/run.sh creates it): measuring our side only",
              file=sys.stderr)
    bench = Bench(args, args.out)
    t0 = time.perf_counter()
    bench.emit(dict(kind="run", side="both", threads=args.threads, quick=args.quick, host=host_info(),
                    started=time.strftime("%Y-%m-%d %H:%M:%S"), text=TEXT,
                    prompt_ids={name: len(ids) for name, ids in bench.token_ids().items()}))
    bench.bandwidth()
    over = plan["overhead"]
    for threads in sorted({1, args.threads}):
        bench.compare("tiny", "float32", BOTH, over["frames"], over["reps"], threads, plan["stage_steps"],
                      profile=threads == args.threads)
    for case in plan["real"]:
        bench.compare(**case, threads=args.threads, stage_steps=plan["stage_steps"])
    for shape in plan["stream"]:
        bench.stream(shape)
    bench.codec(plan["codec_args"])
    from report import write_report

    write_report(bench.records, args.out, elapsed_s=time.perf_counter() - t0)
    print(f"wrote {args.out}/results.jsonl, results.md, results.png in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
