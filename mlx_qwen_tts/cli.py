"""The `mlx-qwen-tts` command line. Heavy imports (mlx, models, sounddevice) happen inside
commands so that `--help` is instant and works without PortAudio."""

import click

from mlx_qwen_tts import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-qwen-tts")
def main():
    """Qwen3-TTS text-to-speech on Apple MLX: speak, stream, convert and clone voices."""


if __name__ == "__main__":
    main()
