"""Convert Qwen3-TTS checkpoints (Hugging Face folders, Hub ids via mlx_qwen_tts.hub, or GGUF
files from other runtimes) into self-contained MLX model folders."""

from .convert import convert_model
from .gguf_import import convert_gguf

__all__ = ["convert_model", "convert_gguf"]
