"""Ours vs mlx-audio 0.6.2 on the tiny fixture: the generation loop's ms/frame at B = 1 with the
two sides' repetitions alternating (same machine load), then mlx-audio's `batch_generate` at each
batch size (aggregate frames/s). Written as JSON lines and a short summary.

    python bench/mlx_audio_compare.py [--frames 60] [--reps 3] [--threads 1] [--batch 1,2,4,8,16]
                                      [--batch-frames 40] [--batch-reps 2] [--ours-root DIR] [--out FILE]

Ours is bench/ours.py (the worker bench/run.py uses: generate_frames for B = 1, the public
`Batch.step` for batches), run by --ours-root's .venv (default: this checkout's); mlx-audio is
bench/mlx_audio_side.py in .venv-mlxaudio (made by bench/mlx_audio_env.sh when missing). Both
load the same fixture, get the same thread count and the system OpenBLAS preloaded, and make one
untimed run of the full frame count before the timed ones. mlx-audio's codec decode is stubbed
(see bench/mlx_audio_side.py), ours does not run the codec: both times are the talker and
code-predictor loop only.
"""

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import WorkerProcess, spread  # noqa: E402
from mlx_audio_side import ensure_venv, relaunch_env  # noqa: E402 (pure Python at import)
from shapes import ROOT  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", default="1,2,4,8,16", help="mlx-audio batch sizes ('' for none)")
    ap.add_argument("--batch-frames", type=int, default=40)
    ap.add_argument("--batch-reps", type=int, default=2)
    ap.add_argument("--ours-root", type=Path, default=ROOT, help="checkout whose .venv runs ours")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="a second checkout of ours (e.g. main) alternating with the two sides at B = 1")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines (default: stdout only)")
    ap.add_argument("--log", type=Path, default=Path("/tmp/mlx_audio_compare.log"), help="the workers' stderr")
    args = ap.parse_args()


    def ours_worker(name, root):
        python = root / ".venv" / "bin" / "python"
        env = {**relaunch_env(args.threads), "PYTHONPATH": str(root)}  # that checkout's package, not this one's
        return WorkerProcess(name, [python if python.exists() else sys.executable, root / "bench" / "ours.py"], env,
                             log, BENCH)

    records = []
    out = open(args.out, "w") if args.out else None

    def emit(record):
        records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    with open(args.log, "w") as log:
        theirs = WorkerProcess("mlx-audio", [ensure_venv(), BENCH / "mlx_audio_side.py"], relaunch_env(args.threads),
                               log, BENCH)
        ours = ours_worker("ours", args.ours_root)
        workers = dict(ours=ours, mlx_audio=theirs)
        if args.baseline_root:
            workers["ours_baseline"] = ours_worker("ours_baseline", args.baseline_root)
        for w in workers.values():
            w.call("build", shape="tiny", precision="float32", threads=args.threads, text="short", seed=0)
            w.call("rep", frames=args.frames, seed=0)  # untimed: every shape of the full run seen once
        reps = {name: [] for name in workers}
        for rep in range(args.reps):
            for name, w in workers.items():
                reps[name].append(w.call("rep", frames=args.frames, seed=rep + 1)["frame_s"] * 1e3)
        for name, ms in reps.items():
            emit(dict(kind="generate", side=name, frames=args.frames, threads=args.threads, ms_per_frame=spread(ms),
                      ms_per_frame_reps=ms))
        for name in reps:
            if name != "ours":  # per alternating pair: the other side's time over ours
                emit(dict(kind="pair_ratio", side=name, over="ours", ratio=spread(
                    [t / o for t, o in zip(reps[name], reps["ours"])])))
        for b in [int(x) for x in args.batch.split(",") if x]:
            ours.call("batch", batch_size=b, frames=2, seed=0)  # traces the step for this batch size
            mine, runs = [], []
            for rep in range(args.batch_reps):  # alternating: both sides see the same load
                mine.append(ours.call("batch", batch_size=b, frames=args.batch_frames, seed=rep + 1)["frame_s"])
                runs.append(theirs.call("batch", batch_size=b, frames=args.batch_frames, seed=rep + 1))
            emit(dict(kind="batch", side="ours", batch_size=b, frames=args.batch_frames, threads=args.threads,
                      step_ms=spread([t * 1e3 for t in mine]), steady_frames_per_s=spread([b / t for t in mine])))
            emit(dict(kind="batch", side="mlx_audio", batch_size=b, frames=args.batch_frames, threads=args.threads,
                      total_s=spread([r["total_s"] for r in runs]),
                      step_ms=spread([r["step_s"] * 1e3 for r in runs]),
                      frames_per_s=spread([sum(r["frames"]) / r["total_s"] for r in runs]),
                      steady_frames_per_s=spread([b / r["step_s"] for r in runs])))
        envs = dict(ours=ours.call("finish", stage_steps=1, seed=0)["env"])
        ours.close()
        envs["mlx_audio"] = theirs.call("finish")["env"]
        theirs.close()
        if args.baseline_root:
            workers["ours_baseline"].close()
    emit(dict(kind="env", **envs))
    for r in records:
        if r["kind"] == "generate":
            m = r["ms_per_frame"]
            print(f"# {r['side']:>9} B=1: {m['median']:6.1f} ms/frame [{m['min']:.1f}-{m['max']:.1f}] "
                  f"({r['frames']} frames, {m['n']} reps, {r['threads']} thread(s))")
        elif r["kind"] == "pair_ratio":
            m = r["ratio"]
            print(f"# {r['side']} / ours per pair: {m['median']:.2f}x [{m['min']:.2f}-{m['max']:.2f}]")
        elif r["kind"] == "batch":
            print(f"# {r['side']:>9} B={r['batch_size']:<2}: {r['steady_frames_per_s']['median']:6.1f} frames/s "
                  f"aggregate in steady state, {r['step_ms']['median']:.1f} ms/step")


if __name__ == "__main__":
    main()
