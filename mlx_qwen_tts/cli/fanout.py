"""`speak --server URL --file book.txt --out book.flac`: a long text rendered by a server or a
fleet of them (through its load balancer), segment by segment, several at once.

Each segment is one `POST /v1/audio/speech` (raw 24 kHz s16le) with the same voice and its own
seed (the job's seed plus the segment's index), so a segment's audio depends only on its inputs.
It is kept under a hash of those inputs (`.NAME.segments/`, beside the output, written
atomically), so a job that is interrupted, killed or restarted redoes only the segments it had
not finished. Busy (429), failing (5xx) or unreachable servers are retried, honouring
`Retry-After`; a request the server refuses (other 4xx) stops the job with its message. The
segments are joined in order into one output file, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import click

from mlx_qwen_tts.cli.common import utf8_text
from mlx_qwen_tts.text import MIN_SEGMENT_TOKENS, SEGMENT_TOKENS, split_text

SAMPLE_RATE = 24000
MAX_RETRY_WAIT_S = 30.0


class ServerRefused(click.ClickException):
    """The server answered 4xx (not 429): retrying would not help."""


def remote_options(command):
    """`speak`'s options for rendering through a server."""
    for option in reversed([
        click.option("--server", metavar="URL", callback=utf8_text,
                     help="Render through a running `serve` (or the load balancer of several): segments are sent "
                          "concurrently, retried, and kept so that a rerun resumes; needs --out."),
        click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 256),
                     help="With --server: segments in flight at once (about the rows of the fleet)."),
        click.option("--segment-tokens", default=SEGMENT_TOKENS, show_default=True,
                     type=click.IntRange(MIN_SEGMENT_TOKENS, 4096),
                     help="With --server: the longest segment, in tokens (UTF-8 bytes; ~characters of English), "
                          "split at sentences."),
        click.option("--api-key", envvar="MLX_QWEN_TTS_API_KEY", show_envvar=True, callback=utf8_text,
                     help="With --server: its key."),
    ]):
        command = option(command)
    return command


def speak_remote(text: str, *, out, play, clone: dict, max_seconds, remote: dict, **request) -> Path:
    """`speak --server`: the checks that differ from a local run, then `render`."""
    if out is None or play:
        raise click.ClickException("--server renders to a file: give --out FILE (no playback)")
    if any(v is not None for v in clone.values()):
        raise click.ClickException("with --server, clone with a voice registered on the server: --voice NAME "
                                   "(POST /v1/audio/voices)")
    if max_seconds is not None:
        raise click.ClickException("--max-seconds does not work with --server")
    return render(text, out=out, server=remote["server"], concurrency=remote["concurrency"],
                  segment_tokens=remote["segment_tokens"], api_key=remote["api_key"], **request)


def segment_seed(seed: int, index: int) -> int:
    return (seed + index) % 2 ** 63


def job_seed(text: str) -> int:
    """The seed when none is given: from the text, so that a rerun finds its segments again."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


class Segments:
    """The segment requests of one job and their cache of finished audio."""

    def __init__(self, texts: list[str], request: dict, model_id: str, cache: Path):
        self.texts, self.request, self.cache = texts, request, cache
        self.bodies = [{**request, "input": text, "seed": segment_seed(request["seed"], i)}
                       for i, text in enumerate(texts)]
        self.paths = [cache / f"{i:05d}-{self._key(body, model_id)}.pcm" for i, body in enumerate(self.bodies)]

    @staticmethod
    def _key(body: dict, model_id: str) -> str:
        return hashlib.sha256(json.dumps([model_id, body], sort_keys=True).encode()).hexdigest()[:20]

    def missing(self) -> list[int]:
        return [i for i, path in enumerate(self.paths) if not path.exists()]

    def save(self, index: int, data: bytes) -> None:
        from mlx_qwen_tts.atomic import atomic_file

        with atomic_file(self.paths[index]) as tmp:
            tmp.write_bytes(data)


def _retry_wait(response, attempt: int) -> float:
    try:
        return min(float(response.headers["retry-after"]), MAX_RETRY_WAIT_S)
    except (AttributeError, KeyError, ValueError):
        return min(2.0 ** attempt, MAX_RETRY_WAIT_S)


def _refusal(response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or f"HTTP {response.status_code}"


def fetch(client, url: str, body: dict, retries: int, stop: threading.Event) -> bytes:
    """One segment's raw audio, retrying what may succeed later."""
    import httpx

    for attempt in range(retries + 1):
        response = None
        try:
            response = client.post(url, json=body)
            if response.status_code == 200 and len(response.content) % 2 == 0:
                return response.content
            if response.status_code not in (408, 429) and response.status_code < 500:
                raise ServerRefused(f"the server refused segment {body['input'][:40]!r}: {_refusal(response)}")
            problem = f"HTTP {response.status_code}"
        except httpx.TransportError as e:  # unreachable, or the stream was cut (a replica went away)
            problem = type(e).__name__
        if attempt == retries:
            raise click.ClickException(f"a segment failed {retries + 1} times ({problem}); run the same command "
                                       "again to resume")
        if stop.wait(_retry_wait(response, attempt)):
            break
    raise click.ClickException("stopped")


def render(text: str, *, server: str, out: Path, voice: str | None, language: str, instruct: str | None,
           sampling: dict, segment_tokens: int, concurrency: int, api_key: str | None, progress: bool,
           retries: int = 8, timeout_s: float = 600.0) -> Path:
    import httpx
    from tqdm import tqdm

    from mlx_qwen_tts import audio

    audio.check_writable(out)
    server = server.rstrip("/")
    base = server if server.endswith("/v1") else f"{server}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    seed = sampling["seed"] if sampling.get("seed") is not None else job_seed(text)
    request = {"voice": voice, "language": language, "instructions": instruct, "response_format": "pcm",
               **{k: v for k, v in sampling.items() if v is not None and v is not False}, "seed": seed}
    request = {k: v for k, v in request.items() if v is not None}
    with httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0)) as client:
        try:
            models = client.get(f"{base}/models")
        except httpx.TransportError as e:
            raise click.ClickException(f"cannot reach the server at {server}: {e}") from None
        if models.status_code != 200:
            raise ServerRefused(f"the server at {server} answered {models.status_code}: {_refusal(models)}")
        try:
            model_id = models.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise click.ClickException(f"{server} does not answer like a speech server (GET /v1/models)") from None
        segments = Segments(split_text(text, segment_tokens), request, model_id,
                            out.with_name(f".{out.name}.segments"))
        segments.cache.mkdir(exist_ok=True)
        todo = segments.missing()
        stop = threading.Event()
        bar = tqdm(total=len(segments.texts), initial=len(segments.texts) - len(todo), unit="segment",
                   disable=not progress, desc=out.name)
        pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="mlx-qwen-tts-fanout")
        try:
            jobs = {pool.submit(fetch, client, f"{base}/audio/speech", segments.bodies[i], retries, stop): i
                    for i in todo}
            for job in as_completed(jobs):
                segments.save(jobs[job], job.result())
                bar.update(1)
        finally:
            stop.set()  # on an error or Ctrl-C: no new attempts; finished segments stay cached
            pool.shutdown(wait=False, cancel_futures=True)  # closing the client ends requests in flight
            bar.close()
    _join(segments.paths, out)
    shutil.rmtree(segments.cache, ignore_errors=True)
    return out


def _join(paths: list[Path], out: Path) -> None:
    """The segments' samples, in order, as one file (atomic; one segment in memory at a time)."""
    import numpy as np
    import soundfile as sf

    from mlx_qwen_tts.atomic import atomic_file
    from mlx_qwen_tts.audio import audio_format

    fmt, subtype = audio_format(out)
    with atomic_file(out) as tmp, sf.SoundFile(tmp, "w", SAMPLE_RATE, 1, subtype, format=fmt) as f:
        for path in paths:
            f.write(np.frombuffer(path.read_bytes(), "<i2"))
