"""Typed reads of one JSON object of a model's configuration; every error names the file and key."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A model folder's configuration is missing, unreadable or inconsistent."""


POSITIVE, SIZES = "positive integer", "list of positive integers"  # _Reader kinds beyond Python types


class _Reader:
    """Reads keys from one JSON object and names the file and path in every error."""

    def __init__(self, data: dict, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        self.data, self.where = data, where

    def req(self, key: str, kind=None):
        if key not in self.data or self.data[key] is None:
            raise ConfigError(f"{self.where}: required field '{key}' is missing")
        return self._check(key, self.data[key], kind)

    def opt(self, key: str, default, kind=None):
        value = self.data.get(key)
        return default if value is None else self._check(key, value, kind)

    def sub(self, key: str, required=True) -> "_Reader | None":
        if self.data.get(key) is None:
            if required:
                raise ConfigError(f"{self.where}: required section '{key}' is missing")
            return None
        return _Reader(self.data[key], f"{self.where}:{key}")

    def _check(self, key, value, kind):
        if kind in (int, POSITIVE) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{self.where}: field '{key}' must be an integer, got {value!r:.60}")
        if kind is POSITIVE:
            if not 0 < value < 2 ** 31:
                raise ConfigError(f"{self.where}: field '{key}' must be a positive integer below 2^31, got {value}")
            return value
        if kind is SIZES:
            if not (isinstance(value, list) and value and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31 for v in value)):
                raise ConfigError(f"{self.where}: field '{key}' must be a list of positive integers, "
                                  f"got {value!r:.60}")
            return tuple(value)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{self.where}: field '{key}' must be true or false, got {value!r:.60}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{self.where}: field '{key}' must be a string, got {value!r:.60}")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{self.where}: field '{key}' must be a number, got {value!r}")
            try:
                number = float(value)
            except OverflowError:
                number = float("inf")
            if not math.isfinite(number):
                raise ConfigError(f"{self.where}: field '{key}' must be a finite number, got {value!r:.60}")
            return number
        if kind is list and not isinstance(value, list):
            raise ConfigError(f"{self.where}: field '{key}' must be a list, got {value!r}")
        if kind is dict and not isinstance(value, dict):
            raise ConfigError(f"{self.where}: field '{key}' must be an object, got {value!r}")
        return value


# Sizes far above the largest released model (1.7B: a 28-layer talker, hidden 2048) and far below what
# would take minutes to build or exhaust memory: a config beyond them is refused before construction.
SIZE_LIMITS = {"num_hidden_layers": 512, "hidden_size": 65536, "intermediate_size": 262144,
               "num_attention_heads": 1024, "num_key_value_heads": 1024, "head_dim": 4096, "vocab_size": 1 << 22,
               "text_vocab_size": 1 << 22, "text_hidden_size": 65536, "codebook_size": 1 << 20,
               "codebook_dim": 65536, "latent_dim": 65536, "decoder_dim": 65536, "num_quantizers": 1024,
               "sliding_window": 1 << 20, "num_filters": 65536, "num_residual_layers": 512, "mel_dim": 4096,
               "enc_dim": 65536, "enc_attention_channels": 65536, "enc_se_channels": 65536,
               "enc_res2net_scale": 1024, "upsample_rates": 64, "upsampling_ratios": 64, "enc_channels": 65536,
               "enc_kernel_sizes": 1024, "enc_dilations": 1024, "kernel_size": 1024, "residual_kernel_size": 1024,
               "last_kernel_size": 1024, "vector_quantization_hidden_dimension": 65536}
MAX_LIST = 64  # entries of a list of sizes (each entry builds a block)


def check_sizes(r: _Reader) -> None:
    """Every size this section gives within SIZE_LIMITS (lists: each entry), named by file and key."""
    for key, limit in SIZE_LIMITS.items():
        value = r.data.get(key)
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_LIST:
            raise ConfigError(f"{r.where}: field '{key}' lists {len(values)} sizes, beyond {MAX_LIST}: refusing to "
                              "build such a model")
        if any(isinstance(v, int) and not isinstance(v, bool) and v > limit for v in values):
            raise ConfigError(f"{r.where}: field '{key}' is {value!r:.60}, beyond {limit} (no Qwen3-TTS model comes "
                              "near): refusing to build such a model")
