"""Sampling pieces against the official Hugging Face logits processors, and the generation
loop's sampling behaviour: seeds, suppression, minimum length, the runaway guard."""

import warnings

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts.engine.generate import (STUCK_WINDOW, GenerationSettings, GenerationStats, frame_budget,
                                          generate_frames)
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.engine.sampling import (FULL_VOCAB, GREEDY, SamplerArrays, SamplerSettings, code0_bias,
                                          repetition_penalty, sample, sampling_plan, unit_interval, warp_logits)
from mlx_qwen_tts.loading import load_model


@pytest.fixture(scope="module")
def official(fixtures_dir):
    return dict(np.load(fixtures_dir / "dumps" / "processors.npz"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir("customvoice_0b6"), dtype=mx.float32, codec=False)


def _seen(history, vocab):
    seen = np.zeros((len(history), vocab), bool)
    for row, ids in enumerate(history):
        seen[row, ids] = True
    return mx.array(seen)


def test_repetition_penalty_matches_official(official):
    scores = mx.array(official["scores"])
    penalty = mx.full((scores.shape[0],), 1.05)
    out = repetition_penalty(scores, _seen(official["history"], scores.shape[-1]), penalty)
    np.testing.assert_allclose(np.array(out), official["repetition_penalty"], rtol=1e-6)


def test_suppression_and_min_length_match_official(official):
    always, early = code0_bias(3072, 2150)
    scores = official["scores"]
    np.testing.assert_array_equal(np.array(mx.array(scores) + always), official["suppress"])
    # min_new_tokens alone blocks EOS; ours folds it into the suppression mask
    expected_early = np.where(np.isinf(official["suppress"]), -np.inf, official["min_new_tokens"])
    np.testing.assert_array_equal(np.array(mx.array(scores) + early), expected_early)


@pytest.mark.parametrize("name, settings", [
    ("temperature", SamplerSettings(temperature=0.9, top_k=0)),
    ("top_k", SamplerSettings(temperature=1.0, top_k=50)),
    ("top_p", SamplerSettings(temperature=1.0, top_k=0, top_p=0.8)),
])
def test_warpers_keep_the_official_token_sets(official, name, settings):
    scores = mx.array(official["scores"])
    ours = np.array(warp_logits(scores, SamplerArrays.of([settings] * scores.shape[0])))
    ref = official[name]
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    # the same distribution over the kept tokens
    np.testing.assert_allclose(_normalise(ours)[np.isfinite(ours)], _normalise(ref)[np.isfinite(ref)], atol=1e-5)


def _normalise(logits):
    top = np.max(logits, axis=-1, keepdims=True)
    return logits - top - np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True))


def test_sample_respects_top_k_and_greedy():
    logits = mx.array(np.random.default_rng(0).normal(size=(1, 300)).astype(np.float32))
    top5 = set(np.argsort(-np.array(logits[0]))[:5].tolist())
    seeds = mx.array([[1, 0]], dtype=mx.uint32)
    top_k5 = [SamplerSettings(temperature=2.0, top_k=5)]
    for plan in (FULL_VOCAB, sampling_plan(top_k5)):
        drawn = {int(sample(logits, SamplerArrays.of(top_k5), seeds, mx.array([k]), 0, plan)[0]) for k in range(200)}
        assert drawn <= top5 and len(drawn) > 1
    greedy = [SamplerSettings(do_sample=False)]
    assert sampling_plan(greedy) == GREEDY
    for plan in (GREEDY, FULL_VOCAB):
        assert int(sample(logits, SamplerArrays.of(greedy), seeds, mx.array([0]), 0, plan)[0]) == \
            int(np.argmax(np.array(logits)))


SETTINGS = [SamplerSettings(do_sample=False), SamplerSettings(temperature=0.7, top_k=3),
            SamplerSettings(temperature=1.3, top_k=50, top_p=0.5), SamplerSettings(temperature=1.0, top_k=40)]


def test_rows_with_different_settings_sample_as_if_alone():
    """One batch mixing greedy, top-k and top-p rows: each row's draw equals its draw alone,
    whichever plan the batch or the row alone gets."""
    rng = np.random.default_rng(3)
    logits = mx.array(rng.normal(size=(4, 500)).astype(np.float32) * 3)
    seeds = mx.array([[11, 1], [12, 2], [13, 3], [14, 4]], dtype=mx.uint32)
    for frame in range(20):
        counter = mx.full((4,), frame, dtype=mx.int32)
        together = sample(logits, SamplerArrays.of(SETTINGS), seeds, counter, 0, sampling_plan(SETTINGS))
        full = sample(logits, SamplerArrays.of(SETTINGS), seeds, counter, 0, FULL_VOCAB)
        np.testing.assert_array_equal(np.array(together), np.array(full))
        for i, s in enumerate(SETTINGS):
            alone = sample(logits[i:i + 1], SamplerArrays.of([s]), seeds[i:i + 1], counter[i:i + 1], 0,
                           sampling_plan([s]))
            assert int(together[i]) == int(alone[0])
        assert int(together[0]) == int(np.argmax(np.array(logits[0])))
        assert int(together[1]) in set(np.argsort(-np.array(logits[1]))[:3].tolist())


def test_noise_stays_strictly_inside_the_unit_interval():
    """The extreme hash values map inside (0, 1): a noise of exactly 1.0 would make a Gumbel draw
    infinite, and -inf + inf (a suppressed id) NaN, which argmax would pick."""
    u = np.array(unit_interval(mx.array([0, 1, 2**31, 2**32 - 2, 2**32 - 1], dtype=mx.uint32)))
    assert (u > 0).all() and (u < 1).all()
    assert np.isfinite(-np.log(-np.log(u))).all()


def test_sampling_plans():
    assert sampling_plan([SamplerSettings(top_k=50)]) == 64
    assert sampling_plan([SamplerSettings(top_k=50), SamplerSettings(top_k=100)]) == 256
    assert sampling_plan([SamplerSettings(top_k=50), SamplerSettings(top_k=0)]) == FULL_VOCAB
    assert sampling_plan([SamplerSettings(top_k=5000)]) == FULL_VOCAB
    assert sampling_plan([SamplerSettings(do_sample=False, top_k=0), SamplerSettings(top_k=8)]) == 64


def test_gumbel_noise_draws_the_warped_distribution():
    """Counter-based noise: the frequencies of 4000 draws match the softmax (chi-square bound)."""
    logits = mx.array([[2.0, 1.0, 0.5, 0.0, -1.0]])
    probs = np.exp(np.array(logits[0])) / np.exp(np.array(logits[0])).sum()
    sampler = SamplerArrays.of([SamplerSettings(temperature=1.0, top_k=0)] * 4000)
    seeds = mx.array([[7, 0]] * 4000, dtype=mx.uint32)
    drawn = np.array(sample(mx.repeat(logits, 4000, axis=0), sampler, seeds, mx.arange(4000), 0, FULL_VOCAB))
    counts = np.bincount(drawn, minlength=5)
    chi2 = ((counts - 4000 * probs) ** 2 / (4000 * probs)).sum()
    assert chi2 < 20  # 4 degrees of freedom: p < 0.001


def _run(model, prompt, **kw):
    settings = GenerationSettings.from_config(model.config.generation, **kw)
    stats = GenerationStats()
    codes = [np.array(f) for f in generate_frames(model, prompt, settings, stats)]
    return np.array(codes).reshape(-1, 16), stats


def test_seed_reproducible_and_suppressed_ids_never_drawn(model):
    prompt = build_prompt(model, "Hello world, this is a test.", voice="ryan", language="english")
    a, _ = _run(model, prompt, seed=7, max_frames=30, ignore_eos=True)
    b, _ = _run(model, prompt, seed=7, max_frames=30, ignore_eos=True)
    c, _ = _run(model, prompt, seed=8, max_frames=30, ignore_eos=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (30, 16) and a.max() < 2048 and a.min() >= 0  # no control id ever sampled


def test_at_least_two_frames_even_when_eos_dominates(model):
    head = model.talker.codec_head.weight
    original = head
    try:  # EOS row pointing along every hidden state: EOS wins whenever it is allowed
        model.talker.codec_head.weight = head.at[2150].add(1e4 * mx.sign(model.talker.norm.weight))
        prompt = build_prompt(model, "Hello world.", voice="ryan", language="english")
        codes, stats = _run(model, prompt, greedy=True, seed=0)
    finally:
        model.talker.codec_head.weight = original
    assert len(codes) == 2 and stats.stop_reason == "eos"


def test_runaway_budget_is_reported(model):
    prompt = build_prompt(model, "Hi.", voice="ryan", language="english")
    with pytest.warns(RuntimeWarning, match="ran away"):
        codes, stats = _run(model, prompt, seed=3, ignore_eos=True)
    assert stats.runaway and stats.stop_reason == "runaway_budget"
    assert len(codes) == frame_budget(prompt.text_tokens)


def test_stuck_generation_is_stopped(model):
    original = model.talker.norm.weight
    try:  # a silent talker (zero hidden state) proposes the same code 0 forever
        model.talker.norm.weight = mx.zeros_like(original)
        prompt = build_prompt(model, "A long sentence " * 20, voice="ryan", language="english")
        with pytest.warns(RuntimeWarning, match="cycled"):
            codes, stats = _run(model, prompt, greedy=True, ignore_eos=True)
    finally:
        model.talker.norm.weight = original
    assert stats.runaway and stats.stop_reason == "runaway_stuck" and len(codes) == STUCK_WINDOW


def test_normal_generation_is_not_flagged(model):
    prompt = build_prompt(model, "Hello world, this is a test.", voice="ryan", language="english")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes, stats = _run(model, prompt, seed=1, max_frames=40, ignore_eos=True)
    assert not stats.runaway and stats.stop_reason == "max_frames" and len(codes) == 40
    assert stats.host_syncs == 40


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=" "), "text is empty"),
    (dict(voice="nobody"), "unknown voice 'nobody'; this model has: vivian"),
    (dict(language="klingon"), "unknown language 'klingon'"),
])
def test_prompt_errors(model, kwargs, message):
    args = dict(text="Hello.", voice="ryan", language="english") | kwargs
    with pytest.raises(ValueError, match=message):
        build_prompt(model, args.pop("text"), **args)


def test_instruct_ignored_by_0b6_with_warning(model):
    with pytest.warns(UserWarning, match="ignores instruct"):
        with_instruct = build_prompt(model, "Hello.", voice="ryan", instruct="Speak slowly.")
    plain = build_prompt(model, "Hello.", voice="ryan")
    np.testing.assert_array_equal(np.array(with_instruct.embeds), np.array(plain.embeds))
