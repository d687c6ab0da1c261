"""A long fuzz run over every reader; prints and writes the figures (inputs, clean errors, crashes, hangs).

    LD_PRELOAD=... .venv/bin/python tests/fuzz/run_long.py --minutes 15 --out fuzz-report.json

Inputs are shared among the targets by their weights, in rounds, until the time is up (or --inputs
are done). Crashes and hangs are recorded, not raised, with the first lines of their tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import random

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import ensure_fixtures  # noqa: E402
from harness import STATS, probe  # noqa: E402
from targets import all_targets  # noqa: E402


def run_batch(target, examples: int, seed: int, start: int):
    """Inputs start..start+examples-1 of `target`: input i is drawn from random.Random(f"{seed}:{name}:{i}"),
    so any finding replays from its number."""
    for i in range(start, start + examples):
        case = target.generate(random.Random(f"{seed}:{target.name}:{i}"))
        if probe(target.name, lambda: target.run(case), strict=False, names=target.names) in ("crashes", "hangs"):
            STATS.failures[-1] = (*STATS.failures[-1][:2], f"input {i}: {STATS.failures[-1][2]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    parser.add_argument("--batch", type=int, default=200, help="inputs per target and round, times its weight")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="fuzz only these targets")
    args = parser.parse_args()
    start = time.monotonic()
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as work:  # many small writes
        targets = [t for t in all_targets(ensure_fixtures(), Path(work)) if not args.only or t.name in args.only]
        done = {t.name: 0 for t in targets}
        print(f"{len(targets)} targets ready in {time.monotonic() - start:.0f} s", flush=True)
        deadline = start + 60 * args.minutes
        while time.monotonic() < deadline:
            for t in targets:
                if time.monotonic() >= deadline or (args.inputs and STATS.summary()["total"]["inputs"] >= args.inputs):
                    break
                n = max(1, round(args.batch * t.weight))
                run_batch(t, n, args.seed, done[t.name])
                done[t.name] += n
            else:
                total = STATS.summary()["total"]
                print(f"{time.monotonic() - start:6.0f} s: {json.dumps(total)}", flush=True)
                continue
            break
    report = {**STATS.summary(), "seconds": round(time.monotonic() - start)}
    print(json.dumps({k: report[k] for k in ("total", "targets", "seconds")}, indent=1))
    for target, kind, detail in report["failures"][:10]:
        print(f"--- {target}: {kind}\n{detail}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    sys.exit(1 if report["total"]["crashes"] or report["total"]["hangs"] else 0)


if __name__ == "__main__":
    main()
