"""`speak --live -`: standard input as it arrives (no waiting for end of file), as text pieces."""

from __future__ import annotations

import codecs
import os
import sys
import threading

import click

READ_BYTES = 4096


def live_audio(tts, pieces, **options):
    """Audio chunks of text read from `pieces` on a thread of its own (standard input blocks
    between writes; generation and playback go on meanwhile). No idle limit: the writer of a pipe
    may take long to start, and end of file ends the text."""
    from mlx_qwen_tts.engine.live import feed_from
    from mlx_qwen_tts.engine.service import Engine

    with Engine(tts, max_batch=1) as engine:
        speech = engine.open_text_stream(idle_timeout=None, **options)
        threading.Thread(target=feed_from, args=(speech, pieces), name="mlx-qwen-tts-stdin", daemon=True).start()
        try:
            yield from speech
        finally:
            speech.cancel()


def stdin_pieces(fd: int | None = None):
    """Yield str pieces as soon as bytes arrive on standard input; a UTF-8 character split across
    two reads is completed by the next one. Ends at end of file."""
    if fd is None:
        fd = sys.stdin.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")()
    read = 0
    while True:
        data = os.read(fd, READ_BYTES)  # returns what is there (a pipe's partial write), blocks only when empty
        try:
            piece = decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise click.ClickException(f"cannot read standard input: it is not UTF-8 text ({e.reason} at byte "
                                       f"{read + e.start})") from None
        read += len(data)
        if piece:
            yield piece
        if not data:
            return
