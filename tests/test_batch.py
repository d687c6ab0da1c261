"""The batched engine: many requests as rows of one running batch. Every row must give exactly
what it gives alone (and, greedy, what the official single-request call gives), whoever shares
the batch, whenever it joined, however its neighbours end."""

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANTS, load_cases
from mlx_qwen_tts.api import synthesize, synthesize_batch
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis

TEXT = "Hello world, this is a test."


@pytest.fixture(scope="module")
def custom(models):
    return models("customvoice_0b6")


@pytest.fixture(scope="module")
def voice(fixtures_dir):
    return dict(np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz"))


def _case_kwargs(args, voice):
    kw = dict(voice=args["speaker"], language=args["language"], instruct=args["instruct"],
              non_streaming_text=args["non_streaming"], max_frames=args["max_new_tokens"] - 1)
    if args.get("mode"):
        kw.update(voice=None, ref_audio=voice["wave"], ref_text=args.get("ref_text"))
    return kw


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_case_of_a_variant_in_one_batch_matches_the_official_single_requests(models, fixtures_dir,
                                                                                    voice, variant):
    """Mixed voices, languages, instruct and both text modes (Base: x-vector and in-context rows)
    in ONE batch: each row's greedy codes equal the official single-request codes, audio within 1e-4."""
    model = models(variant)
    cases = load_cases(fixtures_dir, variant)
    per_case = [_case_kwargs(args, voice) for _, args, _ in cases]
    keys = sorted({k for kw in per_case for k in kw})
    columns = {k: [kw.get(k) for kw in per_case] for k in keys}
    results = synthesize_batch(model, [args["text"] for _, args, _ in cases], greedy=True, max_batch=len(cases),
                               **columns)
    for (name, args, ref), result in zip(cases, results):
        np.testing.assert_array_equal(result.codes, ref["codes"], err_msg=name)
        expected = ref["wav"]
        if args.get("mode") == "icl":  # we drop exactly the reference's frames (see test_api)
            expected = expected[len(expected) - len(result.audio):]
        assert len(result.audio) == len(result.codes) * 1920
        np.testing.assert_allclose(result.audio, expected, atol=1e-4, rtol=0, err_msg=name)
        assert result.stats.stop_reasons == ["eos" if args["ended_with_eos"] else "max_frames"]


def test_base_rows_with_different_references_equal_their_solo_results(models, voice):
    """Each row clones its own reference: x-vector and in-context rows from two recordings."""
    base = models("base_0b6")
    other = np.roll(voice["wave"], 4000) * 0.7  # another "speaker"
    rows = [dict(ref_audio=voice["wave"]), dict(ref_audio=other),
            dict(ref_audio=voice["wave"], ref_text="This is the voice to speak with."),
            dict(ref_audio=other, ref_text="This is the voice to speak with.")]
    together = synthesize_batch(base, [TEXT] * 4, seed=[1, 2, 3, 4], max_frames=10,
                                ref_audio=[r["ref_audio"] for r in rows], ref_text=[r.get("ref_text") for r in rows])
    for i, (row, result) in enumerate(zip(rows, together)):
        alone = synthesize(base, TEXT, seed=i + 1, max_frames=10, **row)
        np.testing.assert_array_equal(result.codes, alone.codes)
        np.testing.assert_allclose(result.audio, alone.audio, atol=1e-5, rtol=0)
    assert not np.array_equal(together[0].codes, together[1].codes)


@pytest.mark.parametrize("variant", ["customvoice_0b6", "customvoice_1b7", "voicedesign_1b7"])
def test_the_official_batch_call(models, fixtures_dir, variant):
    """The official generate() with list inputs (left-padded prompts, one attention mask) on the
    same cases: its rows equal its own single-request results here, and ours equal both."""
    model = models(variant)
    cases = {name: (args, ref) for name, args, ref in load_cases(fixtures_dir, variant)}
    for mode in ("nonstream", "stream"):
        path = fixtures_dir / "dumps" / variant / f"batch_{mode}.npz"
        if not path.exists():  # a variant with a single case of this text mode has no batch
            continue
        official = dict(np.load(path))
        names = list(official)
        ours = synthesize_batch(model, [cases[n][0]["text"] for n in names], greedy=True,
                                **{k: [_case_kwargs(cases[n][0], None)[k] for n in names]
                                   for k in ("voice", "language", "instruct", "non_streaming_text", "max_frames")})
        for name, result in zip(names, ours):
            single = cases[name][1]["codes"]
            np.testing.assert_array_equal(official[name], single, err_msg=f"official {name}")
            np.testing.assert_array_equal(result.codes, single, err_msg=name)


def _run(model, requests, *, max_batch=8, join_at=None, cancel=None):
    """Drive a scheduler by hand: `join_at` {frame: request} submits later, `cancel` {frame: index}."""
    scheduler = Scheduler(model, max_batch)
    syntheses = []
    for request in requests:
        syntheses.append(Synthesis(request, codes_out=[]))
        scheduler.submit(syntheses[-1])
    frame, peak_rows = 0, 0
    while scheduler.busy or (join_at and any(f >= frame for f in join_at)):
        for at, request in (join_at or {}).items():
            if at == frame:
                syntheses.append(Synthesis(request, codes_out=[]))
                scheduler.submit(syntheses[-1])
        for at, index in (cancel or {}).items():
            if at == frame:
                syntheses[index].cancel()
        scheduler.run_once()
        peak_rows = max(peak_rows, len([r for r in scheduler.batch.rows if not r.done]))
        frame += 1
        assert frame < 2000
    return [np.array(s.codes_out).reshape(-1, 16) for s in syntheses], syntheses, peak_rows


def test_a_seeded_row_is_the_same_alone_in_a_batch_of_8_and_joining_at_frame_5(custom):
    target = make_request(custom.config, TEXT, voice="ryan", seed=1234, temperature=0.8, top_k=30, max_frames=25)
    others = [make_request(custom.config, f"Other text number {i}.", voice=v, seed=i, temperature=0.5 + i / 10,
                           top_p=0.9, max_frames=10 + 3 * i)
              for i, v in enumerate(["vivian", "serena", "dylan", "eric", "aiden", "sohee", "ono_anna"])]
    (alone,), _, _ = _run(custom, [target])
    batched, _, peak = _run(custom, others[:3] + [target] + others[3:])
    assert peak == 8
    joined, _, _ = _run(custom, others[:4], join_at={5: target})
    assert len(alone) == 25
    np.testing.assert_array_equal(batched[3], alone)
    np.testing.assert_array_equal(joined[4], alone)
    assert not np.array_equal(batched[0][:10], alone[:10])


def test_cancelled_row_leaves_others_unchanged_and_its_slot_is_reused(custom):
    requests = [make_request(custom.config, TEXT, voice=v, seed=i, max_frames=20)
                for i, v in enumerate(["ryan", "vivian", "serena"])]
    late = make_request(custom.config, "A late request.", voice="eric", seed=9, max_frames=12)
    solo = [_run(custom, [r])[0][0] for r in requests + [late]]
    codes, syntheses, peak = _run(custom, requests, max_batch=3, join_at={3: late}, cancel={6: 1})
    assert peak == 3  # the late request waited for the cancelled row's slot
    assert syntheses[1].cancelled and 0 < len(codes[1]) < 20
    np.testing.assert_array_equal(codes[1], solo[1][:len(codes[1])])
    for i in (0, 2, 3):
        np.testing.assert_array_equal(codes[i], solo[i])


def test_rows_end_at_different_frames_and_a_runaway_row_is_stopped(custom):
    limited = [make_request(custom.config, TEXT, voice="ryan", seed=i, max_frames=m, ignore_eos=True)
               for i, m in enumerate([3, 9, 17])]
    runaway = make_request(custom.config, "Hi.", voice="ryan", seed=5, ignore_eos=True)
    greedy = make_request(custom.config, TEXT, voice="ryan", language="english", greedy=True, max_frames=23)
    with pytest.warns(RuntimeWarning, match="ran away"):
        codes, syntheses, _ = _run(custom, limited + [runaway, greedy])
        solo = [_run(custom, [request])[0][0] for request in limited + [runaway, greedy]]
    assert [len(c) for c in codes[:3]] == [3, 9, 17]
    assert syntheses[3].stats.runaway and syntheses[3].stats.stop_reasons == ["runaway_budget"]
    assert syntheses[4].stats.stop_reasons == ["eos"]
    for alone, got in zip(solo, codes):
        np.testing.assert_array_equal(got, alone)


def _reference_greedy(model, prompt, frames):
    """An independent greedy loop over plain mlx-lm caches (no batch buffer, no padding, no
    compile): the oracle for long prompts and long generations."""
    from mlx_qwen_tts.engine.sampling import code0_bias
    talker, predictor, ids = model.talker, model.code_predictor, model.config.ids
    always, early = code0_bias(model.config.talker.vocab_size, ids.codec_eos)
    cache = talker.make_cache()
    h = talker(prompt.embeds, cache)[:, -1:]
    seen, out = set(), []
    for k in range(frames):
        logits = talker.codec_head(h[:, 0])[0]
        logits = mx.where(mx.array([i in seen for i in range(logits.shape[0])]),
                          mx.where(logits < 0, logits * 1.05, logits / 1.05), logits) + early
        code0 = int(mx.argmax(logits))
        seen.add(code0)
        x = mx.concatenate([h, talker.codec_embedding(mx.array([[code0]]))], axis=1)
        pcache = [c.__class__() for c in cache[:len(predictor.layers)]]
        frame, embed_sum = [code0], talker.codec_embedding(mx.array([[code0]]))
        for g in range(1, 16):
            code = int(mx.argmax(predictor.step_logits(x, pcache, g)[0]))
            frame.append(code)
            x = predictor.codec_embedding[g - 1](mx.array([[code]]))
            embed_sum = embed_sum + x
        out.append(frame)
        text = prompt.trailing[:, k:k + 1] if k < prompt.trailing.shape[1] else prompt.tts_pad
        h = talker(embed_sum + text, cache)
    return np.array(out)


def test_a_long_prompt_and_a_long_generation_match_an_independent_loop(custom):
    """A 300-token prompt (beyond the first KV capacity of 256) in a batch with a short one, and a
    generation of 300 frames (past a capacity doubling), against the oracle loop above."""
    from mlx_qwen_tts.engine.prompt import build_prompt
    long_text = " ".join(f"word{i}" for i in range(150))
    long_request = make_request(custom.config, long_text, voice="ryan", greedy=True, max_frames=6,
                                ignore_eos=True, max_segment_tokens=5000)
    long_run = make_request(custom.config, "Short.", voice="ryan", greedy=True, max_frames=300, ignore_eos=True)
    codes, _, _ = _run(custom, [long_run, long_request])
    long_prompt = build_prompt(custom, long_text, voice="ryan")
    assert long_prompt.embeds.shape[1] > 256
    np.testing.assert_array_equal(codes[1], _reference_greedy(custom, long_prompt, 6))
    short_prompt = build_prompt(custom, "Short.", voice="ryan")
    np.testing.assert_array_equal(codes[0], _reference_greedy(custom, short_prompt, 300))


def test_eight_different_sampler_settings_share_one_compiled_step(models):
    model = models("customvoice_1b7")  # a model no other test traced at B = 8
    before = model.frame_step.traces
    for offset in (0.0, 0.05):
        texts = [f"Row {i} of the batch." for i in range(8)]
        synthesize_batch(model, texts, voice="aiden", seed=list(range(8)), max_frames=4,
                         temperature=[0.3 + offset + i / 10 for i in range(8)], top_k=[0, 5, 10, 20, 40, 80, 160, 1000],
                         top_p=[1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.99], ignore_eos=True)
    assert model.frame_step.traces - before == 1
