"""Convert Qwen3-TTS checkpoints (Hugging Face folders or Hub ids) into MLX model folders."""

from convert.convert import convert_model

__all__ = ["convert_model"]
