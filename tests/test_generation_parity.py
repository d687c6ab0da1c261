"""Talker, code predictor, prompt layout and the generation loop against the official model:
prefill embeddings, per-step logits and greedy codes (including where EOS falls) for every
fixture variant and mode."""

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANTS, load_cases
from mlx_qwen_tts.engine.generate import GenerationSettings, GenerationStats, generate_frames
from mlx_qwen_tts.engine.prompt import INSTRUCT_TEMPLATE, TEXT_TEMPLATE, VoiceClone, build_prompt
from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.quality import teacher_forced_logits
from mlx_qwen_tts.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def models(model_dir):
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_model(model_dir(variant), dtype=mx.float32, codec=False)
        return cache[variant]
    return get


def _clone(fixtures_dir, args):
    if args.get("mode") is None:
        return None
    voice = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")
    ref_codes = mx.array(voice["ref_codes"]) if args["mode"] == "icl" else None
    return VoiceClone(mx.array(voice["xvector"]), ref_codes, args.get("ref_text"))


def _all_cases(fixtures_dir):
    return [(v, name, args, ref) for v in VARIANTS for name, args, ref in load_cases(fixtures_dir, v)]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        from conftest import ensure_fixtures
        cases = _all_cases(ensure_fixtures())
        metafunc.parametrize("case", cases, ids=[f"{v}-{n}" for v, n, _, _ in cases])


def test_tokenization_matches_official_processor(model_dir, case):
    variant, _, args, ref = case
    tok = TextTokenizer(model_dir(variant))
    # The prompt's own path: template markers as control ids, the user's text as plain text.
    assert tok.encode_template(TEXT_TEMPLATE, text=args["text"]) == ref["input_ids"].tolist()
    if args["instruct"]:
        assert tok.encode_template(INSTRUCT_TEMPLATE, instruct=args["instruct"]) == ref["instruct_ids"].tolist()


def test_greedy_generation_matches_official(models, fixtures_dir, case):
    variant, _, args, ref = case
    model = models(variant)
    prompt = build_prompt(model, args["text"], voice=args["speaker"], language=args["language"],
                          instruct=args["instruct"], non_streaming_text=args["non_streaming"],
                          clone=_clone(fixtures_dir, args))
    assert prompt.embeds.shape == ref["prefill"].shape
    np.testing.assert_allclose(np.array(prompt.embeds), ref["prefill"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(prompt.trailing), ref["trailing"], atol=1e-5, rtol=0)

    stats = GenerationStats()
    settings = GenerationSettings.from_config(model.config.generation, greedy=True,
                                              max_frames=args["max_new_tokens"] - 1)
    codes = np.array([np.array(f) for f in generate_frames(model, prompt, settings, stats)]).reshape(-1, 16)
    np.testing.assert_array_equal(codes, ref["codes"])
    assert stats.stop_reason == ("eos" if args["ended_with_eos"] else "max_frames")
    assert stats.host_syncs <= len(codes) + 1  # one sync per frame (+ the EOS frame)


def test_logits_match_official_at_every_step(models, fixtures_dir, case):
    """The networks' forward pass, teacher-forced with the official greedy codes: the talker's
    code-0 logits at every step (the EOS step too) and every frame's 15 predictor steps."""
    variant, _, args, ref = case
    model = models(variant)
    prompt = build_prompt(model, args["text"], voice=args["speaker"], language=args["language"],
                          instruct=args["instruct"], non_streaming_text=args["non_streaming"],
                          clone=_clone(fixtures_dir, args))
    steps = len(ref["talker_logits"])
    assert steps >= len(ref["codes"])
    # one extra (arbitrary) frame lets the forward pass reach the step after the last code
    forced = np.concatenate([ref["codes"], np.zeros((1, 16), np.int32)])[:steps]
    talker_logits, predictor_logits = teacher_forced_logits(model, prompt, mx.array(forced))
    np.testing.assert_allclose(np.array(talker_logits), ref["talker_logits"], atol=1e-4, rtol=0)
    n = len(ref["codes"])
    np.testing.assert_allclose(np.array(predictor_logits)[:n], ref["predictor_logits"][:n], atol=1e-4, rtol=0)
