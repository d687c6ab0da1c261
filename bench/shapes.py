"""The model shapes the benchmark runs, as config dicts in the official layout.

Pure Python: both our side and the official side (reference venv) read these, so the two build
the same architecture. "tiny" is the test fixture (its random weights are loaded from the
folder by both sides); "0.6b" and "1.7b" take the fixture's ids, speakers and languages
and the released models' widths and depths (qwen3-tts-architecture.md §2.1, §3), with random
weights. (The codec at its released shape comes from bench/bench_codec.py.)
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / ".fixtures" / "models" / "customvoice_0b6"
SHAPES = ("tiny", "0.6b", "1.7b")
# Talker + code-predictor parameters (architecture doc §2.3): sizes memory before building.
PARAMS = {"tiny": 9e6, "0.6b": 0.91e9, "1.7b": 1.92e9}

_TALKER = {"0.6b": dict(hidden_size=1024, intermediate_size=3072), "1.7b": dict(hidden_size=2048,
                                                                                  intermediate_size=6144)}
_COMMON_TALKER = dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      text_hidden_size=2048, rope_theta=1_000_000,
                      rope_scaling={"interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default",
                                    "type": "default"})
_PREDICTOR = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=2048, layer_types=["full_attention"] * 5)


def _read(name: str) -> dict:
    path = FIXTURE / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the test fixtures first (bash tests/run.sh)")
    return json.loads(path.read_text(encoding="utf-8"))


def config_dicts(shape: str) -> tuple[dict, dict, dict]:
    """(config.json, speech_tokenizer/config.json, generation_config.json) for a shape."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    cfg, st_cfg, gen = _read("config.json"), _read("speech_tokenizer/config.json"), _read("generation_config.json")
    if shape == "tiny":
        return cfg, st_cfg, gen
    cfg["tts_model_size"] = "0b6" if shape == "0.6b" else "1b7"
    talker = cfg["talker_config"]
    talker.update(_COMMON_TALKER, **_TALKER[shape])
    talker["code_predictor_config"].update(_PREDICTOR)
    return cfg, st_cfg, gen
