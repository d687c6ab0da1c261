"""Bounded work (issue 16): what a segment's prefill costs next to a frame step, how fast the splitter
is, and how long short requests wait for their first audio while one long text runs.

    python bench/bench_fairness.py [--shapes tiny 0.6b] [--out FILE]

- prefill: one talker prefill of N prompt tokens (random embeddings) against one frame step of a
  one-row batch, per shape: the stall a row joining the batch causes every other stream.
- split: split_text on 10,000 and 100,000 characters of several scripts (linear: 10x the time).
- fairness (tiny fixture): a long text alone (its segments fill every row), then three short
  requests submitted together: frames and milliseconds from submission to their first audio,
  against the same short request on an idle scheduler.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlx.core as mx  # noqa: E402

from common import host_info  # noqa: E402
from ours import build  # noqa: E402
from mlx_qwen_tts.engine.generate import Batch, GenerationSettings, Row  # noqa: E402
from mlx_qwen_tts.engine.prompt import Prompt  # noqa: E402
from mlx_qwen_tts.engine.request import make_request  # noqa: E402
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis  # noqa: E402
from mlx_qwen_tts.text import split_text  # noqa: E402

TOKENS = {"tiny": [32, 64, 128, 250, 500, 1000, 2000, 4000, 8000], "0.6b": [32, 128, 250, 1000]}


def _best(fn, reps: int) -> float:
    times = []
    for _ in range(reps + 1):  # the first run warms up
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def prefill(shape: str, reps: int) -> list[dict]:
    model = build(shape, "float32")
    talker, hidden = model.talker, model.config.talker.hidden_size
    pad = mx.zeros((1, 1, hidden))
    prompt = Prompt(embeds=mx.repeat(pad, 8, axis=1), trailing=pad, tts_pad=pad, text_tokens=1)
    settings = GenerationSettings.from_config(model.config.generation, ignore_eos=True, max_frames=10_000, seed=0)
    batch = Batch(model)
    batch.add(Row(prompt, settings))
    for _ in range(3):
        batch.step()
    frame_s = _best(batch.step, 3 * reps)
    out = []
    for n in TOKENS[shape]:
        embeds = mx.random.normal((1, n, hidden)) * 0.02
        mx.eval(embeds)
        seconds = _best(lambda: mx.eval(talker(embeds, talker.make_cache())), reps)
        out.append(dict(kind="prefill", shape=shape, tokens=n, prefill_s=seconds, frame_step_s=frame_s,
                        frames_of_stall=seconds / frame_s))
        print(json.dumps(out[-1]), flush=True)
    return out


def split() -> list[dict]:
    out = []
    for name, unit in [("english words", "word "), ("unpunctuated chinese", "中文"), ("emoji", "😀"),
                       ("sentences", "It was late. "), ("combining marks", "q\u0301")]:
        for chars in (10_000, 100_000):
            text = unit * (chars // len(unit))
            seconds = _best(lambda: split_text(text), 3)
            out.append(dict(kind="split", text=name, chars=len(text), segments=len(split_text(text)),
                            split_ms=seconds * 1e3))
            print(json.dumps(out[-1]), flush=True)
    return out


def fairness(max_batch: int = 4) -> list[dict]:
    model = build("tiny", "float32", codec=True)
    cfg = model.config
    short = dict(voice="ryan", max_frames=24, ignore_eos=True)

    def first_audio(scheduler, syntheses):
        """Seconds to each one's first audio; the frames until the last of them (one sync a frame)."""
        for s in syntheses:
            scheduler.submit(s)
        start = scheduler.batch.host_syncs
        while any(s.stats.first_audio_s is None for s in syntheses):
            scheduler.run_once()
        return [s.stats.first_audio_s for s in syntheses], scheduler.batch.host_syncs - start

    scheduler = Scheduler(model, max_batch)
    scheduler.warm_up()
    idle_s, idle_frames = first_audio(scheduler, [Synthesis(make_request(cfg, "Hello there.", seed=9, **short))])
    while scheduler.busy:
        scheduler.run_once()
    long_text = " ".join(f"This is sentence {i} of a long chapter, read aloud." for i in range(40))
    long = Synthesis(make_request(cfg, long_text, voice="ryan", seed=1, ignore_eos=True))
    scheduler.submit(long)
    while len(scheduler.batch.rows) < max_batch:
        scheduler.run_once()
    shorts = [Synthesis(make_request(cfg, "Hello there.", seed=i, **short)) for i in range(3)]
    busy_s, busy_frames = first_audio(scheduler, shorts)
    for s in [long, *shorts]:
        s.cancel()
    scheduler.run_once()
    out = [dict(kind="fairness", max_batch=max_batch, long_segments=len(long.request.segments),
                idle_first_audio_frames=idle_frames, idle_first_audio_ms=idle_s[0] * 1e3,
                busy_first_audio_frames=busy_frames, busy_first_audio_ms=[t * 1e3 for t in busy_s])]
    print(json.dumps(out[-1]), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "0.6b"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [dict(kind="host", **host_info())]
    for shape in args.shapes:
        results += prefill(shape, args.reps)
    results += split() + fairness()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
