"""Time the voice-clone encoders on a reference recording, at the released model's shapes.

Random weights are built directly in MLX (no checkpoint needed): the speaker encoder of the 0.6B Base
model (channels [512, 512, 512, 512, 1536], enc_dim 1024) and the Mimi speech-tokenizer encoder
(64 filters, hidden 512, 8 layers, 8 heads x 64, 32 quantizers of 2048 x 256, 16 kept).
Prints one JSON line.

    python bench/bench_encoders.py [--seconds 10] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
import time

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.models.codec_encoder import CodecEncoder, MimiEncoderArgs
from mlx_qwen_tts.config import SpeakerEncoderConfig
from mlx_qwen_tts.models.speaker_encoder import SpeakerEncoder, log_mel_spectrogram

SPEAKER = SpeakerEncoderConfig(mel_dim=128, enc_dim=1024, channels=(512, 512, 512, 512, 1536),
                               kernel_sizes=(5, 3, 3, 3, 1), dilations=(1, 2, 3, 4, 1), attention_channels=128,
                               res2net_scale=8, se_channels=128, sample_rate=24000)
MIMI = MimiEncoderArgs.from_config(dict(
    num_filters=64, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
    head_dim=64, intermediate_size=2048, num_quantizers=32, codebook_size=2048, codebook_dim=256,
    vector_quantization_hidden_dimension=256, upsampling_ratios=[8, 6, 5, 4], _frame_rate=12.5), 16)


def build_codec_encoder() -> CodecEncoder:
    model = CodecEncoder(MIMI)
    quantizer = model.quantizer
    for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
        rvq.codebooks = [mx.random.normal(c.shape) for c in rvq.codebooks]  # zeros would make every code a tie
    mx.eval(model.parameters())
    return model


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    mx.random.seed(0)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(args.seconds * 24000))).astype(np.float32)
    speaker, codec = SpeakerEncoder(SPEAKER), build_codec_encoder()
    mx.eval(speaker.parameters())

    def run_speaker():
        return speaker(mx.array(log_mel_spectrogram(wave))[None])

    def run_codec():
        return codec(mx.array(wave)[None])

    start = time.perf_counter()
    mx.eval(run_speaker(), run_codec())
    first = time.perf_counter() - start
    mel_s = timed(lambda: mx.array(log_mel_spectrogram(wave)), args.repeats)
    speaker_s = timed(run_speaker, args.repeats)
    codec_s = timed(run_codec, args.repeats)
    print(json.dumps(dict(
        bench="encoders", audio_s=args.seconds, mel_ms=round(mel_s * 1e3, 1),
        speaker_encoder_ms=round(speaker_s * 1e3, 1), codec_encoder_ms=round(codec_s * 1e3, 1),
        total_ms=round((speaker_s + codec_s) * 1e3, 1), first_call_ms=round(first * 1e3, 1),
        codes_shape=list(run_codec().shape), device=str(mx.default_device()), mlx=mx.__version__,
        machine=platform.machine(), system=platform.system(), cpus=os.cpu_count(),
        openblas_preloaded="openblas" in os.environ.get("LD_PRELOAD", ""), repeats=args.repeats)))


if __name__ == "__main__":
    main()
