"""Bounded work for every input: limits checked before any model work, with one-line errors, and a
runaway guard that a caller's max_frames lowers but never lifts, reported by every request."""

import dataclasses
import warnings

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts.api import synthesize_batch
from mlx_qwen_tts.engine.generate import Row, frame_budget
from mlx_qwen_tts.engine.prompt import MAX_INSTRUCT_CHARS, MAX_REF_TEXT_CHARS, build_prompt
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.text import SEGMENT_TOKENS


@pytest.fixture(scope="module")
def custom(model_dir):
    return load_model(model_dir("customvoice_1b7"), dtype=mx.float32)


@pytest.fixture(scope="module")
def base_config(model_dir):
    return load_model(model_dir("base_0b6"), dtype=mx.float32, codec=False).config


@pytest.mark.parametrize("text", ["word " * 20_000, "中文" * 50_000, "🙂" * 100_000])
def test_100k_characters_without_punctuation_become_bounded_segments(custom, text):
    request = make_request(custom.config, text, voice="ryan")
    assert len(request.segments) >= len(text.encode()) // SEGMENT_TOKENS
    assert max(len(s.encode()) for s in request.segments) <= SEGMENT_TOKENS
    prompt = build_prompt(custom, request.segments[-1], voice="ryan")  # each is a small prefill
    assert prompt.embeds.shape[1] <= SEGMENT_TOKENS + 24


def test_instruct_of_100k_characters_is_a_one_line_error(custom):
    with pytest.raises(ValueError, match=f"^instruct is too long \\(100,000 characters\\); the limit is "
                                         f"{MAX_INSTRUCT_CHARS:,}$"):
        make_request(custom.config, "Hello.", voice="ryan", instruct="calm " * 20_000)
    with pytest.raises(ValueError, match="instruct is too long"):  # the prompt builder checks before tokenizing
        build_prompt(custom, "Hello.", voice="ryan", instruct="x" * (MAX_INSTRUCT_CHARS + 1))


def test_ref_text_of_100k_characters_is_a_one_line_error(base_config):
    wave = np.zeros(24000, np.float32)
    with pytest.raises(ValueError, match=f"^ref_text is too long \\(100,000 characters\\); the limit is "
                                         f"{MAX_REF_TEXT_CHARS:,}$"):
        make_request(base_config, "Hello.", ref_audio=wave, ref_text="word " * 20_000)


@pytest.mark.parametrize("name", ["text", "instruct"])
def test_text_that_is_not_unicode_is_refused(custom, name):
    args = {"text": "Hello.", "instruct": None} | {name: "Hello \udcff there."}
    with pytest.raises(ValueError, match=f"^{name} is not valid Unicode text"):
        make_request(custom.config, voice="ryan", **args)


def test_nothing_audible_is_empty_text(custom):
    with pytest.raises(ValueError, match="text is empty"):
        make_request(custom.config, "\u200b\u200b\ufeff ", voice="ryan")


def test_prompts_beyond_the_position_limit_are_refused(custom, monkeypatch):
    cfg = custom.config
    small = dataclasses.replace(cfg, talker=dataclasses.replace(cfg.talker, max_position_embeddings=40))
    with pytest.raises(ValueError, match="at most 40 \\(max_position_embeddings\\)"):
        make_request(small, "Hello there. " * 4, voice="ryan", max_segment_tokens=60)
    monkeypatch.setattr(custom, "config", small)
    with pytest.raises(ValueError, match="prompt is .* tokens; .* at most 40"):
        build_prompt(custom, "Hello there, " * 10, voice="ryan")


def test_max_frames_lowers_the_runaway_budget_but_never_lifts_it(custom):
    prompt = build_prompt(custom, "Hi.", voice="ryan")
    settings = make_request(custom.config, "Hi.", voice="ryan").settings
    budget = frame_budget(prompt.text_tokens)
    assert Row(prompt, dataclasses.replace(settings, max_frames=10 * budget)).limit == budget
    assert Row(prompt, dataclasses.replace(settings, max_frames=budget // 2)).limit == budget // 2
    # a benchmark that turned EOS off asks for an exact length
    assert Row(prompt, dataclasses.replace(settings, max_frames=10 * budget, ignore_eos=True)).limit == 10 * budget


def test_every_runaway_is_reported_by_its_own_request(custom):
    with warnings.catch_warnings():  # Python shows a repeated warning once; each request's stats say it
        warnings.simplefilter("ignore")
        results = synthesize_batch(custom, ["Hi.", "Hi. Hi. Hi."], voice="ryan", seed=[1, 2], ignore_eos=True,
                                   max_segment_tokens=8)
    assert [r.stats.segments for r in results] == [1, 2]
    for result in results:
        stats = result.stats
        assert stats.runaway and len(stats.runaways) == stats.segments == len(stats.stop_reasons)
        assert all("ran away" in message and message.startswith(f"segment {i + 1}:")
                   for i, message in enumerate(stats.runaways))
