"""Speaker encoder of the Base models: log-mel front end and ECAPA-TDNN (architecture §5.5).

The x-vector it produces takes the speaker slot of the talker prompt. Features are
channels-last, [B, T, C]; the mel front end runs once per reference in numpy.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_qwen_tts.config import SpeakerEncoderConfig
from mlx_qwen_tts.loading import load_strict

# The official front end is fixed to these values, whatever the config says.
SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
N_MELS = 128
F_MAX = 12000.0


def _hz_to_mel(hz):
    # Slaney scale: linear below 1 kHz, logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, mel)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, hz)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = 0.0, fmax: float = F_MAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, [n_mels, n_fft // 2 + 1] (librosa's default)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


def log_mel_spectrogram(wave: np.ndarray) -> np.ndarray:
    """Log-mel features of a 24 kHz mono waveform, [frames, 128], as the official front end computes them."""
    wave = np.asarray(wave, dtype=np.float32)
    pad = (N_FFT - HOP) // 2
    if wave.ndim != 1 or wave.shape[0] <= max(pad, N_FFT - 2 * pad):
        raise ValueError(f"expected a 1-D waveform longer than {N_FFT - 2 * pad} samples, got shape {wave.shape}")
    padded = np.pad(wave.astype(np.float64), pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=-1)
    magnitude = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = magnitude @ mel_filterbank().astype(np.float64).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


def _reflect_pad(x: mx.array, left: int, right: int) -> mx.array:
    """Reflect-pad the time axis of [B, T, C] (edge sample not repeated), like torch's 'reflect'."""
    if not left and not right:
        return x
    parts = [x[:, left:0:-1]] if left else []
    parts.append(x)
    if right:
        parts.append(x[:, -2:-right - 2:-1])
    return mx.concatenate(parts, axis=1)


class ReflectConv1d(nn.Module):
    """Conv1d with padding='same', padding_mode='reflect'. Weight [out, k, in]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        scale = (in_channels * kernel_size) ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels))
        self.bias = mx.zeros((out_channels,))
        self.dilation = dilation

    def __call__(self, x: mx.array) -> mx.array:
        k, d = self.weight.shape[1], self.dilation
        total = d * (k - 1)
        x = _reflect_pad(x, total // 2, total - total // 2)
        if d == 1:
            return mx.conv1d(x, self.weight) + self.bias
        # MLX's CPU conv1d is ~40x slower with dilation; one matmul over gathered taps is not.
        steps = x.shape[1] - total
        taps = mx.concatenate([x[:, j * d:j * d + steps] for j in range(k)], axis=-1)
        return taps @ self.weight.reshape(self.weight.shape[0], -1).T + self.bias


class TDNNBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = ReflectConv1d(in_channels, out_channels, kernel_size, dilation)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.conv(x))


class Res2NetBlock(nn.Module):
    """Channel groups processed hierarchically: group i sees group i plus the output of group i-1."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.blocks = [TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1)]

    def __call__(self, x: mx.array) -> mx.array:
        parts = mx.split(x, len(self.blocks) + 1, axis=-1)
        outputs = [parts[0]]
        for i, block in enumerate(self.blocks, start=1):
            outputs.append(block(parts[i] if i == 1 else parts[i] + outputs[-1]))
        return mx.concatenate(outputs, axis=-1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = ReflectConv1d(channels, se_channels)
        self.conv2 = ReflectConv1d(se_channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        gate = nn.relu(self.conv1(x.mean(axis=1, keepdims=True)))
        return x * mx.sigmoid(self.conv2(gate))


class SERes2NetBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, scale: int, se_channels: int, kernel_size: int,
                 dilation: int):
        super().__init__()
        self.tdnn1 = TDNNBlock(in_channels, channels, 1, 1)
        self.res2net_block = Res2NetBlock(channels, scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1, 1)
        self.se_block = SqueezeExcitation(channels, se_channels)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _weighted_stats(x: mx.array, weights: mx.array) -> tuple[mx.array, mx.array]:
    """Mean and std over time of [B, T, C] under per-frame weights that sum to 1."""
    mean = (weights * x).sum(axis=1, keepdims=True)
    var = (weights * (x - mean) ** 2).sum(axis=1, keepdims=True)
    return mean, mx.sqrt(mx.maximum(var, 1e-12))


class AttentiveStatsPooling(nn.Module):
    """Per-channel attention over time, conditioned on the utterance's global mean and std."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNNBlock(channels * 3, attention_channels, 1, 1)
        self.conv = ReflectConv1d(attention_channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        steps = x.shape[1]
        mean, std = _weighted_stats(x, mx.full((1, steps, 1), 1.0 / steps, dtype=x.dtype))
        context = mx.concatenate([x, mx.broadcast_to(mean, x.shape), mx.broadcast_to(std, x.shape)], axis=-1)
        attention = mx.softmax(self.conv(mx.tanh(self.tdnn(context))), axis=1)
        mean, std = _weighted_stats(x, attention)
        return mx.concatenate([mean, std], axis=-1)  # [B, 1, 2C]


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN without batch norm: log-mel [B, T, mel_dim] -> x-vector [B, enc_dim]."""

    def __init__(self, cfg: SpeakerEncoderConfig):
        super().__init__()
        ch, ks, dil = cfg.channels, cfg.kernel_sizes, cfg.dilations
        self.blocks = [TDNNBlock(cfg.mel_dim, ch[0], ks[0], dil[0])] + [
            SERes2NetBlock(ch[i - 1], ch[i], cfg.res2net_scale, cfg.se_channels, ks[i], dil[i])
            for i in range(1, len(ch) - 1)]
        self.mfa = TDNNBlock(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatsPooling(ch[-1], cfg.attention_channels)
        self.fc = ReflectConv1d(ch[-1] * 2, cfg.enc_dim)

    def __call__(self, mels: mx.array) -> mx.array:
        x = self.blocks[0](mels)
        features = []
        for block in self.blocks[1:]:
            x = block(x)
            features.append(x)
        x = self.mfa(mx.concatenate(features, axis=-1))  # multi-layer feature aggregation
        return self.fc(self.asp(x))[:, 0]


# Every official speaker-encoder parameter is a Conv1d weight [out, in, k] or its bias.
_KEY_PATTERNS = [re.compile(p) for p in (
    r"blocks\.0\.conv\.(weight|bias)",
    r"blocks\.\d+\.(tdnn1|tdnn2)\.conv\.(weight|bias)",
    r"blocks\.\d+\.res2net_block\.blocks\.\d+\.conv\.(weight|bias)",
    r"blocks\.\d+\.se_block\.conv[12]\.(weight|bias)",
    r"mfa\.conv\.(weight|bias)",
    r"asp\.tdnn\.conv\.(weight|bias)",
    r"asp\.conv\.(weight|bias)",
    r"fc\.(weight|bias)",
)]


def convert_speaker_encoder_weights(weights: dict) -> dict:
    """Official `speaker_encoder.*` tensors (prefix stripped) -> SpeakerEncoder parameters."""
    out = {}
    for key, value in weights.items():
        if not any(p.fullmatch(key) for p in _KEY_PATTERNS):
            raise ValueError(f"unexpected speaker encoder weight '{key}'")
        if key.endswith("weight"):
            if value.ndim != 3:
                raise ValueError(f"speaker encoder weight '{key}' should be a Conv1d [out, in, k], "
                                 f"got shape {tuple(value.shape)}")
            value = mx.contiguous(value.transpose(0, 2, 1))  # [out, k, in], laid out once
        out[key] = value
    return out


def load_speaker_encoder(weights: dict, cfg: SpeakerEncoderConfig, dtype: mx.Dtype = mx.float32) -> SpeakerEncoder:
    """Build the encoder from the official `speaker_encoder.*` tensors (prefix stripped)."""
    return load_strict(SpeakerEncoder(cfg), convert_speaker_encoder_weights(weights), dtype,
                       "speaker encoder weights do not match its config")


def extract_xvector(encoder: SpeakerEncoder, wave: np.ndarray) -> mx.array:
    """The speaker x-vector [enc_dim] of a 24 kHz mono waveform."""
    dtype = encoder.fc.weight.dtype
    return encoder(mx.array(log_mel_spectrogram(wave))[None].astype(dtype))[0]
