"""`speak`: text to the speakers or to a file, through `mlx_qwen_tts.api.stream`."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import click

from mlx_qwen_tts.cli.common import (Command, Number, cpu_dtype, model_size, one_line, select_device, user_errors,
                                     warnings_to_stderr)
from mlx_qwen_tts.hub import DEFAULT_MODEL
from mlx_qwen_tts.text import split_text

MAX_SEED = 2 ** 64 - 1  # the sampling noise is keyed by a uint64
# Playback chunks: small for a quick first sound, and all the same size, because the player
# sizes its pre-buffer by the wait for a chunk like the last one.
PLAY_CHUNK_FRAMES = 3


def read_stdin() -> str:
    stdin = getattr(sys.stdin, "buffer", None)  # bytes, so the encoding is UTF-8 whatever the locale
    try:
        return stdin.read().decode("utf-8") if stdin is not None else sys.stdin.read()
    except UnicodeDecodeError as e:
        raise click.ClickException(f"cannot read standard input: it is not UTF-8 text ({e.reason} at byte "
                                   f"{e.start})") from None


def read_text(text: str | None, text_file: Path | None) -> str:
    if text is not None and text_file is not None:
        raise click.ClickException("give the text either as an argument or with --file, not both")
    if text_file is not None:
        try:
            text = text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read --file {text_file}: {one_line(e)}") from None
    elif text == "-":
        text = read_stdin()
    elif text is None:
        raise click.ClickException("nothing to say: give TEXT, '-' to read standard input, or --file PATH")
    if not text.strip():
        raise click.ClickException("text is empty: nothing to say")
    return text


@click.command(cls=Command)
@click.argument("text", required=False)
@click.option("-f", "--file", "text_file", type=click.Path(path_type=Path), help="Read the text from a file.")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder (converted or Hugging Face), or a Hugging Face id (downloaded and "
                   "converted once).")
@click.option("--voice", help="Speaker of a CustomVoice model (see `voices`); default: its first one.")
@click.option("-l", "--language", default="auto", show_default=True, help="Language of the text.")
@click.option("-i", "--instruct", help="Style or emotion, e.g. 'cheerful, fast'; describes the voice "
                                       "for VoiceDesign models.")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Save to a .wav, .flac or .ogg file.")
@click.option("--ref-audio", type=click.Path(path_type=Path),
              help="Base models: a 1-30 s recording of the voice to clone.")
@click.option("--ref-text", help="Base models: what --ref-audio says (in-context cloning; without it only the "
                                 "speaker embedding is used).")
@click.option("--voice-file", type=click.Path(path_type=Path),
              help="Base models: a voice saved with `voices create` (no re-encoding).")
@click.option("--play/--no-play", default=None, help="Play through the speakers [default: unless --out].")
@click.option("--seed", type=Number(0, MAX_SEED, integer=True), help="Seed the sampling for a reproducible result.")
@click.option("--greedy", is_flag=True, help="Always take the most likely code (no sampling; same as --temperature 0).")
@click.option("--temperature", type=Number(0), help="Sampling temperature; 0 is --greedy [model default].")
@click.option("--top-k", type=Number(0, integer=True), help="Top-k sampling [model default].")
@click.option("--top-p", type=Number(0, 1), help="Top-p sampling [model default].")
@click.option("--max-seconds", type=Number(0, low_open=True),
              help="Stop once the output holds this many seconds of audio.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
@click.option("--progress/--no-progress", default=None,
              help="Show segments and audio seconds done, with an ETA [default: with --out, on a terminal].")
@click.option("--verbose", is_flag=True, help="Print timings: first audio, RTF, frames/s, peak memory.")
def speak(text, text_file, model, voice, language, instruct, ref_audio, ref_text, voice_file, out, play,
          seed, greedy, temperature, top_k, top_p, max_seconds, device, progress, verbose):
    """Say TEXT ('-' reads standard input) through the speakers, or save it with --out.

    Playback starts after the first few frames while the rest is still being generated. An
    interrupted --out run keeps what was made in NAME.partial.EXT.
    """
    if temperature == 0:  # a common way to ask for greedy decoding
        greedy, temperature = True, None
    if greedy and (temperature, top_k, top_p) != (None, None, None):
        raise click.ClickException("--greedy takes the most likely code; it does not combine with "
                                   "--temperature, --top-k or --top-p")
    if progress is None:
        progress = out is not None and sys.stderr.isatty()
    with user_errors(), warnings_to_stderr():
        _speak(read_text(text, text_file), model=model, voice=voice, language=language, instruct=instruct,
               out=out, play=out is None if play is None else play, device=device, verbose=verbose,
               max_seconds=max_seconds, progress=progress,
               clone=dict(ref_audio=ref_audio, ref_text=ref_text, voice_file=voice_file),
               sampling=dict(seed=seed, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p))


def check_clone_options(cfg, ref_audio, ref_text, voice_file):
    cloning = ref_audio is not None or voice_file is not None
    if cfg.model_type != "base":
        if cloning or ref_text is not None:
            raise click.ClickException(f"voice cloning needs a Base model; this one is {cfg.model_type}")
        return
    if ref_text is not None and ref_audio is None:
        raise click.ClickException("--ref-text goes with --ref-audio")
    if not cloning:
        raise click.ClickException("this Base model clones a voice: pass --ref-audio FILE [--ref-text TEXT] "
                                   "or --voice-file FILE")
    if ref_audio is not None and voice_file is not None:
        raise click.ClickException("give either --ref-audio or --voice-file, not both")
    if ref_audio is not None and ref_text is None:
        click.echo("note: no --ref-text, so only the speaker embedding is used (x-vector mode); give the "
                   "reference's transcript for a closer clone", err=True)


def _speak(text, *, model, voice, language, instruct, out, play, device, verbose, max_seconds, progress, clone,
           sampling):
    from mlx_qwen_tts import audio
    from mlx_qwen_tts.config import config_summary, load_model_config
    from mlx_qwen_tts.hub import resolve_model
    from mlx_qwen_tts.engine.prompt import resolve_language, resolve_voice

    if not play and out is None:
        raise click.ClickException("nothing to do: --no-play needs --out FILE")
    segments = len(split_text(text))
    if out is not None:
        audio.check_writable(out)
    device = select_device(device)
    folder = resolve_model(model)
    cfg = load_model_config(folder)
    voice, language = resolve_voice(cfg, voice), resolve_language(cfg, language)  # fail before loading
    check_clone_options(cfg, **clone)
    if instruct and not config_summary(cfg)["instruct"]:
        click.echo(f"warning: this {cfg.model_type} {model_size(cfg)} model ignores --instruct", err=True)
        instruct = None
    if play:
        audio.check_output_device()

    import mlx.core as mx

    from mlx_qwen_tts.api import SynthesisStats, stream
    from mlx_qwen_tts.engine.generate import FRAME_RATE
    from mlx_qwen_tts.loading import load_model

    t0 = time.perf_counter()
    tts = load_model(folder, dtype=cpu_dtype(device))
    load_s = time.perf_counter() - t0
    # --max-seconds caps the whole output; each segment's cap only keeps it from generating past it.
    max_frames = None if max_seconds is None else math.ceil(max_seconds * FRAME_RATE)
    max_samples = None if max_frames is None else max_frames * round(tts.sample_rate / FRAME_RATE)
    stats = SynthesisStats()
    chunk = dict(first_chunk_frames=PLAY_CHUNK_FRAMES, chunk_frames=PLAY_CHUNK_FRAMES) if play else {}
    pieces = stream(tts, text, voice=voice, language=language, instruct=instruct, max_frames=max_frames,
                    stats=stats, **clone, **chunk, **sampling)
    kept = Output(out, tts.sample_rate)
    with kept.saving_partial(), contextlib.closing(pieces), \
            Progress(progress, segments, stats, kept) as bar, \
            (audio.Player(tts.sample_rate) if play else contextlib.nullcontext()) as player:
        for piece in pieces:
            if max_samples is not None:
                piece = piece[:max_samples - kept.samples]
            if player is not None:
                player.play(piece)
            kept.add(piece)
            bar.update()
            if max_samples is not None and kept.samples >= max_samples:
                break
    if not stats.elapsed_s:  # stopped early by --max-seconds: the stream did not finish its stats
        stats.elapsed_s, stats.peak_memory_gb = time.perf_counter() - t0 - load_s, mx.get_peak_memory() / 1e9
    if verbose:
        _report(folder, cfg, tts, device, load_s, voice, language, stats, player)
    kept.save()


class Output:
    """The audio for --out. `saving_partial` keeps what was made when the run stops early
    (Ctrl-C, SIGTERM, an error) in NAME.partial.EXT beside the target."""

    def __init__(self, path: Path | None, sample_rate: int):
        self.path, self.sample_rate, self.chunks, self.samples = path, sample_rate, [], 0

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def add(self, piece):
        self.samples += len(piece)
        if self.path is not None:
            self.chunks.append(piece)

    @contextlib.contextmanager
    def saving_partial(self):
        try:
            yield
        except (Exception, KeyboardInterrupt):
            if self.path is not None and self.samples:
                partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
                try:
                    self._write(partial)
                    click.echo(f"Saved the {self.seconds:.2f} s made so far to {partial}", err=True)
                except OSError as e:
                    click.echo(f"warning: could not save the audio made so far: {one_line(e)}", err=True)
            raise

    def save(self):
        if self.path is None:
            return
        if not self.samples:
            raise click.ClickException("the model produced no audio for this text")
        self._write(self.path)
        click.echo(f"Saved {self.path} ({self.seconds:.2f} s)", err=True)

    def _write(self, path):
        import numpy as np

        from mlx_qwen_tts.audio import write_audio

        write_audio(path, np.concatenate(self.chunks), self.sample_rate)


class Progress:
    """Segments done (tqdm derives the ETA from them) and seconds of audio made, on stderr."""

    def __init__(self, enabled: bool, segments: int, stats, kept: Output):
        self.stats, self.kept, self.bar = stats, kept, None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=segments, unit="segment", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} segments{postfix} "
                                       "[{elapsed}<{remaining}]", postfix="0.0 s of audio")

    def update(self):
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.kept.seconds:.1f} s of audio", refresh=False)
            self.bar.update(self.stats.segments - self.bar.n)  # refreshes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.update()
            self.bar.close()


def _report(folder, cfg, tts, device, load_s, voice, language, stats, player):
    bits = f"{tts.quantization['bits']}-bit" if tts.quantization else "unquantized"
    lines = [
        f"model: {folder} ({cfg.model_type} {model_size(cfg)}, {bits}), loaded in {load_s:.2f} s on {device}",
        f"voice: {voice or '-'}, language: {language}",
        f"frames: {stats.frames} ({stats.audio_s:.2f} s of audio), segments: {stats.segments}, "
        f"stop: {', '.join(stats.stop_reasons) or '-'}",
        f"time to first audio: {stats.first_audio_s or 0:.3f} s (after {stats.frames_before_first_audio} "
        f"frames; prefill {stats.prefill_s:.3f} s)",
        f"RTF: {stats.rtf:.3f} (synthesis time / audio time), {stats.frames_per_s:.1f} frames/s",
        f"peak memory: {stats.peak_memory_gb:.2f} GB",
    ]
    if player is not None:
        started = "-" if player.start_latency_s is None else f"{player.start_latency_s:.3f} s"
        lines.append(f"playback: started after {started}, {player.samples_played / tts.sample_rate:.2f} s "
                     f"played, {player.underruns} underrun(s)")
    click.echo("\n".join(lines), err=True)
