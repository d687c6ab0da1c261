"""The batched engine: throughput by batch size next to the official batch call (and mlx-audio's
batch_generate when its venv exists), long text with batched segments, continuous batching with
Poisson arrivals, and cold start. One command; JSON lines, and a markdown summary.

    python bench/bench_batch.py [--quick] [--out DIR] [--threads N]

Every number is from our public engine: `Batch.step` (the one compiled frame step) for
throughput, `synthesize` for long text, `Engine` for arrivals, a fresh `speak`-like process for
cold start (bench/cold_start.py). Definitions and recorded runs: bench/README.md.
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
from common import FRAME_MS, host_info  # noqa: E402
from run import REF_PYTHON, TEXT, Worker, ensure_openblas  # noqa: E402

# ~1,500 characters of ordinary prose (the seed benchmark's long text is in common.TEXTS)
PASSAGE = " ".join([
    "The lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had.",
    "There were one hundred and twelve of them, worn smooth in the middle by a century of boots.",
    "At the top he trimmed the wick, polished the great lens and watched the first ships turn for the harbour.",
    "Storms came often in the autumn, and on those nights he did not sleep at all.",
    "He kept a logbook of every vessel he saw, its flag, its heading and the hour it passed the point.",
    "Years later the logbooks filled a whole shelf in the village library, and children came to read them.",
    "They found storms and rescues, a whale that followed a fishing boat for three days, and a ship of",
    "musicians who played for the keeper as they sailed past in the fog.",
    "When the light was finally automated, the keeper moved into a small house by the water.",
    "He still walked to the point each evening, out of habit, to see the beam sweep across the waves.",
    "Nobody needed him to count the ships any more, but he counted them anyway, and wrote them down.",
    "On his last page he wrote that the sea had been good company, and that the light had never once failed.",
    "The village kept the lamp room as he left it, with his chair by the window and his pen on the desk.",
    "Visitors still climb the hundred and twelve steps on summer afternoons to look out over the water.",
    "Some of them count the steps aloud, the way he did, and lose count somewhere near the top.",
    "From the window they can see the harbour, the fishing boats, and on clear days the far islands.",
])
SIZES = (1, 2, 4, 8, 16)
# (shape, precision, frames[, batch sizes]): an 8-bit CPU prefill takes ~9 s a row, so 8-bit at two sizes
FULL = dict(throughput=[("tiny", "float32", 40), ("0.6b", "float32", 4), ("0.6b", "8bit", 3, (1, 8))],
            official=[("tiny", "float32", 40), ("0.6b", "float32", 4)],
            long_text=[("tiny", 24), ("0.6b", 6)], arrivals=[("tiny", 20, 16)], cold=["tiny", "0.6b"])
QUICK = dict(throughput=[("tiny", "float32", 20)], official=[("tiny", "float32", 20)],
             long_text=[("tiny", 12)], arrivals=[("tiny", 8, 12)], cold=["tiny"])


class Bench:
    def __init__(self, out: Path, threads: int):
        self.threads, self.records = threads, []
        self.jsonl = open(out / "batch.jsonl", "w")
        self.log = open(out / "batch_workers.log", "w")

    def emit(self, record):
        self.records.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        print(json.dumps({k: v for k, v in record.items() if k != "env"})[:240], flush=True)

    def throughput(self, side, shape, precision, frames, sizes=SIZES):
        if side == "official" and not REF_PYTHON.exists():
            return
        worker = Worker(side, self.threads, self.log)
        extra = {}
        if side == "official":
            from shapes import FIXTURE
            from mlx_qwen_tts.tokenizer import TextTokenizer
            from common import TEXTS
            tok = TextTokenizer(FIXTURE)
            extra = dict(token_ids={n: tok.encode(f"<|im_start|>assistant\n{t}<|im_end|>\n<|im_start|>assistant\n")
                                    for n, t in TEXTS.items()})
        worker.call("build", shape=shape, precision=precision, threads=self.threads, seed=0, text=TEXT, **extra)
        for size in sizes:
            worker.call("batch", batch_size=size, frames=2, seed=0)  # warm-up at this size (both sides)
            out = worker.call("batch", batch_size=size, frames=frames, seed=1)
            ms = out["frame_s"] * 1e3
            self.emit(dict(kind="throughput", side=side, shape=shape, precision=precision, batch=size,
                           frames=frames, ms_per_step=ms, frames_per_s=size * 1000 / ms,
                           **{k: v for k, v in out.items() if k not in ("frame_s", "frames")}))
        worker.call("finish", **(dict(stage_steps=1, seed=0) if side == "ours" else {}))
        worker.close()

    def long_text(self, shape, max_frames):
        from common import TEXTS
        for name, text in (("seed long (ru)", TEXTS["long"]), ("passage 1500 chars", PASSAGE)):
            worker = Worker("ours", self.threads, self.log)
            out = worker.call("long_text", shape=shape, precision="float32", threads=self.threads, text=text,
                              max_frames=max_frames, max_batch=16)
            worker.close()
            self.emit(dict(kind="long_text", shape=shape, text=name, chars=len(text), max_frames=max_frames,
                           speedup=out["sequential"]["seconds"] / out["batched"]["seconds"], **out))

    def arrivals(self, shape, requests, max_frames):
        for concurrency in (1, 4, 8):
            worker = Worker("ours", self.threads, self.log)
            out = worker.call("arrivals", shape=shape, precision="float32", threads=self.threads,
                              concurrency=concurrency, requests=requests, max_frames=max_frames, seed=7)
            worker.close()
            first = sorted(r["first_audio_s"] for r in out["requests"])
            audio = sum(r["audio_s"] for r in out["requests"])
            self.emit(dict(kind="arrivals", shape=shape, concurrency=concurrency, requests=requests,
                           max_frames=max_frames, ttfa_p50_s=statistics.median(first),
                           ttfa_p95_s=first[min(len(first) - 1, round(0.95 * (len(first) - 1)))],
                           aggregate_rtf=out["wall_s"] / audio, service_s=out["service_s"], env=out["env"]))

    def cold(self, shape):
        runs = "3" if shape == "tiny" else "1"  # a real-shape start builds 0.6B random weights first
        proc = subprocess.run([sys.executable, str(BENCH / "cold_start.py"), "--shape", shape, "--runs", runs],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        self.emit(json.loads(proc.stdout.strip().splitlines()[-1]))


def summary(records) -> str:
    lines = ["| shape | precision | side | " + " | ".join(f"B={b}" for b in SIZES) + " | B=8 ÷ B=1 | B=16 ÷ B=1 |",
             "|---" * (len(SIZES) + 5) + "|"]
    groups = {}
    for r in records:
        if r["kind"] == "throughput":
            groups.setdefault((r["shape"], r["precision"], r["side"]), {})[r["batch"]] = r["frames_per_s"]
    for (shape, precision, side), by in groups.items():
        cells = [f"{by[b]:.1f}" if b in by else "–" for b in SIZES]
        lines.append(f"| {shape} | {precision} | {side} | " + " | ".join(cells)
                     + f" | {by.get(8, 0) / by[1]:.1f}× | {by.get(16, 0) / by[1]:.1f}× |")
    lines += ["", "aggregate frames/s (one frame = 80 ms of audio per row; real time = 12.5 frames/s per row); "
              f"1 frame = {FRAME_MS:.0f} ms", ""]
    for r in records:
        if r["kind"] == "long_text":
            lines.append(f"- long text {r['shape']} «{r['text']}» ({r['batched']['segments']} segments × "
                         f"{r['max_frames']} frames): batched {r['batched']['seconds']:.1f} s, one after another "
                         f"{r['sequential']['seconds']:.1f} s: **{r['speedup']:.2f}×**")
        elif r["kind"] == "arrivals":
            lines.append(f"- arrivals {r['shape']} ~{r['concurrency']} concurrent, {r['requests']} requests: "
                         f"TTFA p50 {r['ttfa_p50_s'] * 1e3:.0f} ms, p95 {r['ttfa_p95_s'] * 1e3:.0f} ms, "
                         f"aggregate RTF {r['aggregate_rtf']:.3f}")
        elif r["kind"] == "cold_start":
            m = r["median"]
            lines.append(f"- cold start {r['shape']}: {m['total_s']:.2f} s to first audio (interpreter "
                         f"{m['interpreter_s']:.2f}, imports {m['imports_s']:.2f}, load {m['load_s']:.2f}, "
                         f"compile + prefill + first chunk {m['first_audio_after_load_s']:.2f})")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="sections: throughput long_text arrivals cold")
    parser.add_argument("--shapes", nargs="*", help="only these shapes (tiny, 0.6b) in every section")
    args = parser.parse_args()
    ensure_openblas()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    if args.shapes:
        plan = {k: [c for c in v if (c if isinstance(c, str) else c[0]) in args.shapes] for k, v in plan.items()}
    only = set(args.only or ("throughput", "long_text", "arrivals", "cold"))
    bench = Bench(args.out, args.threads)
    bench.emit(dict(kind="run", started=time.strftime("%Y-%m-%d %H:%M:%S"), quick=args.quick, host=host_info()))
    if "throughput" in only:
        for shape, precision, frames, *sizes in plan["throughput"]:
            bench.throughput("ours", shape, precision, frames, *sizes)
        for shape, precision, frames in plan["official"]:
            bench.throughput("official", shape, precision, frames)
    if "long_text" in only:
        for shape, frames in plan["long_text"]:
            bench.long_text(shape, frames)
    if "arrivals" in only:
        for shape, requests, frames in plan["arrivals"]:
            bench.arrivals(shape, requests, frames)
    if "cold" in only:
        for shape in plan["cold"]:
            bench.cold(shape)
    text = summary(bench.records)
    (args.out / "batch.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
