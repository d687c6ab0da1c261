"""Our side: builds the MLX model for a shape and precision and times the one generation loop.

    python bench/ours.py   (a worker started by bench/run.py: JSON commands on stdin, see common.serve)

Measures the loop's per-frame time, host syncs and Python (host) time per frame, prefill, the
synced step time, memory and the weight bytes read per frame; the time to
first audio of `stream()`; a profile of one frame (bench/profile_frame.py, bench/frame_kernels.py); and the memory
bandwidth (bench/roofline.py).
"""

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from common import LANGUAGE, TEXTS, VOICE, host_info, peak_rss_gb, per_frame, serve
from frame_kernels import graph_sizes
from profile_frame import host_split, one_row_batch, plans
from roofline import measure_bandwidth
from shapes import FIXTURE, config_dicts
from mlx_qwen_tts.api import SynthesisStats, stream, synthesize
from mlx_qwen_tts.models.code_predictor import CodePredictor
from mlx_qwen_tts.config import parse_model_config
from mlx_qwen_tts.engine.generate import Batch, GenerationSettings, GenerationStats, Row, generate_frames
from mlx_qwen_tts.loading import HF_PREFIXES, Model, default_dtype, load_model
from mlx_qwen_tts.engine.prompt import build_prompt
from mlx_qwen_tts.quantize import should_quantize
from mlx_qwen_tts.models.talker import Talker
from mlx_qwen_tts.tokenizer import TextTokenizer

GROUP_SIZE = 64


def precision_dtype(precision: str):
    """(float dtype, quantization bits); 8-bit keeps the device's default float for the rest."""
    return {"float32": (mx.float32, None), "bfloat16": (mx.bfloat16, None), "8bit": (default_dtype(), 8)}[precision]


def build(shape: str, precision: str, codec: bool = False) -> Model:
    dtype, bits = precision_dtype(precision)
    if shape == "tiny":
        if bits:
            raise ValueError("the tiny fixture is benchmarked in float precisions only")
        return load_model(FIXTURE, dtype=dtype, codec=codec)
    config = parse_model_config(*config_dicts(shape))
    talker, predictor = Talker(config), CodePredictor(config)
    randomize(talker, "talker.", dtype, bits)
    randomize(predictor, "code_predictor.", dtype, bits)
    model = Model(config=config, talker=talker, code_predictor=predictor, tokenizer=TextTokenizer(FIXTURE))
    if codec:  # the released codec's shape, built as bench/bench_codec.py builds it
        from bench_codec import build_decoder

        model.codec = build_decoder()
    mx.clear_cache()
    return model


def randomize(root: nn.Module, prefix: str, dtype, bits):
    """Random weights in the real layout, module by module, made directly in `dtype` and quantized
    as they are made (the converter's policy), so building never holds a float32 copy of the model."""
    for path, module in list(root.named_modules()):
        own = {k: v for k, v in module.items() if isinstance(v, mx.array)}
        if not own:
            continue
        unit = isinstance(module, nn.Embedding)  # lookup tables: unit variance, as trained ones
        if bits and path and isinstance(module, (nn.Linear, nn.Embedding)) and should_quantize(
                f"{prefix}{path}.weight", module.weight.shape, GROUP_SIZE):
            shape = module.weight.shape
            module = module.to_quantized(group_size=GROUP_SIZE, bits=bits)  # its lazy arrays are replaced unread
            module.weight, module.scales, module.biases = _random_quantized(shape, dtype, unit, bits)
            own = {k: v for k, v in own.items() if k != "weight"}
            _replace(root, path, module)
        module.update({k: _random(k, v.shape, dtype, unit) for k, v in own.items()})
        mx.eval(module.parameters())
        mx.clear_cache()  # hand temporaries back, or the process's peak RSS counts them


def _random_quantized(shape, dtype, unit, bits):
    """Quantized noise made in row chunks: quantizing a whole 151936 x 2048 table at once takes
    several float32 copies of it."""
    rows, cols = shape
    step = max(1, (1 << 24) // cols)  # 64 MB of float32 per chunk
    parts = []
    for start in range(0, rows, step):
        parts.append(mx.quantize(_random("weight", (min(step, rows - start), cols), dtype, unit),
                                 group_size=GROUP_SIZE, bits=bits))
        mx.eval(parts[-1])
    return [mx.concatenate(p) for p in zip(*parts)]


def _random(name, shape, dtype, unit):
    noise = _noise(math.prod(shape), dtype).reshape(shape)
    if len(shape) == 1:  # norms near 1, biases small (never zeros)
        return 0.05 * noise if name == "bias" else 1 + 0.05 * noise
    return noise if unit else noise * (1.0 / math.sqrt(math.prod(shape[1:])))  # fan-in scaled


_POOL = {}


def _noise(n, dtype):
    """Normal noise tiled from a fixed pool: drawing 10^9 fresh normals on the CPU takes a minute,
    and repeating values change nothing about a matrix-vector product's speed."""
    if dtype not in _POOL:
        _POOL[dtype] = mx.random.normal(((1 << 20) + 7,), dtype=dtype, key=mx.random.key(0))  # odd: rows don't align
    pool = _POOL[dtype]
    return mx.tile(pool, -(-n // pool.size))[:n] if n > pool.size else pool[:n]


def _replace(root, path, new):
    *parents, last = path.split(".")
    node = root
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = new
    else:
        setattr(node, last, new)


def frame_weight_bytes(model: Model) -> dict:
    """Weight bytes read per frame: the talker stack and head once; the predictor stack (and the
    1.7B input projection) once per group step; each predictor head once."""
    def size(*modules):
        return sum(v.nbytes for m in modules for _, v in tree_flatten(m.parameters()))
    t, p = model.talker, model.code_predictor
    steps = len(p.lm_head)
    per_step = size(*p.layers, p.norm) + (size(p.small_to_mtp_projection) if "small_to_mtp_projection" in p else 0)
    talker = size(*t.layers, t.norm, t.codec_head)
    predictor = steps * per_step + size(*p.lm_head)
    return dict(talker=talker, predictor=predictor, total=talker + predictor, weights_total=size(t, p))


def run_loop(model, prompt_text, frames, seed) -> dict:
    """One generation of `frames` frames; timestamps and thread CPU time at every frame."""
    prompt = build_prompt(model, prompt_text, voice=VOICE, language=LANGUAGE)
    settings = GenerationSettings.from_config(model.config.generation, max_frames=frames, ignore_eos=True, seed=seed)
    stats = GenerationStats()
    stamps, cpu, last = [], [], None
    for last in generate_frames(model, prompt, settings, stats):
        stamps.append(time.perf_counter())
        cpu.append(time.thread_time())  # MLX computes on its own threads: this is host (Python) work
    mx.eval(last)
    assert stats.frames == frames, f"{stats.frames} frames, stopped by {stats.stop_reason}"
    return dict(frame_s=per_frame(stamps), python_s=per_frame(cpu), syncs=stats.host_syncs / stats.frames)


def time_prefill(model, prompt_text) -> float:
    """Prompt embedding and the talker's prefill pass to code-0 logits, evaluated."""
    t0 = time.perf_counter()
    prompt = build_prompt(model, prompt_text, voice=VOICE, language=LANGUAGE)
    hidden = model.talker(prompt.embeds.astype(model.talker.norm.weight.dtype), model.talker.make_cache())
    mx.eval(model.talker.codec_head(hidden[:, -1]))
    return time.perf_counter() - t0


def time_steps(model, prompt_text, steps, seed) -> list:
    """The public frame step alone (one row), synced after every call: its compute time without
    the loop's overlap of host and device work. The row is prefilled with the prompt's first
    position only (an 8-bit CPU prefill of a long prompt takes tens of seconds; a few dozen cached
    positions change nothing measurable)."""
    batch = one_row_batch(model, prompt_text, seed, prefill_positions=1)
    state, plan = batch.state, plans(batch)
    mx.eval(state)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        frames, state = model.frame_step(batch.consts, state, plan)
        mx.eval(frames, state)
        out.append(time.perf_counter() - t0)
    return out


class Session:
    """Commands from bench/run.py: build, then rep (repeatedly), then finish; or a one-off
    stream / bandwidth."""

    def build(self, shape, precision, threads, text, seed):
        self.threads, self.text = threads, TEXTS[text]
        t0 = time.perf_counter()
        self.model = build(shape, precision)
        build_s = time.perf_counter() - t0
        weights_gb = mx.get_active_memory() / 1e9
        time_steps(self.model, self.text, 2, seed)  # warm-up: compiles the step (g++ JIT on CPU)
        mx.reset_peak_memory()
        return dict(build_s=build_s, weights_gb=weights_gb,
                    prompt_tokens=len(self.model.tokenizer.encode(self.text)))

    def rep(self, frames, seed):
        return run_loop(self.model, self.text, frames, seed)

    def batch(self, batch_size, frames, seed):
        """`batch_size` rows (distinct seeds) in one running batch, stepped with the public
        `Batch.step` for `frames` frames; steady-state seconds per batched frame (the first two
        steps, which may trace the step for this batch size, are excluded) and MLX peak memory."""
        batch = Batch(self.model)
        settings = GenerationSettings.from_config(self.model.config.generation, ignore_eos=True,
                                                  max_frames=frames + 2)
        prompt = build_prompt(self.model, self.text, voice=VOICE, language=LANGUAGE)
        for i in range(batch_size):
            batch.add(Row(prompt, dataclasses.replace(settings, seed=seed * 1000 + i)))
        mx.reset_peak_memory()
        batch.step(), batch.step()
        stamps, syncs = [], batch.host_syncs
        while batch.rows and not batch.rows[0].done:
            if batch.step():
                stamps.append(time.perf_counter())
        return dict(frame_s=per_frame(stamps), frames=len(stamps), peak_mlx_gb=mx.get_peak_memory() / 1e9,
                    syncs_per_frame=(batch.host_syncs - syncs) / len(stamps), traces=self.model.frame_step.traces)

    def prefill(self, texts, reps):
        """Prefill seconds for each text."""
        return {t: [time_prefill(self.model, TEXTS[t]) for _ in range(reps)] for t in texts}

    def profile(self, frames, seed):
        """Host time per phase of the loop body (bench/profile_frame.py) and the frame step's primitives and
        Metal-kernel estimate (bench/frame_kernels.py)."""
        return dict(host=host_split(self.model, self.text, frames, seed),
                    graphs=graph_sizes(self.model, self.text, seed))

    def finish(self, stage_steps, seed):
        return dict(step_s=time_steps(self.model, self.text, stage_steps, seed), peak_mlx_gb=mx.get_peak_memory() / 1e9,
                    peak_rss_gb=peak_rss_gb(), frame_bytes=frame_weight_bytes(self.model), env=env_info(self.threads))

    def stream(self, shape, precision, threads, text, reps, max_frames):
        """Time from calling `stream()` to its first audio chunk (default first chunk size), and the
        frames generated before it."""
        model = build(shape, precision, codec=True)
        runs = []
        for rep in range(reps + 1):  # the first run compiles
            stats = SynthesisStats()
            t0 = time.perf_counter()
            chunks = stream(model, TEXTS[text], voice=VOICE, language=LANGUAGE, seed=rep, max_frames=max_frames,
                            stats=stats)
            next(chunks)
            runs.append(dict(first_audio_s=time.perf_counter() - t0, frames=stats.frames_before_first_audio))
            chunks.close()
        return dict(runs=runs[1:], prefill_s=[time_prefill(model, TEXTS[text]) for _ in range(reps)],
                    env=env_info(threads))

    def long_text(self, shape, precision, threads, text, max_frames, max_batch):
        """`synthesize` of a long text: its sentence segments as rows of one batch (max_batch) vs
        one segment after another (max_batch=1), codec decode included; seconds and segments."""
        model = build(shape, precision, codec=True)
        synthesize(model, "Warm up.", voice=VOICE, seed=0, max_frames=2, ignore_eos=True)
        out = {}
        for label, batch in (("batched", max_batch), ("sequential", 1)):
            t0 = time.perf_counter()
            result = synthesize(model, text, voice=VOICE, language=LANGUAGE, seed=1, max_frames=max_frames,
                                ignore_eos=True, max_batch=batch)
            out[label] = dict(seconds=time.perf_counter() - t0, segments=result.stats.segments,
                              frames=result.stats.frames, audio_s=result.stats.audio_s)
        return dict(**out, env=env_info(threads))

    def arrivals(self, shape, precision, threads, concurrency, requests, max_frames, seed):
        """Continuous batching: `requests` streaming requests arriving at Poisson times sized for
        about `concurrency` in flight, into one Engine(max_batch=8); per request the time to
        first audio (from its arrival) and overall audio seconds per wall second."""
        import random
        import threading

        from mlx_qwen_tts import Engine

        model = build(shape, precision, codec=True)
        synthesize(model, "Warm up.", voice=VOICE, seed=0, max_frames=max_frames, ignore_eos=True)
        t0 = time.perf_counter()
        synthesize(model, TEXTS["short"], voice=VOICE, seed=0, max_frames=max_frames, ignore_eos=True)
        service_s = time.perf_counter() - t0  # one request alone
        rng = random.Random(seed)
        gaps = [rng.expovariate(concurrency / service_s) for _ in range(requests)]
        results = [None] * requests
        engine = Engine(model, max_batch=8)
        engine.warm_up()

        def client(i, at):
            time.sleep(max(0.0, at - (time.perf_counter() - start)))
            arrived = time.perf_counter()
            synthesis = engine.submit(TEXTS["short"], voice=VOICE, language=LANGUAGE, seed=i, max_frames=max_frames,
                                      ignore_eos=True)
            first, audio = None, 0
            for chunk in synthesis:
                first = first or time.perf_counter() - arrived
                audio += len(chunk)
            results[i] = dict(first_audio_s=first, audio_s=audio / model.sample_rate,
                              elapsed_s=time.perf_counter() - arrived)

        start, at, threads_ = time.perf_counter(), 0.0, []
        for i, gap in enumerate(gaps):
            at += gap
            threads_.append(threading.Thread(target=client, args=(i, at)))
            threads_[-1].start()
        for t in threads_:
            t.join()
        wall = time.perf_counter() - start
        engine.close()
        return dict(service_s=service_s, wall_s=wall, requests=results, env=env_info(threads))

    def bandwidth(self, threads):
        return dict(**measure_bandwidth(), env=env_info(threads))

    def checkpoint(self, shape, out):
        """A random-weight bfloat16 model folder of `shape` in the official layout, for the mlx-audio side."""
        write_official_checkpoint(shape, Path(out))
        return dict(path=out)


def write_official_checkpoint(shape: str, out: Path):
    """config.json and model.safetensors of `shape` (random bfloat16 weights under the official names); the
    fixture's tokenizer, generation config and speech tokenizer beside them (a released-shape codec is not
    needed: the mlx-audio side stubs its decode)."""
    config = parse_model_config(*config_dicts(shape))
    official = {ours: theirs for theirs, ours in HF_PREFIXES}
    weights = {}
    for prefix, module in (("talker.", Talker(config)), ("code_predictor.", CodePredictor(config))):
        randomize(module, prefix, mx.bfloat16, None)
        for name, value in tree_flatten(module.parameters()):
            ours = max((p for p in official if f"{prefix}{name}".startswith(p)), key=len)
            weights[official[ours] + f"{prefix}{name}"[len(ours):]] = value
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(FIXTURE, out)
    (out / "config.json").write_text(json.dumps(config_dicts(shape)[0], indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), weights)


def env_info(threads) -> dict:
    if mx.metal.is_available():
        device, blas = "metal", "Metal (MLX kernels)"
    elif mx.cuda.is_available():
        device, blas = "cuda", "cuBLAS"
    else:
        device = "cpu"
        preload = os.environ.get("LD_PRELOAD", "")
        blas = ("Accelerate" if platform.system() == "Darwin" else
                f"OpenBLAS ({os.path.basename(preload)}, preloaded)" if "openblas" in preload else
                "the wheel's bundled reference BLAS (slow: see bench/README.md)")
    return dict(impl="mlx-qwen-tts", mlx=mx.__version__, device=device, blas=blas, threads=threads,
                default_dtype=str(default_dtype()), **host_info())


if __name__ == "__main__":
    serve(Session())
