"""Load on the real server: `mlx-qwen-tts serve` in a subprocess, N concurrent streaming clients.

For each server (the batched one, --max-batch 8 by default, and the same with --max-batch 1) and
each concurrency (1, 4, 8, 16 by default) every client sends `--requests` streamed pcm requests
one after the other (fixed seeds, EOS off, `--frames` frames each, so every request is the same
amount of work). Reports time to first byte p50/p95, per-request RTF (wall time / audio time)
p50/p95 and aggregate audio seconds per wall second. Then a soak on the batched server:
`--soak` streamed requests at concurrency 8, every 5th hung up after its first bytes, with the
server's resident memory before and after.

    .venv/bin/python bench/bench_server.py                 # tiny fixture; ~10 min on 2 busy cores
    .venv/bin/python bench/bench_server.py --model DIR --frames 40 --soak 0

Writes bench/results/server-<time>.json (git-ignored) and, with --copy, bench/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("MLX_QWEN_TTS_FIXTURES", ROOT / "tests" / ".fixtures"))
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."
BYTES_PER_S = 24000 * 2


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, model, *args, log):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlx_qwen_tts", "serve", "--model", str(model),
                                      "--port", str(self.port), "--ignore-eos", "--log-level", "warning",
                                      *map(str, args)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 300 s; see {log}")
            time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def one_request(client, url, seed, frames, hang_up=False):
    body = {"model": "tts-1", "input": TEXT, "voice": "vivian", "response_format": "pcm", "seed": seed,
            "max_frames": frames}
    started = time.perf_counter()
    ttfb, size = None, 0
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_raw():
            if ttfb is None and chunk:
                ttfb = time.perf_counter() - started
                if hang_up:
                    break
            size += len(chunk)
    elapsed = time.perf_counter() - started
    audio_s = size / BYTES_PER_S
    return {"ttfb_s": ttfb, "elapsed_s": elapsed, "audio_s": audio_s, "hung_up": hang_up}


async def load(url, clients, requests, frames, seed0):
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        errors = []

        async def worker(i):
            out = []
            for k in range(requests):
                try:
                    out.append(await one_request(client, url, seed0 + i * requests + k, frames))
                except (httpx.HTTPError, RuntimeError) as e:  # a failed request is counted, and the run goes on
                    errors.append({"seed": seed0 + i * requests + k, "error": " ".join(str(e).split())[:200]})
            return out

        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - started
    ttfb = [r["ttfb_s"] for r in results]
    rtf = [r["elapsed_s"] / r["audio_s"] for r in results if r["audio_s"]]
    audio = sum(r["audio_s"] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "ttfb_p50_s": round(percentile(ttfb, 0.5), 3), "ttfb_p95_s": round(percentile(ttfb, 0.95), 3),
            "rtf_p50": round(percentile(rtf, 0.5), 3), "rtf_p95": round(percentile(rtf, 0.95), 3),
            "audio_s": round(audio, 2), "audio_s_per_s": round(audio / wall, 3), "failed": errors}


async def soak(server, total, frames, concurrency=8):
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:  # warm: every batch size
        await asyncio.gather(*(one_request(client, server.url, 9_000 + i, frames) for i in range(2 * concurrency)))
    before = rss_mb(server.proc.pid)
    done = {"ok": 0, "hung_up": 0, "errors": 0}
    queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    r = await one_request(client, server.url, 10_000 + i, frames, hang_up=i % 5 == 4)
                    done["hung_up" if r["hung_up"] else "ok"] += 1
                except (httpx.HTTPError, RuntimeError):  # counted, not fatal: the soak reports them
                    done["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    deadline = time.monotonic() + 30
    while (h := httpx.get(f"{server.url}/health").json())["active_rows"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    after = rss_mb(server.proc.pid)
    return {"requests": total, **done, "wall_s": round(wall, 1), "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "rss_growth": round(after / before - 1, 4),
            "rows_after": h["active_rows"], "queued_after": h["queued"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(FIXTURES / "models" / "customvoice_0b6"))
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    parser.add_argument("--frames", type=int, default=24, help="frames per request (80 ms each)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true", help="skip the --max-batch 1 server")
    parser.add_argument("--soak", type=int, default=500)
    parser.add_argument("--soak-frames", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--copy", action="store_true", help="also write bench/server.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    clients = [int(c) for c in args.clients.split(",")]
    record = {"model": args.model, "frames": args.frames, "requests_per_client": args.requests,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_start": os.getloadavg()}, "servers": {}}
    for max_batch in (args.max_batch,) if args.no_baseline else (args.max_batch, 1):
        name = f"max_batch_{max_batch}"
        server = Server(args.model, "--max-batch", max_batch, log=args.out / f"server-{stamp}-{name}.log")
        try:
            rows = []
            for c in clients:
                row = asyncio.run(load(server.url, c, args.requests, args.frames, seed0=1000 * c))
                print(name, json.dumps(row), flush=True)
                rows.append(row)
            record["servers"][name] = rows
            if max_batch != 1 and args.soak:
                record["soak"] = asyncio.run(soak(server, args.soak, args.soak_frames))
                print("soak", json.dumps(record["soak"]), flush=True)
        finally:
            server.stop()
    by = {name: {r["clients"]: r for r in rows} for name, rows in record["servers"].items()}
    batched, single = by[f"max_batch_{args.max_batch}"], by.get("max_batch_1", {})
    targets = {}
    if 8 in batched and 8 in single:
        targets["aggregate_8_vs_max_batch_1"] = round(batched[8]["audio_s_per_s"] / single[8]["audio_s_per_s"], 2)
    if 8 in batched and 1 in batched:
        targets["p95_ttfb_8_vs_1_client"] = round(batched[8]["ttfb_p95_s"] / batched[1]["ttfb_p95_s"], 2)
    if "soak" in record:
        targets["soak_rss_growth"] = record["soak"]["rss_growth"]
    record["targets"] = targets
    record["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(record, indent=1)
    (args.out / f"server-{stamp}.json").write_text(text)
    if args.copy:
        (ROOT / "bench" / "server.json").write_text(text + "\n")
    print(json.dumps(targets))


if __name__ == "__main__":
    main()
