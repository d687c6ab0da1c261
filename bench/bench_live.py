"""Live text input (engine/live.py): simulated LLM feeds, and what paused rows cost their batch.

    .venv/bin/python bench/bench_live.py [--shape tiny|0.6b] [--out FILE.jsonl]

1. Feeds. A text's tokens (decoded one by one: what an LLM with the same vocabulary streams) are fed
   in real time to `Engine.open_text_stream` at 5, 12.5, 30 and 100 tokens/s, and in bursts with
   2 s stalls. EOS is made impossible and the row runs 2.8 frames per text token (speech of
   ~4.5 tokens/s, as a real voice; the random-weight models have no speech to end). Per feed:
     - first_audio_s: first token fed -> first audio chunk; against the target prefill + 3 frames
       + one codec chunk, with those parts measured in the same process;
     - underruns of real-time playback started at the first chunk (count, total seconds), and the
       playback delay that would make it gapless;
     - finish_to_last_s: finish() -> the last chunk.
2. Paused rows. A batch of 8: 4 ordinary rows, plus 4 rows that are (a) ordinary, (b) live and
   parked the whole time, (c) live and fed one token every 3 frames (parked and re-joined again and
   again). ms per frame of the whole batch, driven frame by frame.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import host_info  # noqa: E402
from ours import build  # noqa: E402

from mlx_qwen_tts.engine.live import LiveSynthesis, make_live_request  # noqa: E402
from mlx_qwen_tts.engine.request import make_request  # noqa: E402
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis  # noqa: E402
from mlx_qwen_tts.engine.service import Engine  # noqa: E402

# Words that are one token each in the fixtures' small vocabulary (as common words are in Qwen's),
# so one piece is one word, as from an LLM.
TEXT = ("A test of this voice and text to speak to you, young woman, warm and calm. Hello to you and this world, "
        "this is a calm voice of text, a test to speak of, and to speak to you, warm and calm.")
SPEECH_FRAMES_PER_TOKEN = 2.8
VOICE = "vivian"
FEEDS = [("5 tok/s", 5.0), ("12.5 tok/s", 12.5), ("30 tok/s", 30.0), ("100 tok/s", 100.0),
         ("bursty: 10 tokens at 30 tok/s, 2 s stall", None)]


def token_pieces(model) -> list[str]:
    """The text's tokens as strings: what an LLM with the same vocabulary (Qwen's) streams, one
    token per piece."""
    return [model.tokenizer.decode([i]) for i in model.tokenizer.encode_text(TEXT)]


def feed_times(n: int, rate: float | None) -> list[float]:
    if rate is not None:
        return [i / rate for i in range(n)]
    times, t = [], 0.0
    for i in range(n):
        if i and i % 10 == 0:
            t += 2.0
        times.append(t)
        t += 1 / 30
    return times


def playback(arrivals: list[tuple[float, float]]) -> dict:
    """Real-time playback from the first chunk: underruns (count, seconds) and the start delay
    that would have made it gapless. arrivals: (time, seconds of audio) in order."""
    t0, end, gaps, needed, audio = arrivals[0][0], arrivals[0][0], [], 0.0, 0.0
    for at, seconds in arrivals:
        if at > end:
            gaps.append(at - end)
        needed = max(needed, at - (t0 + audio))
        end = max(end, at) + seconds
        audio += seconds
    return dict(underruns=sum(1 for g in gaps if g > 1e-3), underrun_s=round(sum(gaps), 3),
                gapless_start_delay_s=round(needed, 3), audio_s=round(audio, 3))


def run_feed(engine, model, pieces, rate) -> dict:
    max_frames = round(SPEECH_FRAMES_PER_TOKEN * len(pieces))
    speech = engine.open_text_stream(voice=VOICE, seed=1, max_frames=max_frames, ignore_eos=True)
    times = feed_times(len(pieces), rate)
    marks = {}

    def feeder():
        start = time.perf_counter()
        marks["first_token"] = start
        for piece, at in zip(pieces, times):
            time.sleep(max(0.0, start + at - time.perf_counter()))
            speech.feed(piece)
        marks["finish"] = time.perf_counter()
        speech.finish()

    thread = threading.Thread(target=feeder)
    thread.start()
    arrivals = [(time.perf_counter(), len(chunk) / model.sample_rate) for chunk in speech]
    thread.join()
    stats = speech.stats
    return dict(first_audio_s=round(arrivals[0][0] - marks["first_token"], 4),
                finish_to_last_s=round(arrivals[-1][0] - marks["finish"], 4), frames=stats.frames,
                prefill_s=round(stats.prefill_s, 4), **playback(arrivals))


def target_parts(model, engine) -> dict:
    """prefill, one frame and one first codec chunk (2 frames), measured on a batch of one."""
    ordinary = engine.submit(TEXT, voice=VOICE, seed=1, max_frames=60, ignore_eos=True)
    stamps = [time.perf_counter() for _ in ordinary]
    frame_s = (stamps[-1] - stamps[0]) / (ordinary.stats.frames - 2)  # after the first chunk (2 frames)
    codes = mx.zeros((1, 2, 16), dtype=mx.int32)
    codec_s = []
    for _ in range(5):
        state = model.codec.make_state()
        t = time.perf_counter()
        wav, state = model.codec(codes, state)
        mx.eval(wav)
        codec_s.append(time.perf_counter() - t)
    prefill_s = ordinary.stats.prefill_s
    return dict(prefill_s=round(prefill_s, 4), frame_s=round(frame_s, 4), codec_chunk_s=round(min(codec_s), 4),
                target_s=round(prefill_s + 3 * frame_s + min(codec_s), 4))


def paused_cost(model, mode: str, frames: int = 60) -> dict:
    """ms/frame of a batch of 8 (4 ordinary rows + 4 rows in `mode`), driven frame by frame."""
    scheduler = Scheduler(model, 8)
    for i in range(4):
        scheduler.submit(Synthesis(make_request(model.config, TEXT, voice=VOICE, seed=i, max_frames=frames + 10,
                                                ignore_eos=True)))
    live = []
    for i in range(4):
        if mode == "ordinary":
            scheduler.submit(Synthesis(make_request(model.config, TEXT, voice=VOICE, seed=9 + i,
                                                    max_frames=frames + 10, ignore_eos=True)))
            continue
        speech = LiveSynthesis(make_live_request(model.config, voice=VOICE, seed=9 + i, max_frames=frames + 10,
                                                 ignore_eos=True), model.tokenizer, idle_timeout=None)
        speech.feed("Hello there, ")
        scheduler.submit(speech)
        live.append(speech)
    words = TEXT.split()
    times, parked = [], []
    for frame in range(frames):
        if mode == "churning" and frame % 3 == 0:
            for speech in live:
                speech.feed(words[frame // 3 % len(words)] + " ")
        t = time.perf_counter()
        scheduler.run_once()
        times.append(time.perf_counter() - t)
        parked.append(len(scheduler.batch.parked))
    for speech in live:
        speech.cancel()
    scheduler.run_once()
    steady = times[10:]
    return dict(mode=mode, ms_per_frame=round(1000 * statistics.median(steady), 3),
                mean_ms=round(1000 * statistics.mean(steady), 3), parked_mean=round(statistics.mean(parked[10:]), 2))


def park_cost(model, reps: int = 20) -> dict:
    """ms to park one live row of a batch of 8 and to re-join it (the state gathers, evaluated)."""
    scheduler = Scheduler(model, 8)
    for i in range(7):
        scheduler.submit(Synthesis(make_request(model.config, TEXT, voice=VOICE, seed=i, max_frames=400,
                                                ignore_eos=True)))
    speech = LiveSynthesis(make_live_request(model.config, voice=VOICE, seed=9, max_frames=400, ignore_eos=True),
                           model.tokenizer, idle_timeout=None)
    speech.feed("A test ")
    scheduler.submit(speech)
    for _ in range(10):  # the live row uses its text up and parks; the others run
        scheduler.run_once()
    batch, row = scheduler.batch, speech.live
    park, join = [], []
    for i in range(reps):
        speech.feed("of ")
        speech.pump(model)
        t = time.perf_counter()
        batch._feed_live()  # re-joins the parked row
        mx.eval(batch.state)
        join.append(time.perf_counter() - t)
        live_row = next(r for r in batch.rows if r.live is row)
        live_row.steps = row.handed  # as if it had used that text
        t = time.perf_counter()
        batch._feed_live()  # parks it again
        mx.eval(batch.state, *batch.parked[live_row][0])
        park.append(time.perf_counter() - t)
    speech.cancel()
    scheduler.run_once()
    return dict(park_ms=round(1000 * statistics.median(park), 3), join_ms=round(1000 * statistics.median(join), 3),
                rows=8, kv_capacity=batch.state.keys[0].shape[2] if batch.state is not None else None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="tiny", choices=["tiny", "0.6b"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-feeds", action="store_true")
    args = parser.parse_args()
    model = build(args.shape, "float32" if args.shape == "tiny" else "8bit", codec=True)
    records = []
    env = dict(shape=args.shape, mlx=mx.__version__, device=str(mx.default_device()), **host_info())

    def emit(record):
        record = {**record, "shape": args.shape, "env": env}
        records.append(record)
        print(json.dumps(record), flush=True)

    with Engine(model, max_batch=8) as engine:
        engine.warm_up()
        if not args.skip_feeds:
            emit(dict(kind="target", **target_parts(model, engine)))
            pieces = token_pieces(model)
            for name, rate in FEEDS:
                emit(dict(kind="feed", feed=name, tokens=len(pieces), **run_feed(engine, model, pieces, rate)))
    emit(dict(kind="park_cost", **park_cost(model)))
    for mode in ("ordinary", "parked", "churning"):
        paused_cost(model, mode)  # warm-up: traces every batch size and text capacity it meets
        emit(dict(kind="paused_rows", **paused_cost(model, mode)))
    if args.out:
        with open(args.out, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
