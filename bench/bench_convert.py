"""Conversion time and peak memory at a released shape (random weights in the Hugging Face layout).

    python bench/bench_convert.py [--shape 0.6b] [--bits 8] [--workdir DIR]

Writes the checkpoint once with the official classes (reference venv), then converts it in a
fresh process and reports wall time, the process's peak resident memory and the sizes.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def convert_in_child(source: Path, out: Path, bits: int | None) -> dict:
    code = ("import sys, time, resource; from mlx_qwen_tts_convert import convert_model; t = time.perf_counter(); "
            f"convert_model(sys.argv[1], sys.argv[2], bits={bits}, overwrite=True); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, str(source), str(out)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    seconds, max_rss_kb = proc.stdout.split()[-2:]
    return dict(convert_s=float(seconds), peak_rss_gb=int(max_rss_kb) / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="0.6b", choices=["0.6b", "1.7b"])
    ap.add_argument("--bits", type=int, default=8, choices=[0, 4, 8], help="0: no quantization")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "convert")
    args = ap.parse_args()
    source = args.workdir / f"hf-{args.shape}"
    if not source.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run([str(REF_PYTHON), str(ROOT / "bench" / "make_checkpoint.py"), args.shape, str(source)],
                       check=True, capture_output=True)
        print(f"wrote the random {args.shape} checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out = args.workdir / f"mlx-{args.shape}-{args.bits or 'float'}"
    result = convert_in_child(source, out, args.bits or None)
    record = dict(bench="convert", shape=args.shape, bits=args.bits or None, **result,
                  source_gb=folder_bytes(source) / 1e9, output_gb=folder_bytes(out) / 1e9,
                  device=str(mx.default_device()), mlx=mx.__version__, machine=platform.machine(),
                  cpus=os.cpu_count())
    record["peak_over_output"] = record["peak_rss_gb"] / record["output_gb"]
    print(json.dumps(record))


if __name__ == "__main__":
    main()
