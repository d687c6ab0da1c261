"""`speak`: text to the speakers or to a file, through `mlx_qwen_tts.api.stream`."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import Counter
from pathlib import Path

import click

from mlx_qwen_tts.cli.common import (Command, Number, cpu_dtype, model_size, one_line, select_device, user_errors,
                                     utf8_text, warnings_to_stderr)
from mlx_qwen_tts.cli.fanout import remote_options, speak_remote
from mlx_qwen_tts.cli.live_input import live_audio, stdin_pieces
from mlx_qwen_tts.hub import DEFAULT_MODEL
from mlx_qwen_tts.text import split_text

MAX_SEED = 2 ** 64 - 1  # the sampling noise is keyed by a uint64
# Playback chunks: small for a quick first sound, and all the same size, because the player
# sizes its pre-buffer by the wait for a chunk like the last one.
PLAY_CHUNK_FRAMES = 3


MAX_TOP_K = 2 ** 31 - 1  # the sampler keeps top-k as int32 (any value above the vocabulary means "all")
MAX_OUTPUT_SECONDS = 24 * 3600  # --max-seconds: a day of audio (the frame count stays an integer)
MAX_TEXT_BYTES = 10_000_000  # standard input and --file: ~18 hours of speech per MB (15 characters a second)
READ_CHUNK = 1 << 16


def read_bounded(stream, what: str) -> str:
    """UTF-8 text from a binary stream, read in chunks (Ctrl-C works while it waits) and refused
    once it passes MAX_TEXT_BYTES (a `/dev/zero` or `yes |` feed ends there)."""
    chunks, size = [], 0
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_TEXT_BYTES:
            raise click.ClickException(f"{what} holds more than {MAX_TEXT_BYTES // 1_000_000} MB of text, the "
                                       "most one run reads; split it into several runs")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"cannot read {what}: it is not UTF-8 text ({e.reason} at byte "
                                   f"{e.start})") from None


def read_text(text: str | None, text_file: Path | None) -> str:
    from mlx_qwen_tts.paths import path_problem

    if text is not None and text_file is not None:
        raise click.ClickException("give the text either as an argument or with --file, not both")
    if text_file is not None:
        problem = path_problem(text_file)
        if problem and "not a regular file" not in problem:  # pipes and devices are read (bounded)
            raise click.ClickException(f"cannot read --file {text_file}: it {problem}")
        try:
            with open(text_file, "rb") as f:
                text = read_bounded(f, f"--file {text_file}")
        except OSError as e:
            raise click.ClickException(f"cannot read --file {text_file}: {one_line(e)}") from None
    elif text == "-":
        if sys.stdin is None:  # started with standard input closed
            raise click.ClickException("standard input is closed: nothing to read")
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, so the encoding is UTF-8 whatever the locale
        text = read_bounded(stdin, "standard input") if stdin is not None else sys.stdin.read(MAX_TEXT_BYTES)
    elif text is None:
        raise click.ClickException("nothing to say: give TEXT, '-' to read standard input, or --file PATH")
    if not text.strip():
        raise click.ClickException("text is empty: nothing to say")
    if not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise click.ClickException("text has only invisible characters (zero-width, control or format "
                                   "characters): nothing to say")
    return text


def check_language(ctx, param, value):
    value = utf8_text(ctx, param, value)
    if value is not None and not value.strip():
        raise click.ClickException("--language is empty; give auto or a language name (see `mlx-qwen-tts voices`)")
    return value


def check_not_inputs(out: Path, inputs: dict):
    """An output never replaces an input of the same command (also through a symbolic or hard link)."""
    from mlx_qwen_tts.paths import same_file

    for option, path in inputs.items():
        if path is not None and same_file(out, path):
            raise click.ClickException(f"--out {out} is the same file as {option} {path}; it would be "
                                       "overwritten: choose another output name")


@click.command(cls=Command)
@click.argument("text", required=False, callback=utf8_text)
@click.option("-f", "--file", "text_file", type=click.Path(path_type=Path),
              help="Read the text from a file or a pipe (UTF-8, at most 10 MB, as for standard input).")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder (converted or Hugging Face), or a Hugging Face id (downloaded and "
                   "converted once).")
@click.option("--voice", callback=utf8_text,
              help="Speaker of a CustomVoice model (see `voices`); default: its first one.")
@click.option("-l", "--language", default="auto", show_default=True, callback=check_language,
              help="Language of the text.")
@click.option("-i", "--instruct", callback=utf8_text,
              help="Style or emotion, e.g. 'cheerful, fast'; describes the voice for VoiceDesign models.")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Save to a .wav, .flac or .ogg file. An existing OUT that is a symbolic link is replaced by "
                   "the new file (the link, never what it points to); OUT may not be one of the inputs.")
@click.option("--ref-audio", type=click.Path(path_type=Path),
              help="Base models: a 1-30 s recording of the voice to clone.")
@click.option("--ref-text", callback=utf8_text,
              help="Base models: what --ref-audio says (in-context cloning; without it only the speaker embedding "
                   "is used).")
@click.option("--voice-file", type=click.Path(path_type=Path),
              help="Base models: a voice saved with `voices create` (no re-encoding).")
@click.option("--play/--no-play", default=None, help="Play through the speakers [default: unless --out].")
@click.option("--seed", type=Number(0, MAX_SEED, integer=True), help="Seed the sampling for a reproducible result.")
@click.option("--greedy", is_flag=True, help="Always take the most likely code (no sampling; same as --temperature 0).")
@click.option("--temperature", type=Number(0), help="Sampling temperature; 0 is --greedy [model default].")
@click.option("--top-k", type=Number(0, MAX_TOP_K, integer=True), help="Top-k sampling [model default].")
@click.option("--top-p", type=Number(0, 1), help="Top-p sampling [model default].")
@click.option("--max-seconds", type=Number(0, MAX_OUTPUT_SECONDS, low_open=True),
              help="Stop once the output holds this many seconds of audio (at most 86400).")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
@click.option("--progress/--no-progress", default=None,
              help="Show segments and audio seconds done, with an ETA [default: with --out, on a terminal].")
@click.option("--verbose", is_flag=True, help="Print timings: first audio, RTF, frames/s, peak memory.")
@click.option("--live", is_flag=True, help="With '-': speak standard input as it arrives (e.g. piped from an "
                                           "LLM), pausing when it stalls, until end of file.")
@remote_options
def speak(text, text_file, model, voice, language, instruct, ref_audio, ref_text, voice_file, out, play,
          seed, greedy, temperature, top_k, top_p, max_seconds, device, progress, verbose, live, **remote):
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
    if live and (text != "-" or text_file is not None):
        raise click.ClickException("--live reads standard input as it arrives: use `speak --live -`")
    if remote["server"]:
        if live:
            raise click.ClickException("--live speaks with the local model; it does not combine with --server")
        with user_errors():
            if out is not None:
                check_not_inputs(out, {"--file": text_file})
            return speak_remote(read_text(text, text_file), out=out, play=play, max_seconds=max_seconds,
                                clone=dict(ref_audio=ref_audio, ref_text=ref_text, voice_file=voice_file),
                                remote=remote, voice=voice, language=language, instruct=instruct, progress=progress,
                                sampling=dict(seed=seed, greedy=greedy, temperature=temperature, top_k=top_k,
                                              top_p=top_p))
    with user_errors(), warnings_to_stderr():
        _speak(stdin_pieces() if live else read_text(text, text_file), text_file=text_file, model=model, voice=voice,
               language=language, instruct=instruct, out=out, play=out is None if play is None else play,
               device=device, verbose=verbose, max_seconds=max_seconds, progress=progress,
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


def _speak(text, *, text_file, model, voice, language, instruct, out, play, device, verbose, max_seconds, progress,
           clone, sampling):
    from mlx_qwen_tts import audio
    from mlx_qwen_tts.config import config_summary, load_model_config
    from mlx_qwen_tts.hub import resolve_model
    from mlx_qwen_tts.engine.prompt import (MAX_INSTRUCT_CHARS, MAX_REF_TEXT_CHARS, check_text_limit,
                                            resolve_language, resolve_voice)

    if not play and out is None:
        raise click.ClickException("nothing to do: --no-play needs --out FILE")
    live = not isinstance(text, str)  # pieces of standard input as they arrive (--live)
    segments = 1 if live else len(split_text(text))
    if out is not None:
        audio.check_writable(out)
        check_not_inputs(out, {"--file": text_file, "--ref-audio": clone["ref_audio"],
                               "--voice-file": clone["voice_file"]})
    device = select_device(device)
    folder = resolve_model(model)
    cfg = load_model_config(folder)
    voice, language = resolve_voice(cfg, voice), resolve_language(cfg, language)  # fail before loading
    check_text_limit("--instruct", instruct, MAX_INSTRUCT_CHARS)  # before the model loads
    check_text_limit("--ref-text", clone["ref_text"], MAX_REF_TEXT_CHARS)
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
    options = dict(voice=voice, language=language, instruct=instruct, max_frames=max_frames, stats=stats,
                   **clone, **chunk, **sampling)
    pieces = live_audio(tts, text, **options) if live else stream(tts, text, **options)
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

    @property
    def partial_path(self) -> Path:
        """NAME.partial.EXT beside the target (NAME shortened if the whole would be too long a name)."""
        from mlx_qwen_tts.atomic import name_max, short_name

        tail = f".partial{self.path.suffix}"
        stem = short_name(self.path.stem, name_max(self.path.parent) - len(tail.encode()))
        return self.path.with_name(stem + tail)

    def keep_partial(self) -> str | None:
        """Write what was made so far to the partial file: None once written, else why it could not be."""
        try:
            self._write(self.partial_path)
        except (OSError, ValueError) as e:
            return one_line(e)
        return None

    @contextlib.contextmanager
    def saving_partial(self):
        try:
            yield
        except (Exception, KeyboardInterrupt):
            if self.path is not None and self.samples:
                problem = self.keep_partial()
                click.echo(f"Saved the {self.seconds:.2f} s made so far to {self.partial_path}" if problem is None
                           else f"warning: could not save the audio made so far: {problem}", err=True)
            raise

    def save(self):
        if self.path is None:
            return
        if not self.samples:
            raise click.ClickException("the model produced no audio for this text")
        try:
            self._write(self.path)
        except OSError as e:  # a full disk, a folder removed meanwhile: one line, the audio kept where it fits
            problem = self.keep_partial()
            kept = (f"the {self.seconds:.2f} s made are saved in {self.partial_path}" if problem is None else
                    f"the {self.seconds:.2f} s made could not be kept either")
            raise click.ClickException(f"{one_line(e)}; {kept}") from None
        click.echo(f"Saved {self.path} ({self.seconds:.2f} s)", err=True)

    def _write(self, path):
        import numpy as np

        from mlx_qwen_tts.audio import write_audio

        write_audio(path, np.concatenate(self.chunks), self.sample_rate)


class Progress:
    """Segments whose audio is decoded (tqdm derives the ETA from them) and seconds of audio made,
    on stderr. A segment counts once all of its frames are audio, not when its last frame is made."""

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
            self.bar.update(self.decoded_segments() - self.bar.n)  # refreshes

    def decoded_segments(self) -> int:
        done, frames = 0, 0
        for n in self.stats.segment_frames:
            frames += n
            if frames > self.stats.frames:  # frames decoded into audio so far
                break
            done += 1
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.update()
            self.bar.close()


def stop_summary(reasons: list) -> str:
    """Why the segments stopped, counted: `eos` for one segment, `97 eos, 3 max_frames` for many."""
    if len(reasons) <= 1:
        return reasons[0] if reasons else "-"
    return ", ".join(f"{n} {reason}" for reason, n in Counter(reasons).items())


def _report(folder, cfg, tts, device, load_s, voice, language, stats, player):
    bits = f"{tts.quantization['bits']}-bit" if tts.quantization else "unquantized"
    lines = [
        f"model: {folder} ({cfg.model_type} {model_size(cfg)}, {bits}), loaded in {load_s:.2f} s on {device}",
        f"voice: {voice or '-'}, language: {language}",
        f"frames: {stats.frames} ({stats.audio_s:.2f} s of audio), segments: {stats.segments}, "
        f"stop: {stop_summary(stats.stop_reasons)}",
        f"time to first audio: {stats.first_audio_s or 0:.3f} s (after {stats.frames_before_first_audio} "
        f"frames; prefill {stats.prefill_s:.3f} s)",
        f"RTF: {stats.rtf:.3f} (synthesis time / audio time), {stats.frames_per_s:.1f} frames/s",
        f"peak memory: {stats.peak_memory_gb:.2f} GB",
    ]
    if device == "cpu" and sys.platform == "linux":
        from mlx_qwen_tts.__main__ import openblas_loaded

        lines.append("CPU matmuls: system OpenBLAS" if openblas_loaded() else "CPU matmuls: MLX's own BLAS; install "
                     "OpenBLAS (Debian/Ubuntu: sudo apt-get install libopenblas0-pthread) for several times faster "
                     "float32 matmuls")
    if player is not None:
        started = "-" if player.start_latency_s is None else f"{player.start_latency_s:.3f} s"
        lines.append(f"playback: started after {started}, {player.samples_played / tts.sample_rate:.2f} s "
                     f"played, {player.underruns} underrun(s)")
    click.echo("\n".join(lines), err=True)
