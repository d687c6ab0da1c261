"""The threaded Engine: concurrent submissions from several threads equal their solo results,
cancel frees the row within a frame, the waiting queue is bounded, a failing request ends alone,
Base-model cloning works (its reference encoded beside generation), close ends everything, and a
long text never delays a short request's first audio by more than a frame."""

import threading
import time

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis
from mlx_qwen_tts.engine.service import Engine, QueueFull
from mlx_qwen_tts.loading import load_model

TEXT = "Hello world, this is a test."


@pytest.fixture(scope="module")
def custom(model_dir):
    return load_model(model_dir("customvoice_0b6"), dtype=mx.float32)


def _wait(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_concurrent_submissions_from_threads_equal_their_solo_results(custom):
    jobs = [dict(voice="ryan", seed=1, max_frames=12), dict(voice="vivian", seed=2, max_frames=9, temperature=0.5),
            dict(voice="serena", greedy=True, max_frames=7), dict(voice="eric", seed=4, max_frames=15, top_p=0.8)]
    solo = [synthesize(custom, TEXT, **kw).audio for kw in jobs]
    out = [None] * len(jobs)
    with Engine(custom, max_batch=4) as engine:
        def client(i):
            out[i] = np.concatenate(list(engine.submit(TEXT, **jobs[i])))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for got, expected in zip(out, solo):  # chunks at the same position share a batched codec call
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_cancel_frees_the_row_and_close_ends_the_rest(custom):
    engine = Engine(custom, max_batch=2)
    long = engine.submit(TEXT, voice="ryan", seed=1, ignore_eos=True, max_frames=2000, first_chunk_frames=1)
    chunks = iter(long)
    next(chunks)
    _wait(lambda: engine.active_rows == 1)
    long.cancel()
    _wait(lambda: engine.active_rows == 0)
    assert long.stats.frames < 100
    rest = engine.submit(TEXT, voice="ryan", seed=2, ignore_eos=True, max_frames=2000)
    _wait(lambda: engine.active_rows == 1)
    engine.close(timeout=30)
    assert rest.finished and rest.cancelled and len(list(rest)) < 200
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(TEXT)


def test_the_waiting_queue_is_bounded(custom):
    with Engine(custom, max_batch=1, max_queue=1) as engine:
        first = engine.submit(TEXT, voice="ryan", ignore_eos=True, max_frames=2000)
        _wait(lambda: engine.active_rows == 1 and engine.queued == 0)
        second = engine.submit(TEXT, voice="ryan", max_frames=3)
        with pytest.raises(QueueFull):
            engine.submit(TEXT, voice="ryan", max_frames=3)
        first.cancel()
        assert len(list(second)) >= 1


def test_calls_do_not_count_as_waiting_requests(custom):
    # Each call wakes the engine with a marker in its inbox; those markers are not requests, so a
    # server's queue bound (429) must not see them.
    with Engine(custom, max_batch=1, max_queue=1) as engine:
        long = engine.submit(TEXT, voice="ryan", seed=1, ignore_eos=True, max_frames=2000, first_chunk_frames=1)
        next(iter(long))
        for future in [engine.call(lambda: None) for _ in range(20)]:
            future.result(10)
        frames = long.stats.frames
        _wait(lambda: long.stats.frames > frames + 1)  # a few turns of the engine's loop
        assert engine.queued == 0
        long.cancel()


def test_bad_values_fail_at_submit_and_a_failing_request_ends_alone(custom, tmp_path):
    with Engine(custom, max_batch=4) as engine:
        with pytest.raises(ValueError, match="unknown voice"):
            engine.submit(TEXT, voice="nobody")
        with pytest.raises(ValueError, match="top_p"):
            engine.submit(TEXT, top_p=0)
        good = engine.submit(TEXT, voice="ryan", seed=3, max_frames=10, ignore_eos=True)
        broken = tmp_path / "x.safetensors"
        broken.write_bytes(b"not a voice file")
        with pytest.raises(ValueError, match="Base model"):
            engine.submit(TEXT, voice_file=broken)
        assert len(np.concatenate(list(good))) == 10 * 1920


def test_base_model_cloning_through_the_engine(model_dir, fixtures_dir, tmp_path):
    base = load_model(model_dir("base_0b6"), dtype=mx.float32)
    wave = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["wave"]
    expected = synthesize(base, TEXT, ref_audio=wave, ref_text="This is the voice to speak with.", seed=5,
                          max_frames=8).audio
    with Engine(base, max_batch=2) as engine:
        ok = engine.submit(TEXT, ref_audio=wave, ref_text="This is the voice to speak with.", seed=5, max_frames=8)
        bad = engine.submit(TEXT, ref_audio=tmp_path / "missing.wav", max_frames=8)
        np.testing.assert_array_equal(np.concatenate(list(ok)), expected)
        with pytest.raises((OSError, ValueError)):
            list(bad)


def test_warm_up_traces_every_batch_size_before_requests_come(model_dir):
    model = load_model(model_dir("customvoice_0b6"), dtype=mx.float32)  # a fresh model: no graph traced yet
    with Engine(model, max_batch=3) as engine:
        engine.warm_up()
        traced = model.frame_step.traces
        assert traced >= 3
        requests = [engine.submit(TEXT, voice="ryan", seed=i, max_frames=6, ignore_eos=True) for i in range(3)]
        for r in requests:
            list(r)
        assert model.frame_step.traces == traced  # batches of 1 to 3 rows: all traced already


def test_short_requests_get_first_audio_within_frames_while_a_long_text_holds_every_row(custom):
    """One long text alone takes every row (segments generated ahead); a short request arriving
    then takes a row from it and hears its first chunk a few frames after submission, the same as
    on an idle engine. The long text's codes are those it makes alone."""
    long_text = " ".join(f"Part {i}." for i in range(6))
    long_args = dict(voice="ryan", seed=1, max_segment_tokens=8)  # segments of 20-60 frames
    scheduler = Scheduler(custom, max_batch=4)
    long_codes = []
    long = Synthesis(make_request(custom.config, long_text, **long_args), codes_out=long_codes)
    assert len(long.request.segments) == 6
    scheduler.submit(long)
    for _ in range(6):
        scheduler.run_once()
    assert len(scheduler.batch.rows) == 4 and all(row.owner.synthesis is long for row in scheduler.batch.rows)

    def frames_to_first_audio(syntheses):
        for synthesis in syntheses:
            scheduler.submit(synthesis)
        waited = {}
        for frame in range(1, 200):
            scheduler.run_once()
            for synthesis in syntheses:
                if synthesis.stats.first_audio_s is not None:
                    waited.setdefault(id(synthesis), frame)
            if len(waited) == len(syntheses):
                return list(waited.values())
        raise AssertionError("no first audio in 200 frames")

    shorts = [Synthesis(make_request(custom.config, "Hello.", voice="ryan", seed=i, max_frames=4, ignore_eos=True))
              for i in range(3)]
    busy = frames_to_first_audio(shorts)
    while scheduler.busy:
        scheduler.run_once()
    idle = frames_to_first_audio([Synthesis(make_request(custom.config, "Hello.", voice="ryan", seed=0,
                                                         max_frames=4, ignore_eos=True))])
    assert max(busy) <= idle[0] + 1 <= 4  # first_chunk_frames=2: a frame to prefill, two to generate
    assert long.finished and long.error is None and long.stats.segments == 6
    alone = synthesize(custom, long_text, **long_args)
    np.testing.assert_array_equal(np.array(long_codes), alone.codes)


def test_reference_encoding_runs_beside_generation(model_dir, fixtures_dir, monkeypatch):
    """Encoding a 30 s reference (and reading voices) happens on the side thread while the engine
    keeps generating the other streams' frames."""
    from mlx_qwen_tts.engine import scheduler as scheduler_module
    from mlx_qwen_tts.voice import make_voice_clone

    base = load_model(model_dir("base_0b6"), dtype=mx.float32)
    wave = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["wave"]
    long_wave = np.resize(wave, 29 * 24000)
    seen, streams = [], []
    original = scheduler_module.resolve_clone

    def recording(model, request):
        before = streams[0].stats.frames if streams else None
        clone = original(model, request)
        seen.append((threading.current_thread().name, before, streams[0].stats.frames if streams else None))
        return clone

    monkeypatch.setattr(scheduler_module, "resolve_clone", recording)
    with Engine(base, max_batch=2) as engine:
        assert engine.call_aside(lambda: threading.current_thread().name).result() == "mlx-qwen-tts-prepare"
        streams.append(engine.submit(TEXT, clone=make_voice_clone(base, wave), seed=1, ignore_eos=True,
                                     first_chunk_frames=1, chunk_frames=1))
        _wait(lambda: streams[0].stats.frames > 0)
        cloned = engine.submit(TEXT, ref_audio=long_wave, ref_text="This is the voice to speak with.", seed=5,
                               max_frames=4)
        assert len(np.concatenate(list(cloned))) == 4 * 1920
        streams[0].cancel()
    assert {name for name, _, _ in seen} == {"mlx-qwen-tts-prepare"}
    _, before, after = seen[1]
    assert after > before  # the running stream made frames while the reference was encoded
