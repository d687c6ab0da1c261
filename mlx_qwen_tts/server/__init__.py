"""The OpenAI-compatible speech server (`mlx-qwen-tts serve`)."""
