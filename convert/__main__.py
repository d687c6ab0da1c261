"""`python -m mlx_qwen_tts_convert SOURCE -o OUT`: the same command as `mlx-qwen-tts convert`."""

from mlx_qwen_tts.cli import convert_command

convert_command(prog_name="python -m mlx_qwen_tts_convert")
