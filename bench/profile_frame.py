"""Where one frame of our loop spends its time: host work per phase and graph size per stage.

The phases mirror the body of `generate_frames` (mlx_qwen_tts/generate.py) with a thread-CPU
and a wall timer around each call: MLX computes on its own threads, so the main thread's CPU
time is host work (graph building, compiled-graph replay, dispatch), and wall time beyond it is
waiting for the device. Graph sizes come from `mx.export_to_dot`: primitives per stage, the most
frequent first. Runs inside our worker (bench/ours.py, op "profile").
"""

import io
import re
import time
from collections import Counter

import mlx.core as mx

from common import LANGUAGE, VOICE
from mlx_qwen_tts.engine.generate import GenerationSettings, _code0_picker, _frame_finisher
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.engine.sampling import code0_bias

PHASES = ("keys + code-0 embedding", "code predictor (compiled call)", "talker step (graph build)",
          "code-0 sampler (compiled call)", "async_eval (dispatch)", "item (wait for code 0)")


class LoopStart:
    """The loop's compiled pieces and its state right after the prefill, as generate_frames builds
    them (EOS impossible), for timing the loop body outside it. `prefill_positions` limits the
    prefill to the prompt's first positions (an 8-bit CPU prefill of a long prompt takes minutes)."""

    def __init__(self, model, text, seed, prefill_positions=None):
        cfg, talker = model.config, model.talker
        self.dtype = talker.norm.weight.dtype
        settings = GenerationSettings.from_config(cfg.generation, ignore_eos=True, seed=seed)
        self.pick, self.finish = _code0_picker(model, settings), _frame_finisher(model, settings.predictor)
        _, self.bias = code0_bias(cfg.talker.vocab_size, cfg.ids.codec_eos)
        self.prompt = build_prompt(model, text, voice=VOICE, language=LANGUAGE)
        self.cache = talker.make_cache()
        embeds = self.prompt.embeds[:, :prefill_positions]
        self.hidden, logits = talker(embeds.astype(self.dtype), self.cache)
        self.key = mx.random.key(seed)
        self.code0, self.seen = self.pick(logits, mx.zeros((1, cfg.talker.vocab_size), dtype=mx.bool_),
                                          self.bias, self.key)


def host_split(model, text, frames, seed) -> dict:
    cfg, talker = model.config, model.talker
    s = LoopStart(model, text, seed)
    dtype, pick, finish, bias, prompt, cache = s.dtype, s.pick, s.finish, s.bias, s.prompt, s.cache
    hidden, key, code0, seen = s.hidden, s.key, s.code0, s.seen
    mx.async_eval(code0)
    cpu, wall = Counter(), Counter()
    marks = [(time.thread_time(), time.perf_counter())]

    def mark(phase):
        marks.append((time.thread_time(), time.perf_counter()))
        cpu[phase] += marks[-1][0] - marks[-2][0]
        wall[phase] += marks[-1][1] - marks[-2][1]

    for _ in range(frames):
        key, k_code0, k_frame = mx.random.split(key, 3)
        keys = mx.random.split(k_frame, cfg.num_code_groups - 1)
        code0_vec = talker.codec_embedding(code0)[:, None]
        mark(PHASES[0])
        rest, rest_sum, _ = finish(hidden, code0_vec, keys)
        mark(PHASES[1])
        hidden, logits = talker(code0_vec + rest_sum + prompt.tts_pad.astype(dtype), cache)
        mark(PHASES[2])
        next_code0, seen = pick(logits, seen, bias, k_code0)
        mark(PHASES[3])
        mx.async_eval(next_code0, rest)
        mark(PHASES[4])
        code0.item()
        mark(PHASES[5])
        code0 = next_code0
    return {p: dict(cpu_ms=cpu[p] / frames * 1e3, wall_ms=wall[p] / frames * 1e3) for p in PHASES}


def graph_sizes(model, text, seed) -> dict:
    """Primitives in the graphs the loop dispatches per frame (after mx.compile's fusion)."""
    cfg, talker = model.config, model.talker
    dtype = talker.norm.weight.dtype
    settings = GenerationSettings.from_config(cfg.generation, ignore_eos=True, seed=seed)
    finish = _frame_finisher(model, settings.predictor)
    prompt = build_prompt(model, text, voice=VOICE, language=LANGUAGE)
    cache = talker.make_cache()
    hidden, _ = talker(prompt.embeds[:, :1].astype(dtype), cache)
    code0_vec = talker.codec_embedding(mx.array([0]))[:, None]
    mx.eval(hidden, code0_vec)
    _, rest_sum, _ = finish(hidden, code0_vec, mx.random.split(mx.random.key(seed), cfg.num_code_groups - 1))
    sizes = {"code predictor frame": _ops(rest_sum)}
    mx.eval(rest_sum)
    sizes["talker step"] = _ops(talker(code0_vec + rest_sum, cache)[1])
    return {stage: dict(primitives=sum(ops.values()), top=dict(ops.most_common(8))) for stage, ops in sizes.items()}


def _ops(out) -> Counter:
    dot = io.StringIO()
    mx.export_to_dot(dot, out)
    return Counter(re.findall(r'label ="?([A-Za-z]+)', dot.getvalue()))
