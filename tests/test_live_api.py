"""Live text through the public interfaces: `stream_text` (an iterable of pieces read on a
thread) and `Engine.open_text_stream` (feed/finish/cancel from any thread)."""

import threading
import time

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts import Engine, stream_text
from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.engine.live import InputIdle
from mlx_qwen_tts.loading import load_model

TEXT = "Hello world, this is a live test of 12.5 tokens."


@pytest.fixture(scope="module")
def custom(model_dir):
    return load_model(model_dir("customvoice_0b6"), dtype=mx.float32)


@pytest.fixture(scope="module")
def expected(custom):
    return synthesize(custom, TEXT, voice="ryan", greedy=True, non_streaming_text=False, max_frames=40)


def _slow(pieces, delay):
    for piece in pieces:
        time.sleep(delay)
        yield piece


def test_stream_text_from_a_blocking_generator_equals_the_whole_text(custom, expected):
    codes = []
    chunks = list(stream_text(custom, _slow([TEXT[i:i + 3] for i in range(0, len(TEXT), 3)], 0.15), voice="ryan",
                              greedy=True, max_frames=40, codes_out=codes))
    np.testing.assert_array_equal(np.array(codes).reshape(-1, 16), expected.codes)
    np.testing.assert_allclose(np.concatenate(chunks), expected.audio, atol=1e-5, rtol=0)


def test_stream_text_reads_a_source_that_runs_mlx_itself(custom, expected):
    """mlx-lm's stream_generate runs on a stream made on the caller's thread (MLX streams belong
    to their thread): the pieces are read there."""
    own = mx.new_stream(mx.default_device())

    def llm():
        for i in range(0, len(TEXT), 4):
            with mx.stream(own):
                mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))
            yield TEXT[i:i + 4]

    audio = np.concatenate(list(stream_text(custom, llm(), voice="ryan", greedy=True, max_frames=40)))
    np.testing.assert_allclose(audio, expected.audio, atol=1e-5, rtol=0)


def test_a_failing_source_and_an_empty_source_end_the_stream_with_their_error(custom):
    def broken():
        yield "Hello there "
        raise OSError("the LLM went away")

    with pytest.raises(OSError, match="the LLM went away"):
        list(stream_text(custom, broken(), voice="ryan", max_frames=20))
    with pytest.raises(ValueError, match="text is empty"):
        list(stream_text(custom, iter(["", "  ", "\n"]), voice="ryan"))
    with pytest.raises(TypeError, match="takes a str"):
        list(stream_text(custom, iter(["Hi ", 3]), voice="ryan"))


def test_engine_live_rows_share_the_batch_with_ordinary_rows(custom, expected):
    with Engine(custom, max_batch=4) as engine:
        handle = engine.open_text_stream(voice="ryan", greedy=True, max_frames=40)

        def writer():
            for i in range(0, len(TEXT), 5):
                handle.feed(TEXT[i:i + 5])
                time.sleep(0.2)
            handle.finish()

        thread = threading.Thread(target=writer)
        thread.start()
        ordinary = engine.submit("An ordinary request.", voice="vivian", greedy=True, max_frames=30)
        live_audio = np.concatenate(list(handle))
        ordinary_audio = np.concatenate(list(ordinary))
        thread.join()
    np.testing.assert_allclose(live_audio, expected.audio, atol=1e-5, rtol=0)
    alone = synthesize(custom, "An ordinary request.", voice="vivian", greedy=True, max_frames=30)
    np.testing.assert_allclose(ordinary_audio, alone.audio, atol=1e-5, rtol=0)


def test_an_idle_open_input_ends_with_a_clear_error_and_cancel_stops_a_stream(custom):
    with Engine(custom, max_batch=2) as engine:
        idle = engine.open_text_stream(voice="ryan", max_frames=200, idle_timeout=0.5)
        idle.feed("Hello there, and then")
        with pytest.raises(InputIdle, match=r"no text for .*idle timeout 0.5 s.*finish\(\)"):
            list(idle)
        cancelled = engine.open_text_stream(voice="ryan", max_frames=200)
        cancelled.feed("Some words that start ")
        time.sleep(0.5)
        cancelled.cancel()
        list(cancelled)  # ends without error
        assert cancelled.cancelled and cancelled.finished
        cancelled.feed("ignored after the end ")
        after = engine.submit("Still serving.", voice="ryan", max_frames=5)
        assert len(np.concatenate(list(after))) == 5 * 1920


def test_a_cloned_voice_through_the_engine_equals_the_whole_text(model_dir, fixtures_dir):
    """Base rows: the voice is prepared beside generation (Engine's side thread), then the live
    row starts; x-vector and in-context clones."""
    base = load_model(model_dir("base_0b6"), dtype=mx.float32)
    wave = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["wave"]
    text = "A cloned voice, fed in pieces, must say exactly what the whole text says."
    for ref_text in (None, "Ref."):
        kw = dict(ref_audio=wave, ref_text=ref_text, greedy=True, max_frames=30)
        expected = synthesize(base, text, non_streaming_text=False, **kw)
        with Engine(base, max_batch=2) as engine:
            speech = engine.open_text_stream(**kw)
            for i in range(0, len(text), 7):
                speech.feed(text[i:i + 7])
                time.sleep(0.05)
            speech.finish()
            audio = np.concatenate(list(speech))
        np.testing.assert_allclose(audio, expected.audio, atol=1e-5, rtol=0, err_msg=str(ref_text))
