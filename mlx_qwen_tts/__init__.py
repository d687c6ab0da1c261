"""Qwen3-TTS (12 Hz family) on Apple MLX.

The public API is imported lazily so that `import mlx_qwen_tts` stays fast and works where
PortAudio (sounddevice) is missing.
"""

from mlx_qwen_tts._mlx_lm import defer_package_init

__version__ = "0.1.0"
defer_package_init()  # mlx-lm's package init would import transformers (seconds) for nothing

_LAZY = {
    "load": "mlx_qwen_tts.hub",
    "synthesize": "mlx_qwen_tts.api",
    "stream": "mlx_qwen_tts.api",
    "stream_text": "mlx_qwen_tts.api",
    "synthesize_batch": "mlx_qwen_tts.api",
    "Engine": "mlx_qwen_tts.engine.service",
    "make_request": "mlx_qwen_tts.engine.request",
    "generate_frames": "mlx_qwen_tts.engine.generate",
    "load_model_config": "mlx_qwen_tts.config",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        attr = getattr(module, name)
        globals()[name] = attr
        return attr
    raise AttributeError(f"module 'mlx_qwen_tts' has no attribute {name!r}")
