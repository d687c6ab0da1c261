"""Our side: builds the MLX model for a shape and precision and times the one generation loop.

    python bench/ours.py   (a worker started by bench/run.py: JSON commands on stdin, see common.serve)

Measures the loop's per-frame time, host syncs and Python (host) time per frame, prefill, a
stage split, memory and the weight bytes read per frame; the time to
first audio of `stream()`; a profile of one frame (bench/profile_frame.py); and the memory
bandwidth (bench/roofline.py).
"""

import math
import os
import platform
import time

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from common import LANGUAGE, TEXTS, VOICE, host_info, peak_rss_gb, per_frame, serve
from profile_frame import LoopStart, graph_sizes, host_split
from roofline import measure_bandwidth
from shapes import FIXTURE, config_dicts
from mlx_qwen_tts.api import SynthesisStats, stream
from mlx_qwen_tts.models.code_predictor import CodePredictor
from mlx_qwen_tts.config import parse_model_config
from mlx_qwen_tts.engine.generate import GenerationSettings, GenerationStats, generate_frames
from mlx_qwen_tts.loading import Model, default_dtype, load_model
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
    _, logits = model.talker(prompt.embeds.astype(model.talker.norm.weight.dtype), model.talker.make_cache())
    mx.eval(logits)
    return time.perf_counter() - t0


def time_stages(model, prompt_text, steps, seed) -> tuple[list, list]:
    """The loop's two stages with a sync after each: the compiled code-predictor frame (15 group
    steps and sampling) and the talker step with code-0 sampling. Same graphs as the loop. The
    cache is prefilled with the prompt's first position only: a few dozen cached positions more
    change nothing measurable, and an 8-bit prefill on the CPU takes tens of seconds."""
    cfg, talker = model.config, model.talker
    s = LoopStart(model, prompt_text, seed, prefill_positions=1)
    dtype, pick, finish, bias, prompt, cache = s.dtype, s.pick, s.finish, s.bias, s.prompt, s.cache
    hidden, key, code0, seen = s.hidden, s.key, s.code0, s.seen
    mx.eval(code0, hidden)
    talker_s, predictor_s = [], []
    for _ in range(steps):
        key, k_code0, k_frame = mx.random.split(key, 3)
        t0 = time.perf_counter()
        code0_vec = talker.codec_embedding(code0)[:, None]
        _, rest_sum, _ = finish(hidden, code0_vec, mx.random.split(k_frame, cfg.num_code_groups - 1))
        mx.eval(rest_sum)
        t1 = time.perf_counter()
        hidden, logits = talker(code0_vec + rest_sum + prompt.tts_pad.astype(dtype), cache)
        code0, seen = pick(logits, seen, bias, k_code0)
        mx.eval(code0, hidden, seen)
        predictor_s.append(t1 - t0)
        talker_s.append(time.perf_counter() - t1)
    return talker_s, predictor_s


class Session:
    """Commands from bench/run.py: build, then rep (repeatedly), then finish; or a one-off
    stream / bandwidth."""

    def build(self, shape, precision, threads, text, seed):
        self.threads, self.text = threads, TEXTS[text]
        t0 = time.perf_counter()
        self.model = build(shape, precision)
        build_s = time.perf_counter() - t0
        weights_gb = mx.get_active_memory() / 1e9
        time_stages(self.model, self.text, 2, seed)  # warm-up: compiles the loop's graphs (g++ JIT on CPU)
        mx.reset_peak_memory()
        return dict(build_s=build_s, weights_gb=weights_gb,
                    prompt_tokens=len(self.model.tokenizer.encode(self.text)))

    def rep(self, frames, seed):
        return run_loop(self.model, self.text, frames, seed)

    def prefill(self, texts, reps):
        """Prefill seconds for each text."""
        return {t: [time_prefill(self.model, TEXTS[t]) for _ in range(reps)] for t in texts}

    def profile(self, frames, seed):
        """Host time per phase of the loop body and primitives per stage (bench/profile_frame.py)."""
        return dict(host=host_split(self.model, self.text, frames, seed),
                    graphs=graph_sizes(self.model, self.text, seed))

    def finish(self, stage_steps, seed):
        talker_s, predictor_s = time_stages(self.model, self.text, stage_steps, seed)
        return dict(talker_s=talker_s, predictor_s=predictor_s, peak_mlx_gb=mx.get_peak_memory() / 1e9,
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

    def bandwidth(self, threads):
        return dict(**measure_bandwidth(), env=env_info(threads))


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
