"""Live text input (engine/live.py): text that arrives in pieces, with stalls, while the row
generates. The invariant: whatever the split and the stalls, greedy codes equal the official
streaming-layout codes (non_streaming_mode=False) and `synthesize(text, non_streaming_text=False)`;
seeded draws are the same whatever the split, the stalls and the batch neighbours."""

import random

import numpy as np
import pytest

from conftest import VARIANTS, load_cases
from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.engine.holdback import TextHoldback
from mlx_qwen_tts.engine.live import LiveSynthesis, make_live_request
from mlx_qwen_tts.engine.prompt import TEXT_TEMPLATE
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis
from mlx_qwen_tts.tokenizer import TextTokenizer

TEXTS = [
    "Hello world, this is a test.",
    "It's 3.14159 km/h — or 12,345 m²? Don't stop!!! \"Quoted,\" (parens) [x] {y}...",
    "你好，世界。今天是2026年12月5日，气温-3.5°C。",
    "Emoji 👍🏽 and 👨‍👩‍👧 family; flags 🇫🇷🇩🇪 ok 🙂🙂",
    "Line one.\n\nLine two\r\n  indented\ttab   spaces   end  ",
    "Привет, мир! Ça va? naïve café e\u0301 combining, ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "CamelCaseWords and snake_case_names, URLs like https://example.com/a?b=1&c=2.",
    "안녕하세요 세계! 한국어 텍스트입니다. ﾃｽﾄ テスト。",
    "Numbers: 1st 2nd 3rd 10% $5.99 1,000,000 -42 +7 3/4 1e-9",
]


@pytest.fixture(scope="module")
def voice(fixtures_dir):
    return dict(np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz"))


def _split(text, rng, pieces):
    cuts = sorted(rng.sample(range(1, len(text)), min(pieces, len(text) - 1)))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def test_released_ids_are_the_whole_texts_ids_for_any_split(model_dir):
    tok = TextTokenizer(model_dir("customvoice_0b6"))
    rng = random.Random(0)
    for text in TEXTS:
        whole = tok.encode_template(TEXT_TEMPLATE, text=text)[3:-5]
        for trial in range(40):
            pieces = _split(text, rng, rng.choice([1, 2, 5, 20, len(text)]))
            holdback, ids = TextHoldback(tok), []
            for piece in pieces:
                ids += holdback.push(piece)
            ids += holdback.finish()
            assert ids == whole, (text, pieces)


def test_an_unfinished_word_or_number_is_held_back(model_dir):
    tok = TextTokenizer(model_dir("customvoice_0b6"))
    holdback = TextHoldback(tok)
    assert holdback.push("Hel") == [] and holdback.push("lo") == []
    released = holdback.push(" wor")  # "Hello" can no longer change; " wor" can
    assert tok.decode(released) == "Hello"
    assert tok.decode(holdback.push("ld 12")) == " world"
    # digits are single tokens, so a number may go out digit by digit; its unit waits for a boundary
    assert tok.decode(holdback.push("3.5")) == " 123" and tok.decode(holdback.push("k")) == ""
    assert tok.decode(holdback.push("m ")) == ".5km"
    assert tok.decode(holdback.finish()) == " "


def _schedule(text, rng, pieces, stalls=(0, 0, 1, 3, 6)):
    """[(frame, piece)] and the frame of finish(): pieces arrive with gaps, some of several frames,
    and a long stall after the first piece."""
    frame, plan = 0, []
    for i, piece in enumerate(_split(text, rng, pieces)):
        plan.append((frame, piece))
        frame += 12 if i == 0 else rng.choice(stalls)
    return plan, frame + rng.choice([0, 2])


def _drive(model, live, others=(), max_batch=8):
    """Run a scheduler frame by frame. live: [(LiveSynthesis, schedule, finish frame, submit frame)];
    others: ordinary requests. Returns the codes per synthesis (live first) and the frames on
    which each live row sat parked while its frame count stayed put, and the frame each live row
    started on."""
    scheduler = Scheduler(model, max_batch)
    syntheses = [s for s, *_ in live] + [Synthesis(r, codes_out=[]) for r in others]
    for synthesis in syntheses[len(live):]:
        scheduler.submit(synthesis)
    paused, started = [0] * len(live), [None] * len(live)
    for frame in range(400):
        for i, (synthesis, plan, finish_at, submit_at) in enumerate(live):
            if frame == submit_at:
                scheduler.submit(synthesis)
            for at, piece in plan:
                if at == frame:
                    synthesis.feed(piece)
            if frame == finish_at:
                synthesis.finish()
        before = {row: row.stats.frames for row in scheduler.batch.parked}
        scheduler.run_once()
        for i, (synthesis, *_) in enumerate(live):
            if started[i] is None and synthesis.live.prompt is not None:
                started[i] = frame
        for row, frames in before.items():
            if row in scheduler.batch.parked and row.stats.frames == frames:
                paused[[s for s, *_ in live].index(row.owner.synthesis)] += 1
        if not scheduler.busy and frame > max(f for _, _, f, _ in live):
            break
    assert not scheduler.busy
    for synthesis in syntheses:
        if synthesis.error is not None:
            raise synthesis.error
    return [np.array(s.codes_out, dtype=np.int32).reshape(-1, 16) for s in syntheses], paused, started


def _live(model, **kwargs):
    return LiveSynthesis(make_live_request(model.config, **kwargs), model.tokenizer, codes_out=[])


def _case_kwargs(args, voice):
    kw = dict(voice=args["speaker"], language=args["language"], instruct=args["instruct"],
              max_frames=args["max_new_tokens"] - 1)
    if args.get("mode"):
        kw.update(voice=None, ref_audio=voice["wave"], ref_text=args.get("ref_text"))
    return kw


@pytest.mark.parametrize("variant", VARIANTS)
def test_any_split_and_stalls_give_the_official_streaming_codes(models, fixtures_dir, voice, variant):
    """Every streaming-layout case of the variant, fed in random pieces with stalls of several
    frames, all live rows of one batch beside an ordinary row: each equals the official codes."""
    model = models(variant)
    cases = [(n, a, r) for n, a, r in load_cases(fixtures_dir, variant) if not a["non_streaming"]]
    assert cases
    rng = random.Random(variant)
    paused_frames = 0
    for trial in range(2):
        live = []
        for name, args, _ in cases:
            plan, finish_at = _schedule(args["text"], rng, rng.choice([3, 6, len(args["text"])]))
            live.append((_live(model, greedy=True, **_case_kwargs(args, voice)), plan, finish_at,
                         rng.choice([0, 0, 2])))
        neighbour = make_request(model.config, "A neighbour speaks.", greedy=True, max_frames=30,
                                 **{k: v for k, v in _case_kwargs(cases[0][1], voice).items() if k != "max_frames"})
        codes, paused, started = _drive(model, live, [neighbour])
        for (name, args, ref), got in zip(cases, codes):
            np.testing.assert_array_equal(got, ref["codes"], err_msg=f"{name} trial {trial}")
        expected = synthesize(model, "A neighbour speaks.", greedy=True, max_frames=30,
                              **{k: v for k, v in _case_kwargs(cases[0][1], voice).items() if k != "max_frames"})
        np.testing.assert_array_equal(codes[-1], expected.codes)
        paused_frames += sum(paused)
    assert paused_frames > 0  # the stalls really paused rows


def test_seeded_sampling_is_the_same_whatever_the_split_stalls_and_neighbours(models):
    model = models("customvoice_0b6")
    text = "Sampling must not depend on how the text arrives, nor on who shares the batch."
    kw = dict(voice="vivian", seed=77, temperature=0.9, top_k=40, max_frames=60)
    expected = synthesize(model, text, non_streaming_text=False, **kw).codes
    rng = random.Random(5)
    paused_frames = 0
    for trial in range(3):
        live = [(_live(model, **kw), *_schedule(text, rng, rng.choice([8, 12, 30]), stalls=(0, 4, 8)), trial)]
        live += [(_live(model, voice="ryan", seed=i, max_frames=40), *_schedule(f"Other voice {i} talks.", rng, 5),
                  i) for i in range(trial + 1)]
        others = [make_request(model.config, "Plain row.", voice="serena", seed=3, max_frames=20)] * trial
        codes, paused, started = _drive(model, live, others)
        np.testing.assert_array_equal(codes[0], expected, err_msg=f"trial {trial}")
        paused_frames += paused[0]
    assert paused_frames > 0


def test_an_in_context_clone_starts_once_the_reference_is_covered(models, voice):
    """In-context (ref_text) rows start after (1 + ref frames) - len(ref text ids) target tokens:
    a text long enough to start before the input ends equals synthesize(non_streaming_text=False)."""
    model = models("base_0b6")
    text = "This sentence is long enough to start the cloned voice well before the input ends, then it stalls."
    kw = dict(ref_audio=voice["wave"], ref_text="Ref.", greedy=True, max_frames=40)
    expected = synthesize(model, text, non_streaming_text=False, **kw).codes
    rng = random.Random(3)
    synthesis = _live(model, **kw)
    plan, finish_at = _schedule(text, rng, 25, stalls=(0, 6, 10))
    codes, paused, started = _drive(model, [(synthesis, plan, finish_at, 0)])
    np.testing.assert_array_equal(codes[0], expected)
    assert synthesis.live.need > 1 and paused[0] > 0
    assert started[0] < finish_at  # it started while the text was still arriving


def test_live_requests_reject_what_live_text_cannot_do(models):
    model = models("customvoice_0b6")
    with pytest.raises(TypeError, match="streaming text layout"):
        make_live_request(model.config, non_streaming_text=True)
    with pytest.raises(ValueError, match="unknown voice"):
        make_live_request(model.config, voice="nobody")
    synthesis = _live(model)
    synthesis.feed("Hi")
    synthesis.finish()
    with pytest.raises(RuntimeError, match="finished"):
        synthesis.feed(" more")
    with pytest.raises(TypeError):
        synthesis.feed(b"bytes")
