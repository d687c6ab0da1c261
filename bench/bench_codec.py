"""Time the speech-tokenizer decoder (codes -> 24 kHz audio) at the released model's shape.

Random weights are built directly in MLX (no checkpoint needed): codebook_dim 512, latent 1024,
decoder_dim 1536, hidden 512, intermediate 1024, 8 layers, 16 heads x 64, window 72, rates
[8, 5, 4, 3] + [2, 2]. Measures
  - one-shot decode of N frames, as seconds of audio per second;
  - latency of a first chunk of 1, 2 and 4 frames from a fresh state, next to the same chunk
    decoded deep inside a stream;
  - streaming N frames in chunks of 1, 2 and 4, total time relative to one-shot;
  - if .venv-ref exists, the official PyTorch decoder on the same shape, for a side-by-side ratio.
Prints one JSON line per measurement, then a table.

    python bench/bench_codec.py [--quick] [--frames 100] [--repeats 3] [--no-reference]
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_qwen_tts.models.codec import CodecDecoder
from mlx_qwen_tts.config import CodecDecoderConfig

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"
REAL = dict(codebook_size=2048, codebook_dim=512, latent_dim=1024, decoder_dim=1536, hidden_size=512,
            intermediate_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
            head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=72, num_quantizers=16,
            upsample_rates=[8, 5, 4, 3], upsampling_ratios=[2, 2])
SAMPLE_RATE = 24000
FIRST_CHUNKS = (1, 2, 4)
STREAM_CHUNKS = (1, 2, 4)


def build_decoder() -> CodecDecoder:
    """Fan-in scaled noise keeps activations in range (zeros would also risk slow denormals)."""
    config = CodecDecoderConfig(**{**REAL, "upsample_rates": tuple(REAL["upsample_rates"]),
                                   "upsampling_ratios": tuple(REAL["upsampling_ratios"])})
    decoder = CodecDecoder(config)
    mx.random.seed(0)

    def fill(name, p):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "codebook":
            return mx.random.normal(p.shape)
        if leaf in ("alpha", "beta"):
            return 0.3 * mx.random.normal(p.shape)
        if p.ndim == 1:
            if "norm" in name:
                return mx.ones(p.shape) if leaf == "weight" else mx.zeros(p.shape)
            return 0.5 * mx.ones(p.shape) if leaf.endswith(("scale", "gamma")) else 0.05 * mx.random.normal(p.shape)
        return mx.random.normal(p.shape) * (0.65 / math.sqrt(math.prod(p.shape[1:])))

    decoder.update(tree_unflatten([(k, fill(k, v)) for k, v in tree_flatten(decoder.parameters())]))
    mx.eval(decoder.parameters())
    return decoder


def environment() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", cpus))
    return dict(device=str(mx.default_device()), mlx=mx.__version__, threads=threads,
                openblas_preloaded="openblas" in os.environ.get("LD_PRELOAD", ""),
                machine=platform.machine(), system=platform.system())


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_shot(decoder, codes):
    wav, _ = decoder(codes)
    mx.eval(wav)
    return wav


def stream(decoder, codes, chunk):
    state = decoder.make_state(codes.shape[0])
    for start in range(0, codes.shape[1], chunk):
        wav, state = decoder(codes[:, start : start + chunk], state)
        mx.eval(wav, state)
    return state


def measure_mlx(frames: int, repeats: int, env: dict) -> list[dict]:
    decoder = build_decoder()
    codes = mx.array(np.random.default_rng(0).integers(0, 2048, (1, frames, 16)))
    stream(decoder, codes[:, :8], 4)  # warm up: kernel JIT, allocator
    records = []
    mx.reset_peak_memory()
    seconds = timed(lambda: one_shot(decoder, codes), repeats)
    rms = float(mx.sqrt(mx.mean(mx.square(one_shot(decoder, codes)))))
    audio_s = frames * decoder.samples_per_frame / SAMPLE_RATE
    records.append(dict(metric="one_shot", frames=frames, seconds=round(seconds, 3), audio_s=audio_s,
                        audio_s_per_s=round(audio_s / seconds, 3),
                        peak_memory_gb=round(mx.get_peak_memory() / 2**30, 2), output_rms=round(rms, 3)))
    start = frames - max(FIRST_CHUNKS)
    deep = stream(decoder, codes[:, :start], 25)
    for n in FIRST_CHUNKS:
        first = timed(lambda: one_shot(decoder, codes[:, :n]), repeats)
        tail = codes[:, start : start + n]
        inside = timed(lambda: mx.eval(decoder(tail, deep)[0]), repeats)
        records.append(dict(metric="first_chunk", frames=n, ms=round(first * 1e3, 1),
                            in_stream_ms=round(inside * 1e3, 1), ratio=round(first / inside, 2)))
    for n in STREAM_CHUNKS:
        total = timed(lambda: stream(decoder, codes, n), max(1, repeats - 1))
        records.append(dict(metric="stream", frames=frames, chunk_frames=n, seconds=round(total, 3),
                            vs_one_shot=round(total / seconds, 2)))
    return [dict(bench="codec", impl="mlx", **r, **env) for r in records]


REFERENCE_SCRIPT = r"""
import json, sys, time, statistics, torch
sys.path.insert(0, sys.argv[1])
import tiny_models  # stubs torchaudio before qwen_tts is imported
from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2DecoderConfig
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder
config, frames, repeats, threads = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
decoder = Qwen3TTSTokenizerV2Decoder(Qwen3TTSTokenizerV2DecoderConfig(**config)).eval()
tiny_models.randomize_(decoder, 1, gain=0.65)
codes = torch.randint(0, 2048, (1, 16, frames), generator=torch.Generator().manual_seed(0))
def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out)
with torch.no_grad():
    decoder(codes[..., :4])
    result = dict(one_shot_s=timed(lambda: decoder(codes), repeats),
                  first_chunk_ms={n: 1e3 * timed(lambda: decoder(codes[..., :n]), repeats) for n in (1, 2, 4)})
print(json.dumps(result))
"""


def measure_reference(frames: int, repeats: int, env: dict, mlx_seconds: float) -> list[dict]:
    if not REF_PYTHON.exists():
        print(f"note: {REF_PYTHON} is missing; skipping the official PyTorch timing (bash tests/run.sh creates it)")
        return []
    proc = subprocess.run([str(REF_PYTHON), "-c", REFERENCE_SCRIPT, str(ROOT / "tests" / "reference"),
                           json.dumps(REAL), str(frames), str(repeats), str(env["threads"])],
                          capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": ""})
    if proc.returncode != 0:
        print(f"note: the official decoder timing failed; skipping it:\n{proc.stderr[-2000:]}")
        return []
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    audio_s = frames * 1920 / SAMPLE_RATE
    common = dict(bench="codec", impl="official-pytorch", **env)
    records = [dict(metric="one_shot", frames=frames, seconds=round(ref["one_shot_s"], 3), audio_s=audio_s,
                    audio_s_per_s=round(audio_s / ref["one_shot_s"], 3),
                    mlx_speedup=round(ref["one_shot_s"] / mlx_seconds, 2), **common)]
    records += [dict(metric="first_chunk", frames=int(n), ms=round(ms, 1), **common)
                for n, ms in ref["first_chunk_ms"].items()]
    return records


def print_table(records):
    def find(impl, metric, **match):
        return next((r for r in records if r["impl"] == impl and r["metric"] == metric
                     and all(r.get(k) == v for k, v in match.items())), None)

    shot, ref_shot = find("mlx", "one_shot"), find("official-pytorch", "one_shot")
    rows = [(f"one-shot {shot['frames']} frames (audio s per s)", shot["audio_s_per_s"],
             ref_shot and ref_shot["audio_s_per_s"])]
    for n in FIRST_CHUNKS:
        ours, ref = find("mlx", "first_chunk", frames=n), find("official-pytorch", "first_chunk", frames=n)
        rows += [(f"first chunk of {n} frame(s), fresh state (ms)", ours["ms"], ref and ref["ms"]),
                 ("  same chunk inside a stream (ms)", ours["in_stream_ms"], None)]
    for n in STREAM_CHUNKS:
        rows.append((f"stream in chunks of {n} (x one-shot time)", find("mlx", "stream", chunk_frames=n)["vs_one_shot"],
                     None))
    print(f"\n{'':<46}{'MLX':>10}{'official':>10}")
    for label, ours, ref in rows:
        print(f"{label:<46}{ours:>10.2f}{'' if ref is None else f'{ref:.2f}':>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="frames to decode (default 100, --quick 25)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    parser.add_argument("--no-reference", action="store_true", help="skip the official PyTorch timing")
    args = parser.parse_args()
    frames = args.frames or (25 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    env = environment()
    records = measure_mlx(frames, repeats, env)
    if not args.no_reference:
        records += measure_reference(frames, repeats, env, records[0]["seconds"])
    for r in records:
        print(json.dumps(r))
    print_table(records)


if __name__ == "__main__":
    main()
