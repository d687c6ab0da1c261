"""Where one frame of our engine spends its time on the host, per phase of the loop body.

The phases are those of `Batch.step` (mlx_qwen_tts/engine/generate.py) for one row: calling the
compiled frame step (replaying its recorded graph), `async_eval` (dispatch), and reading the
previous step's frames (the one host sync). A thread-CPU and a wall timer go around each:
MLX computes on its own threads, so the main thread's CPU time is host work and wall time beyond
it is waiting for the device. The step's graph (primitives, Metal kernels) is counted by
bench/frame_kernels.py. Runs inside our worker (bench/ours.py, op "profile").
"""

import time
from collections import Counter

import mlx.core as mx
import numpy as np

from common import LANGUAGE, VOICE
from mlx_qwen_tts.engine.generate import Batch, GenerationSettings, Row
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.engine.sampling import draw_plan

PHASES = ("frame step call (compiled replay)", "async_eval (dispatch)", "read frames (wait for the device)")


def one_row_batch(model, text, seed, prefill_positions=None, greedy=False) -> Batch:
    """A batch holding one row right after its prefill (EOS impossible). `prefill_positions`
    limits the prompt to its first positions (an 8-bit CPU prefill of a long prompt takes minutes)."""
    settings = GenerationSettings.from_config(model.config.generation, greedy=greedy, ignore_eos=True, seed=seed)
    prompt = build_prompt(model, text, voice=VOICE, language=LANGUAGE)
    if prefill_positions:
        prompt.embeds = prompt.embeds[:, :prefill_positions]
    batch = Batch(model)
    batch.add(Row(prompt, settings))
    return batch


def plans(batch: Batch) -> tuple[int, int]:
    return (draw_plan([r.settings.talker for r in batch.rows]),
            draw_plan([r.settings.predictor for r in batch.rows]))


def host_split(model, text, frames, seed) -> dict:
    batch = one_row_batch(model, text, seed)
    step, consts, state, plan = model.frame_step, batch.consts, batch.state, plans(batch)
    cpu, wall = Counter(), Counter()
    marks = [(time.thread_time(), time.perf_counter())]

    def mark(phase):
        marks.append((time.thread_time(), time.perf_counter()))
        cpu[phase] += marks[-1][0] - marks[-2][0]
        wall[phase] += marks[-1][1] - marks[-2][1]

    previous = None
    for _ in range(frames + 1):  # the first iteration has no previous frame to read
        marks.append((time.thread_time(), time.perf_counter()))
        out, state = step(consts, state, plan)
        mark(PHASES[0])
        mx.async_eval(out, state)
        mark(PHASES[1])
        if previous is not None:
            np.array(previous)
            mark(PHASES[2])
        previous = out
    return {p: dict(cpu_ms=cpu[p] / frames * 1e3, wall_ms=wall[p] / frames * 1e3) for p in PHASES}
