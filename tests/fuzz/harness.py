"""The fuzz harness's core: run one reader on one input and classify what happens.

Every reader of outside data must either load the input or raise our one-line user error
(ValueError, which ConfigError and GGUFError are, or OSError) with a non-empty message. Anything
else is a crash; running past the per-input time limit is a hang. Mutators are hypothesis
strategies over a real seed: byte edits (biased to the header fields a parser reads), truncation,
and JSON edits at any path.
"""

from __future__ import annotations

import json
import random
import signal
import time
import traceback
from collections import defaultdict


ACCEPTED = (ValueError, OSError)  # ConfigError and GGUFError are ValueErrors
TIME_LIMIT_S = 20.0


class Hang(BaseException):
    """Raised by the alarm: the reader ran past TIME_LIMIT_S on one input."""


class Stats:
    def __init__(self):
        self.counts = defaultdict(lambda: {"inputs": 0, "loaded": 0, "clean_errors": 0, "crashes": 0, "hangs": 0,
                                           "seconds": 0.0})
        self.failures = []  # (target, kind, detail)

    def summary(self) -> dict:
        total = {k: sum(c[k] for c in self.counts.values()) for k in ("inputs", "loaded", "clean_errors", "crashes",
                                                                      "hangs")}
        return {"total": total, "targets": {k: dict(v) for k, v in sorted(self.counts.items())},
                "failures": self.failures[:50]}


STATS = Stats()


def _on_alarm(signum, frame):
    raise Hang()


def probe(target: str, run, strict: bool = True, time_limit: float = TIME_LIMIT_S, names=()) -> str:
    """Run `run()`; count it as loaded, clean error, crash or hang. `strict` raises on the last two.
    A clean error is one line; where `names` are given (the user's files) it must name one of them."""
    counts = STATS.counts[target]
    counts["inputs"] += 1
    started = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    kind = detail = None
    try:
        run()
    except Hang:
        kind, detail = "hangs", f"no answer within {time_limit:g} s"
    except ACCEPTED as e:
        message = str(e).strip()
        if message and "\n" not in message and (not names or any(n in message for n in names)):
            counts["clean_errors"] += 1
            return "clean"
        kind, detail = "crashes", (f"{type(e).__name__} without a one-line message naming {' or '.join(names)}: "
                                   f"{message[:400]!r}")
    except Exception as e:  # noqa: BLE001 - the point: any other type is a finding
        kind, detail = "crashes", "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    else:
        counts["loaded"] += 1
        return "loaded"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        counts["seconds"] += time.perf_counter() - started
    counts[kind] += 1
    STATS.failures.append((target, kind, detail))
    if strict:
        raise AssertionError(f"{target}: {kind}: {detail}")
    return kind


# ---- mutators: plain functions of a random.Random (hypothesis drives them through st.randoms()) ----

INTERESTING_INTS = [0, 1, -1, 2, 7, 31, 32, 127, 128, 255, 256, 2 ** 15, 2 ** 16 - 1, 2 ** 31 - 1, 2 ** 31,
                    2 ** 32 - 1, 2 ** 32, 2 ** 53, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -(2 ** 63)]
INTERESTING_STRINGS = ["", "base", "custom_voice", "voice_design", "F32", "BF16", "I64", "float32", "bfloat16",
                       "../x", "1e5", "model.safetensors", "a" * 300, "\u00e9\u4f60", "<|im_end|>", "NaN"]


def json_value(rng: random.Random, depth: int = 0):
    """A random JSON value, biased to edge cases: huge and negative ints, NaN/inf, odd strings, nesting."""
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(INTERESTING_INTS)
    if kind == 3:
        return rng.randint(-2 ** 70, 2 ** 70) if rng.random() < 0.3 else rng.randint(-4, 4096)
    if kind == 4:
        return rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, 1e-308, 0.5,
                           rng.uniform(-1e6, 1e6)])
    if kind == 5:
        return rng.choice(INTERESTING_STRINGS)
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8)))
    if kind in (7, 8):
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = INTERESTING_STRINGS[:8] + ["x", "weight_map", "shape", "dtype", "data_offsets"]
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def json_paths(obj, path=()):
    """Every path inside a JSON value (the root included; lists up to 8 items)."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield from json_paths(v, path + (i,))


def json_edits(seed, rng: random.Random):
    """`seed` (a JSON value) after 1-4 random edits: replace, delete or add, at any path."""
    obj = json.loads(json.dumps(seed))
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(list(json_paths(obj)))
        op = rng.choice(["replace", "replace", "delete", "add"])
        value = json_value(rng)
        if not path:
            obj = value if op == "replace" else obj
            continue
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        if op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[f"{path[-1]}_x"] = value
        else:
            parent[path[-1]] = value
    return obj


def byte_edits(seed: bytes, rng: random.Random, hot: list[int] | None = None, hot_end: int | None = None) -> bytes:
    """`seed` with 1-6 in-place byte or integer-field edits, sometimes truncated; positions favour the `hot`
    offsets (where a parser reads a length, count, type or offset) and the first `hot_end` bytes."""
    data = bytearray(seed)
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
    hot_end = min(hot_end or len(data), len(data))
    for _ in range(rng.randint(1, 6)):
        pos = rng.choice(hot) + rng.randrange(8) if hot and rng.random() < 0.5 else rng.randrange(hot_end)
        pos = min(pos, len(data) - 1)
        size = rng.choice([1, 1, 4, 8])
        if size == 1:
            data[pos] = rng.randrange(256)
        elif pos + size <= len(data):
            value = rng.choice([v for v in INTERESTING_INTS if 0 <= v < 2 ** (8 * size)])
            data[pos:pos + size] = value.to_bytes(size, "little")
    if rng.randrange(6) == 0:
        data = data[:rng.randrange(len(data) + 1)]
    return bytes(data)
