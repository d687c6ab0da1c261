"""synthesize / stream: end-to-end audio against the official waveforms, stream = one-shot
decode, long text split into sentence segments."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import load_cases
from mlx_qwen_tts.api import SynthesisStats, stream, synthesize
from mlx_qwen_tts.models.codec import decode
from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.text import split_text


@pytest.fixture(scope="module")
def custom(model_dir):
    return load_model(model_dir("customvoice_0b6"), dtype=mx.float32)


def test_greedy_synthesis_matches_the_official_waveform(custom, fixtures_dir):
    name, args, ref = next(c for c in load_cases(fixtures_dir, "customvoice_0b6") if c[0] == "en_ryan_stream")
    result = synthesize(custom, args["text"], voice=args["speaker"], language=args["language"], greedy=True,
                        non_streaming_text=args["non_streaming"], max_frames=args["max_new_tokens"] - 1)
    np.testing.assert_array_equal(result.codes, ref["codes"])
    assert result.audio.shape == ref["wav"].shape == (len(ref["codes"]) * 1920,)
    np.testing.assert_allclose(result.audio, ref["wav"], atol=1e-4, rtol=0)
    assert result.sample_rate == 24000 and result.stats.stop_reasons == ["eos"]


def test_in_context_clone_matches_the_official_trimmed_waveform(model_dir, fixtures_dir):
    base = load_model(model_dir("base_0b6"), dtype=mx.float32)
    wave = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")["wave"]
    name, args, ref = next(c for c in load_cases(fixtures_dir, "base_0b6") if c[0] == "icl_stream")
    result = synthesize(base, args["text"], language=args["language"], greedy=True, non_streaming_text=False,
                        max_frames=args["max_new_tokens"] - 1, ref_audio=wave, ref_text=args["ref_text"])
    np.testing.assert_array_equal(result.codes, ref["codes"])
    # We drop exactly the reference's frames; the official int(ref/total * samples) can keep one
    # more sample through float rounding.
    assert len(ref["wav"]) - len(result.audio) in (0, 1)
    np.testing.assert_allclose(result.audio, ref["wav"][-len(result.audio):], atol=1e-4, rtol=0)


@pytest.mark.parametrize("first, every", [(1, 1), (2, 8), (4, 3)])
def test_stream_concatenation_equals_one_shot_decode(custom, first, every):
    codes = []
    chunks = list(stream(custom, "Hello world, this is a test.", voice="ryan", seed=5, max_frames=20,
                         first_chunk_frames=first, chunk_frames=every, codes_out=codes))
    assert len(chunks[0]) == first * 1920
    one_shot = np.array(decode(custom.codec, mx.array(np.stack(codes))))  # [T, 16] in, [T * 1920] out
    np.testing.assert_allclose(np.concatenate(chunks), one_shot, atol=1e-5, rtol=0)


def test_long_text_is_spoken_segment_by_segment(custom):
    text = " ".join(f"This is sentence number {i}, and it goes on for a little while." for i in range(6))
    stats = SynthesisStats()
    result = synthesize(custom, text, voice="ryan", seed=1, max_segment_tokens=140, stats=stats)
    assert stats.segments == len(split_text(text, 140)) >= 3
    assert len(stats.stop_reasons) == stats.segments
    assert len(result.codes) == stats.frames and len(result.audio) == stats.frames * 1920


def test_max_frames_caps_the_whole_request_not_each_segment(custom):
    text = " ".join(f"This is sentence number {i}, and it goes on for a little while." for i in range(6))
    stats = SynthesisStats()
    result = synthesize(custom, text, voice="ryan", seed=1, max_frames=10, ignore_eos=True, max_segment_tokens=140,
                        stats=stats)
    assert len(split_text(text, 140)) >= 3
    assert len(result.codes) == stats.frames == 10 and len(result.audio) == 10 * 1920
    assert stats.segments == 1 and stats.stop_reasons == ["max_frames"]
    # the first segment's frames are those it makes alone: the cut drops frames, never changes them
    alone = synthesize(custom, split_text(text, 140)[0], voice="ryan", seed=1, max_frames=10, ignore_eos=True)
    np.testing.assert_array_equal(result.codes, alone.codes)


def test_stream_rejects_bad_options(custom):
    with pytest.raises(ValueError, match="at least 1"):
        next(stream(custom, "Hi.", first_chunk_frames=0))
    with pytest.raises(ValueError, match="empty"):
        next(stream(custom, "   "))


def test_bfloat16_weights_run_end_to_end(model_dir, fixtures_dir):
    """The GPU default dtype (bf16 talker, float32 codec) works through every path."""
    for variant, kwargs in [("customvoice_1b7", dict(voice="aiden", instruct="Calm.")),
                            ("base_0b6", dict(ref_audio=np.load(fixtures_dir / "dumps" / "base_0b6"
                                                                / "voice.npz")["wave"],
                                              ref_text="This is the voice to speak with."))]:
        model = load_model(model_dir(variant), dtype=mx.bfloat16)
        assert model.talker.norm.weight.dtype == mx.bfloat16
        assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.codec.parameters()))
        result = synthesize(model, "Hello world.", seed=0, max_frames=4, **kwargs)
        assert result.audio.dtype == np.float32 and np.isfinite(result.audio).all()
        assert len(result.audio) == len(result.codes) * 1920 and 2 <= len(result.codes) <= 4
