"""The `mlx-qwen-tts` command line. Heavy imports (mlx, models, sounddevice) happen inside
commands so that `--help` is instant and works without PortAudio.

User errors (bad input, missing files, no audio device, broken model folders) end as one line
on stderr and exit status 1; Ctrl-C, SIGTERM and SIGHUP run every command's cleanup, print
`Interrupted.` and exit with 128 + the signal (130 for Ctrl-C).
"""

from __future__ import annotations

import click

from mlx_qwen_tts import __version__
from mlx_qwen_tts.cli.common import Group
from mlx_qwen_tts.cli.speak import PLAY_CHUNK_FRAMES, speak
from mlx_qwen_tts.cli.tools import check_quant, convert_command, voice, voices
from mlx_qwen_tts.server.cli import serve  # click only; the server's packages load inside the command

__all__ = ["main", "PLAY_CHUNK_FRAMES", "convert_command"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-qwen-tts")
def main():
    """Qwen3-TTS text-to-speech on Apple MLX: speak, stream, convert and clone voices."""


for command in (speak, voices, convert_command, check_quant, voice, serve):
    main.add_command(command)
