"""A short soak in one process: syntheses and abandoned streams, each with its own temperature,
top-k and top-p. Memory stays flat and no new frame-step graph is traced once the shapes in use
have been seen (the settings are arrays, not graph constants). bench/soak.py runs 1,000."""

import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from soak import soak  # noqa: E402

from mlx_qwen_tts.loading import load_model  # noqa: E402


def test_soak_keeps_memory_flat_and_the_graph_count_bounded(model_dir):
    model = load_model(model_dir("customvoice_0b6"), dtype=mx.float32)
    result = soak(model, runs=60)
    assert result["new_traces"] == 0, result
    assert result["rss_growth"] < 0.10, result
    assert result["end"]["mlx_active_mb"] <= result["start"]["mlx_active_mb"] * 1.10 + 1, result
