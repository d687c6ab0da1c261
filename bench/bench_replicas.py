"""Replicas behind HAProxy on this machine (deploy/haproxy.cfg, addresses replaced; tests/fleet.py).

1. One vs two replicas behind HAProxy: `--clients` concurrent streaming clients, each sending
   `--requests` pcm requests of `--frames` frames (EOS off: every request is the same work);
   aggregate audio seconds per wall second, time to first byte p50/p95. Fleets: one replica with
   `--max-batch` rows, one with twice the rows, two with `--max-batch` rows each.
2. The balancer's added time to first byte: idle, short requests alternately direct and through
   HAProxy; the difference of the medians.
3. The fan-out client (`speak --server`) on a long text against one server: wall time and audio
   seconds per second at --concurrency 1 and 4 (EOS off: each segment runs to the server's
   --max-seconds-per-request, 12 s, the same work at both concurrencies).

    .venv/bin/python bench/bench_replicas.py --out bench/runs/2026-12-05/replicas.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fleet import HAProxy, Replica  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import write_report  # noqa: E402

FIXTURES = Path(os.environ.get("MLX_QWEN_TTS_FIXTURES", ROOT / "tests" / ".fixtures"))
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."
BOOK = " ".join(f"This is sentence {i} of the book." for i in range(12))
BYTES_PER_S = 24000 * 2


def percentile(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stream(url: str, frames: int, seed: int) -> tuple[float, int, str]:
    started = time.perf_counter()
    body = {"input": TEXT, "voice": "ryan", "response_format": "pcm", "seed": seed, "max_frames": frames}
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        ttfb, size = None, 0
        for chunk in r.iter_raw():
            ttfb = ttfb if ttfb is not None else time.perf_counter() - started
            size += len(chunk)
        return ttfb, size, r.headers["x-replica"]


def load(url: str, clients: int, requests: int, frames: int) -> dict:
    def client(c):
        return [stream(url, frames, 1000 * c + i) for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - started
    ttfbs = [t for t, _, _ in results]
    audio = sum(size for _, size, _ in results) / BYTES_PER_S
    replicas = sorted({r for _, _, r in results})
    return {"clients": clients, "requests": len(results), "frames": frames, "wall_s": round(wall, 2),
            "audio_s": round(audio, 2), "audio_s_per_s": round(audio / wall, 3),
            "ttfb_p50_s": round(percentile(ttfbs, 0.5), 3), "ttfb_p95_s": round(percentile(ttfbs, 0.95), 3),
            "served_by": {r: sum(1 for *_, x in results if x == r) for r in replicas}}


def fleet(folder: Path, count: int, max_batch: int) -> tuple[list[Replica], HAProxy]:
    # EOS off; a fan-out segment (no max_frames) stops at --max-seconds-per-request
    args = ["--max-batch", max_batch, "--max-queue", max_batch, "--ignore-eos", "--max-seconds-per-request", 12,
            "--log-level", "warning"]
    model = FIXTURES / "models" / "customvoice_0b6"
    replicas = [Replica(f"r{i + 1}", model, args, folder).start() for i in range(count)]
    for r in replicas:
        r.wait_ready()
    lb = HAProxy(folder, replicas, max_batch, queue_depth=256)
    deadline = time.monotonic() + 30
    while not all(lb.server_up(r.name) for r in replicas) and time.monotonic() < deadline:
        time.sleep(0.1)
    return replicas, lb


def stop(replicas, lb):
    lb.stop()
    for r in replicas:
        r.stop()


def fan_out(url: str, folder: Path, concurrency: int) -> dict:
    book, out = folder / "book.txt", folder / f"book-{concurrency}.wav"
    book.write_text(BOOK)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlx_qwen_tts", "speak", "--server", url, "--file", str(book), "--out",
                    str(out), "--voice", "ryan", "--seed", "1", "--segment-tokens", "40", "--concurrency",
                    str(concurrency)], check=True, capture_output=True)
    wall = time.perf_counter() - started
    audio = sf.info(str(out)).duration
    return {"concurrency": concurrency, "chars": len(BOOK), "wall_s": round(wall, 2), "audio_s": round(audio, 2),
            "audio_s_per_s": round(audio / wall, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_start": os.getloadavg()}, "model": "tiny fixture customvoice_0b6 (random)",
              "settings": vars(a) | {"out": str(a.out)}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for count, rows in ((1, a.max_batch), (1, 2 * a.max_batch), (2, a.max_batch)):
            name = f"replicas_{count}x{rows}"
            (folder / name).mkdir()
            replicas, lb = fleet(folder / name, count, rows)
            try:
                load(lb.url, 2, 1, 8)  # warm the connections
                result[name] = row = load(lb.url, a.clients, a.requests, a.frames)
                print(f"{name}: {row}", flush=True)
                if name != f"replicas_1x{a.max_batch}":
                    continue
                pairs = []
                for i in range(20):  # alternate which goes first: the machine's load drifts
                    urls = (replicas[0].url, lb.url) if i % 2 == 0 else (lb.url, replicas[0].url)
                    first, second = (stream(url, 8, i)[0] for url in urls)
                    pairs.append((first, second) if i % 2 == 0 else (second, first))
                direct, through = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
                result["lb_added_ttfb"] = {"pairs": len(pairs), "direct_median_s": round(direct, 4),
                                           "haproxy_median_s": round(through, 4), "added_s": round(through - direct, 4)}
                print(f"added time to first byte: {result['lb_added_ttfb']}", flush=True)
                result["fan_out_single_server"] = [fan_out(replicas[0].url, folder, c) for c in (1, 4)]
                print(f"fan-out: {result['fan_out_single_server']}", flush=True)
            finally:
                stop(replicas, lb)
    one, more = result[f"replicas_1x{a.max_batch}"], result[f"replicas_2x{a.max_batch}"]
    result["ratio_two_vs_one"] = round(more["audio_s_per_s"] / one["audio_s_per_s"], 3)
    result["ratio_two_vs_one_same_rows"] = round(
        more["audio_s_per_s"] / result[f"replicas_1x{2 * a.max_batch}"]["audio_s_per_s"], 3)
    result["machine"]["load_avg_end"] = os.getloadavg()
    write_report(result, a.out)


if __name__ == "__main__":
    main()
