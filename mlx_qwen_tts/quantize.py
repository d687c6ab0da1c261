"""Affine quantization of the talker and code predictor (mlx-lm's format).

A quantized weight `p.weight` is stored packed with `p.scales` and `p.biases`; the config
records the default bits / group size and any per-layer exceptions (GGUF imports keep their
source's group size 32). The codec and the speaker encoder are never quantized.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

# What gets quantized, decided by measurement (README "Quantization"): every Linear of the two
# transformers, the text projection and the output heads; of the embeddings only the large text
# table (a lookup: quantizing it only saves memory). Codec-code embeddings stay float.
QUANTIZED_PREFIXES = ("talker.layers.", "talker.text_projection.", "talker.codec_head.",
                      "talker.text_embedding.", "code_predictor.layers.", "code_predictor.lm_head.",
                      "code_predictor.small_to_mtp_projection.")


def quantizable(name: str, shape: tuple) -> bool:
    """By our key name and the weight's shape: the 2-D weights of the quantized modules."""
    return name.endswith(".weight") and name.startswith(QUANTIZED_PREFIXES) and len(shape) == 2


def should_quantize(name: str, shape: tuple, group_size: int) -> bool:
    """Quantizable, and its rows split into groups."""
    return quantizable(name, shape) and shape[-1] % group_size == 0


def quantize_tensor(name: str, w: mx.array, bits: int, group_size: int) -> dict[str, mx.array]:
    wq, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    base = name[: -len(".weight")]
    return {name: wq, f"{base}.scales": scales, f"{base}.biases": biases}


def apply_quantization(module: nn.Module, prefix: str, weights: dict, quantization: dict | None):
    """Swap in quantized layers wherever the weights hold `.scales` (as mlx-lm's loader does)."""
    if not quantization:
        return
    layers = quantization.get("layers", {})

    def predicate(path, m):
        full = f"{prefix}{path}"
        if f"{full}.scales" not in weights:
            return False
        spec = layers.get(full, quantization)
        return {"group_size": spec["group_size"], "bits": spec["bits"]}

    nn.quantize(module, class_predicate=predicate)
