"""The benchmark half of bench/device_check.sh: what a GPU (Metal, or MLX's CUDA backend) does with our
frame loop, next to mlx-audio 0.6.2 on the same machine. One JSON file and one Markdown table.

    python bench/device_bench.py --out DIR [--dry-run] [--tests-xml FILE] [--no-mlx-audio]

Sections (each run by the bench workers, bench/ours.py and bench/mlx_audio_side.py):
- throughput: `Batch.step` at B = 1..16, 0.6B in bfloat16 and 8-bit (steady-state ms per batched
  frame and aggregate frames/s);
- b1: ms/frame of the B = 1 generation loop, ours and mlx-audio alternating (same weights' shapes and
  precision; mlx-audio loads a random official-layout folder that ours writes);
- first_audio: time from `stream()` to its first audio chunk (the released codec's shape);
- buffers (Metal only): ours' B = 1 ms/frame under MLX_MAX_OPS_PER_BUFFER / MLX_MAX_MB_PER_BUFFER
  settings (a fresh worker per setting: MLX reads them at start).
--dry-run rehearses every section on this machine's CPU at the tiny fixture's shape, with few frames
(the buffer sweep too, although the variables only matter on Metal).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import WorkerProcess, spread  # noqa: E402
from mlx_audio_side import VENV, relaunch_env  # noqa: E402 (pure Python at import)

SWEEP = [(None, None), (100, 100), (200, 200), (400, 400), (1000, 400)]  # (ops, MB) per command buffer


def plan(dry_run: bool) -> dict:
    if dry_run:
        return dict(shape="tiny", precisions=["float32"], batches=[1, 2, 4], frames=6, reps=2, stream_reps=1,
                    sweep=SWEEP[:2])
    return dict(shape="0.6b", precisions=["bfloat16", "8bit"], batches=[1, 2, 4, 8, 12, 16], frames=40, reps=5,
                stream_reps=3, sweep=SWEEP)


def worker(name, log, threads, env_extra=None):
    env = {**relaunch_env(threads), **(env_extra or {})}
    if name == "ours":
        return WorkerProcess("ours", [sys.executable, BENCH / "ours.py"], env, log, BENCH)
    return WorkerProcess("mlx-audio", [VENV / "bin" / "python", BENCH / "mlx_audio_side.py"], env, log, BENCH)


def throughput(p, log, threads) -> list:
    out = []
    for precision in p["precisions"]:
        ours = worker("ours", log, threads)
        ours.call("build", shape=p["shape"], precision=precision, threads=threads, text="short", seed=0)
        for b in p["batches"]:
            ours.call("batch", batch_size=b, frames=2, seed=0)  # traces the step for this batch size
            runs = [ours.call("batch", batch_size=b, frames=p["frames"], seed=r + 1) for r in range(p["reps"])]
            out.append(dict(precision=precision, batch_size=b, step_ms=spread([r["frame_s"] * 1e3 for r in runs]),
                            frames_per_s=spread([b / r["frame_s"] for r in runs]),
                            peak_mlx_gb=max(r["peak_mlx_gb"] for r in runs)))
        env = ours.call("finish", stage_steps=1, seed=0)["env"]
        ours.close()
    return out, env


def b1_compare(p, log, threads, with_mlx_audio: bool, tmp: Path) -> list:
    out = []
    for precision in p["precisions"]:
        ours = worker("ours", log, threads)
        ours.call("build", shape=p["shape"], precision=precision, threads=threads, text="short", seed=0)
        sides = dict(ours=ours)
        if with_mlx_audio:
            path = None
            if p["shape"] != "tiny":
                path = ours.call("checkpoint", shape=p["shape"], out=str(tmp / f"official_{p['shape']}"))["path"]
            theirs = worker("mlx-audio", log, threads)
            theirs.call("build", shape=p["shape"], precision=precision, threads=threads, text="short", seed=0,
                        path=path)
            sides["mlx_audio"] = theirs
        for w in sides.values():
            w.call("rep", frames=p["frames"], seed=0)  # untimed: every shape of the run seen once
        ms = {name: [] for name in sides}
        for rep in range(p["reps"]):  # alternating: both sides see the same load
            for name, w in sides.items():
                ms[name].append(w.call("rep", frames=p["frames"], seed=rep + 1)["frame_s"] * 1e3)
        row = dict(precision=precision, frames=p["frames"], **{f"{n}_ms": spread(v) for n, v in ms.items()})
        if "mlx_audio" in ms:
            row["mlx_audio_over_ours"] = spread([t / o for t, o in zip(ms["mlx_audio"], ms["ours"])])
        out.append(row)
        for w in sides.values():
            w.call("finish", stage_steps=1, seed=0)
            w.close()
    return out


def first_audio(p, log, threads) -> list:
    out = []
    for precision in p["precisions"]:
        ours = worker("ours", log, threads)
        r = ours.call("stream", shape=p["shape"], precision=precision, threads=threads, text="short",
                      reps=p["stream_reps"], max_frames=p["frames"])
        ours.close()
        out.append(dict(precision=precision, first_audio_s=spread([x["first_audio_s"] for x in r["runs"]]),
                        frames_before=r["runs"][0]["frames"], prefill_s=spread(r["prefill_s"])))
    return out


def buffers(p, log, threads) -> list:
    out = []
    precision = p["precisions"][-1]
    for ops, mb in p["sweep"]:
        extra = {} if ops is None else dict(MLX_MAX_OPS_PER_BUFFER=str(ops), MLX_MAX_MB_PER_BUFFER=str(mb))
        ours = worker("ours", log, threads, extra)
        ours.call("build", shape=p["shape"], precision=precision, threads=threads, text="short", seed=0)
        ours.call("rep", frames=p["frames"], seed=0)
        ms = [ours.call("rep", frames=p["frames"], seed=r + 1)["frame_s"] * 1e3 for r in range(p["reps"])]
        ours.close()
        out.append(dict(precision=precision, ops_per_buffer=ops or "default", mb_per_buffer=mb or "default",
                        ms_per_frame=spread(ms)))
    return out


def test_summary(xml_path) -> dict | None:
    if not xml_path or not Path(xml_path).is_file():
        return None
    suite = ET.parse(xml_path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return dict(tests=int(suite.get("tests", 0)), failures=int(suite.get("failures", 0)),
                errors=int(suite.get("errors", 0)), skipped=int(suite.get("skipped", 0)),
                seconds=float(suite.get("time", 0)), failed=failed[:50])


def markdown(r) -> str:
    def m(s):
        return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    env = r["env"]
    lines = [f"# Device check ({env.get('device')}, MLX {env.get('mlx')}, {r['plan']['shape']}"
             f"{', dry run' if r['dry_run'] else ''})", ""]
    t = r.get("tests")
    if t:
        lines += [f"Test suite on the {r['tests_device']} stream: {t['tests']} tests, {t['failures']} failures, "
                  f"{t['errors']} errors, {t['skipped']} skipped ({t['seconds']:.0f} s)", ""]
        lines += [f"- failed: {name}" for name in t["failed"]] + ([""] if t["failed"] else [])
    lines += ["| precision | B | ms per batched frame | aggregate frames/s | peak MLX GB |", "|---|---|---|---|---|"]
    lines += [f"| {x['precision']} | {x['batch_size']} | {m(x['step_ms'])} | {m(x['frames_per_s'])} | "
              f"{x['peak_mlx_gb']:.2f} |" for x in r["throughput"]]
    lines += ["", "| precision | ours ms/frame (B = 1) | mlx-audio ms/frame | mlx-audio ÷ ours |", "|---|---|---|---|"]
    lines += [f"| {x['precision']} | {m(x['ours_ms'])} | {m(x['mlx_audio_ms']) if 'mlx_audio_ms' in x else '–'} | "
              f"{m(x['mlx_audio_over_ours']) if 'mlx_audio_over_ours' in x else '–'} |" for x in r["b1"]]
    lines += ["", "| precision | time to first audio, s | frames before it | prefill s |", "|---|---|---|---|"]
    lines += [f"| {x['precision']} | {m(x['first_audio_s'])} | {x['frames_before']} | {m(x['prefill_s'])} |"
              for x in r["first_audio"]]
    if r.get("buffers"):
        lines += ["", "| MLX_MAX_OPS_PER_BUFFER | MLX_MAX_MB_PER_BUFFER | ms/frame (B = 1) |", "|---|---|---|"]
        lines += [f"| {x['ops_per_buffer']} | {x['mb_per_buffer']} | {m(x['ms_per_frame'])} |" for x in r["buffers"]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="rehearse on the CPU at the tiny shape")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--tests-xml", type=Path, help="the test suite's JUnit XML (device_check.sh)")
    ap.add_argument("--tests-device", default="gpu")
    ap.add_argument("--no-mlx-audio", action="store_true")
    args = ap.parse_args()
    p = plan(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    with_mlx_audio = not args.no_mlx_audio and (VENV / "bin" / "python").exists()
    t0 = time.perf_counter()
    with open(args.out / "workers.log", "w") as log, tempfile.TemporaryDirectory(prefix="device_bench_") as tmp:
        rows, env = throughput(p, log, args.threads)
        print(f"# throughput done ({time.perf_counter() - t0:.0f} s)", flush=True)
        r = dict(dry_run=args.dry_run, plan=p, env=env, tests=test_summary(args.tests_xml),
                 tests_device=args.tests_device, throughput=rows)
        r["b1"] = b1_compare(p, log, args.threads, with_mlx_audio, Path(tmp))
        r["mlx_audio"] = "compared" if with_mlx_audio else f"skipped ({VENV} missing or --no-mlx-audio)"
        print(f"# B = 1 comparison done ({time.perf_counter() - t0:.0f} s)", flush=True)
        r["first_audio"] = first_audio(p, log, args.threads)
        if env.get("device") == "metal" or args.dry_run:
            r["buffers"] = buffers(p, log, args.threads)
    r["seconds"] = time.perf_counter() - t0
    (args.out / "device-check.json").write_text(json.dumps(r, indent=1) + "\n")
    (args.out / "device-check.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
