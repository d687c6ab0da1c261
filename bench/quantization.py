"""Which tensors to quantize: the quality gate for each candidate set, at 8 and 4 bits.

    python bench/quantization.py [MODEL_FOLDER ...]   (default: the tiny test fixtures)

Prints one JSON line per (model, bits, set). The README's "Quantization" table comes from it.
"""

import json
import sys
from pathlib import Path

import mlx.core as mx

from mlx_qwen_tts.config import load_model_config
from mlx_qwen_tts.loading import (build_model, load_model, map_hf_codec_weights, map_hf_model_weights,
                                  read_safetensors)
from mlx_qwen_tts.quality import quality_gate
from mlx_qwen_tts.quantize import quantize_tensor

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("talker.layers.", "talker.text_projection.", "code_predictor.layers.",
          "code_predictor.small_to_mtp_projection.")
HEADS = ("talker.codec_head.", "code_predictor.lm_head.")
SETS = {"layers": LAYERS, "+heads": LAYERS + HEADS,
        "+heads+text_embedding": LAYERS + HEADS + ("talker.text_embedding.",),
        "+every_embedding": LAYERS + HEADS + ("talker.text_embedding.", "talker.codec_embedding.",
                                              "code_predictor.codec_embedding.")}


def quantized_model(folder, weights, prefixes, bits, group_size):
    out = {}
    for name, w in weights.items():
        if name.startswith(prefixes) and name.endswith(".weight") and w.ndim == 2 and w.shape[-1] % group_size == 0:
            out.update(quantize_tensor(name, w, bits, group_size))
        else:
            out[name] = w
    quantization = {"group_size": group_size, "bits": bits, "mode": "affine"}
    return build_model(load_model_config(folder), out, folder, quantization=quantization, dtype=mx.float32)


def main(folders):
    for folder in folders:
        weights = map_hf_model_weights(read_safetensors(folder / "model.safetensors"))
        weights.update(map_hf_codec_weights(read_safetensors(folder / "speech_tokenizer" / "model.safetensors")))
        reference = load_model(folder, dtype=mx.float32)
        for bits in (8, 4):
            for name, prefixes in SETS.items():
                report = quality_gate(reference, quantized_model(folder, weights, prefixes, bits, 32), frames=30)
                print(json.dumps({"model": folder.name, "bits": bits, "group_size": 32, "set": name,
                                  **report.to_dict()}), flush=True)


if __name__ == "__main__":
    args = [Path(p) for p in sys.argv[1:]] or [ROOT / "tests/.fixtures/models/customvoice_1b7",
                                                ROOT / "tests/.fixtures/models/customvoice_0b6"]
    main(args)
