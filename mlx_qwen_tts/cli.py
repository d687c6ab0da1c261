"""The `mlx-qwen-tts` command line. Heavy imports (mlx, models, sounddevice) happen inside
commands so that `--help` is instant and works without PortAudio.

User errors (bad input, missing files, no audio device, broken model folders) end as one line
on stderr and exit status 1; Ctrl-C stops playback and generation and exits with 130.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

import click

from mlx_qwen_tts import __version__
from mlx_qwen_tts.hub import DEFAULT_MODEL

# Playback chunks: small for a quick first sound, and all the same size, because the player
# sizes its pre-buffer by the wait for a chunk like the last one.
PLAY_CHUNK_FRAMES = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-qwen-tts")
def main():
    """Qwen3-TTS text-to-speech on Apple MLX: speak, stream, convert and clone voices."""


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:  # system errors: "path: reason"
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


@contextlib.contextmanager
def user_errors():
    """Expected failures become `Error: <one line>` and exit 1, without a traceback."""
    from mlx_qwen_tts.audio import AudioDeviceError

    try:
        yield
    except (ValueError, OSError, AudioDeviceError) as e:  # ConfigError is a ValueError
        raise click.ClickException(_one_line(e)) from None


@contextlib.contextmanager
def warnings_to_stderr():
    """Library warnings (runaway generation, ignored instruct) as plain `warning:` lines."""
    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        yield


def read_text(text: str | None, text_file: Path | None) -> str:
    if text is not None and text_file is not None:
        raise click.ClickException("give the text either as an argument or with --file, not both")
    if text_file is not None:
        try:
            text = text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read --file {text_file}: {_one_line(e)}") from None
    elif text == "-":
        text = sys.stdin.read()
    elif text is None:
        raise click.ClickException("nothing to say: give TEXT, '-' to read standard input, or --file PATH")
    if not text.strip():
        raise click.ClickException("text is empty: nothing to say")
    return text


def model_size(cfg) -> str:
    return f"{cfg.model_size.replace('b', '.')}B" if cfg.model_size else "unknown size"


def select_device(name: str | None) -> str:
    import mlx.core as mx

    has_gpu = mx.is_available(mx.gpu)
    name = name or ("gpu" if has_gpu else "cpu")
    if name == "gpu" and not has_gpu:
        raise click.ClickException("MLX has no GPU here; use --device cpu")
    mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)
    return name


@main.command()
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
              help="Base models: a voice saved with `voice create` (no re-encoding).")
@click.option("--play/--no-play", default=None, help="Play through the speakers [default: unless --out].")
@click.option("--seed", type=int, help="Seed the sampling for a reproducible result.")
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature [model default].")
@click.option("--top-k", type=click.IntRange(min=0), help="Top-k sampling [model default].")
@click.option("--top-p", type=click.FloatRange(0, 1), help="Top-p sampling [model default].")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), help="Cap the audio of each text segment (up to ~250 characters) at this many seconds.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
@click.option("--verbose", is_flag=True, help="Print timings: first audio, RTF, frames/s, peak memory.")
@click.pass_context
def speak(ctx, text, text_file, model, voice, language, instruct, ref_audio, ref_text, voice_file, out, play,
          seed, temperature, top_k, top_p, max_seconds, device, verbose):
    """Say TEXT ('-' reads standard input) through the speakers, or save it with --out.

    Playback starts after the first few frames while the rest is still being generated.
    """
    try:
        with user_errors(), warnings_to_stderr():
            _speak(read_text(text, text_file), model=model, voice=voice, language=language, instruct=instruct,
                   out=out, play=out is None if play is None else play, device=device, verbose=verbose,
                   max_seconds=max_seconds, clone=dict(ref_audio=ref_audio, ref_text=ref_text, voice_file=voice_file),
                   sampling=dict(seed=seed, temperature=temperature, top_k=top_k, top_p=top_p))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        ctx.exit(130)


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


def _speak(text, *, model, voice, language, instruct, out, play, device, verbose, max_seconds, clone, sampling):
    from mlx_qwen_tts import audio
    from mlx_qwen_tts.config import config_summary, load_model_config
    from mlx_qwen_tts.hub import resolve_model
    from mlx_qwen_tts.engine.prompt import resolve_language, resolve_voice

    if not play and out is None:
        raise click.ClickException("nothing to do: --no-play needs --out FILE")
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
    import numpy as np

    from mlx_qwen_tts.api import SynthesisStats, stream
    from mlx_qwen_tts.engine.generate import FRAME_RATE
    from mlx_qwen_tts.loading import load_model

    t0 = time.perf_counter()
    tts = load_model(folder, dtype=mx.float32 if device == "cpu" else None)  # bf16 is slow on CPUs
    load_s = time.perf_counter() - t0
    max_frames = None if max_seconds is None else math.ceil(max_seconds * FRAME_RATE)
    stats = SynthesisStats()
    chunk = dict(first_chunk_frames=PLAY_CHUNK_FRAMES, chunk_frames=PLAY_CHUNK_FRAMES) if play else {}
    chunks, player = [], None
    with contextlib.closing(stream(tts, text, voice=voice, language=language, instruct=instruct,
                                   max_frames=max_frames, stats=stats, **clone, **chunk, **sampling)) as pieces:
        if play:
            with audio.Player(tts.sample_rate) as player:
                for piece in pieces:
                    player.play(piece)
                    if out is not None:
                        chunks.append(piece)
        else:
            chunks = list(pieces)
    if verbose:
        _report(folder, cfg, tts, device, load_s, voice, language, stats, player)
    if out is not None:
        if not chunks:
            raise click.ClickException("the model produced no audio for this text")
        samples = np.concatenate(chunks)
        audio.write_audio(out, samples, tts.sample_rate)
        click.echo(f"Saved {out} ({len(samples) / tts.sample_rate:.2f} s)", err=True)


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


@main.command()
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder or Hugging Face id (only its configuration is read).")
def voices(model):
    """List a model's speakers, languages and capabilities."""
    from mlx_qwen_tts.config import config_summary, load_model_config
    from mlx_qwen_tts.hub import resolve_config

    with user_errors():
        cfg = load_model_config(resolve_config(model))
    summary = config_summary(cfg)
    speakers = [f"{s} ({cfg.speaker_dialects[s].replace('_', ' ')})" if cfg.speaker_dialects.get(s) else s
                for s in summary["speakers"]]
    if speakers:
        speakers[0] += " [default]"
    no_speakers = {"voice_design": "none: describe the voice with --instruct",
                   "base": "none: this model clones a voice from a reference recording"}
    click.echo(f"model: {model} ({cfg.model_type}, {model_size(cfg)})")
    click.echo(f"speakers: {', '.join(speakers) or no_speakers.get(cfg.model_type, 'none')}")
    click.echo(f"languages: {', '.join(summary['languages'])}")
    click.echo(f"instruct: {'yes' if summary['instruct'] else 'no (this model ignores it)'}")
    click.echo(f"voice cloning: {'yes' if summary['voice_clone'] else 'no'}")


@click.command("convert")
@click.argument("source")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The MLX folder to write.")
@click.option("--codec", "codec_gguf", type=click.Path(path_type=Path),
              help="GGUF sources: the speech-tokenizer (codec) GGUF that goes with the talker GGUF.")
@click.option("--tokenizer-dir", type=click.Path(path_type=Path),
              help="GGUF sources: a Hugging Face folder to take the text tokenizer (and config) from.")
@click.option("--bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="Quantization of the talker and code predictor.")
@click.option("--no-quantize", is_flag=True, help="Keep every weight in --dtype.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16",
              show_default=True, help="Type of the unquantized weights (the codec stays float32).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Quantization group size.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def convert_command(source, out, codec_gguf, tokenizer_dir, bits, no_quantize, dtype, group_size, force):
    """Convert a Qwen3-TTS checkpoint into an MLX folder.

    SOURCE is a Hugging Face folder or Hub id, or a talker .gguf file (with --codec) from
    qwentts.cpp / qwen3-tts.cpp / koboldcpp, CrispASR or RustTTS.
    """
    with user_errors():
        if source.endswith(".gguf"):
            from mlx_qwen_tts_convert.gguf_import import convert_gguf

            if codec_gguf is None:
                raise click.ClickException("a GGUF talker needs its codec file: --codec qwen-tokenizer-12hz-*.gguf")
            convert_gguf(source, codec_gguf, out, tokenizer_dir=tokenizer_dir, overwrite=force, progress=True)
            click.echo(f"Converted {source} + {codec_gguf} -> {out}", err=True)
            return
        from mlx_qwen_tts_convert.convert import convert_model
        from mlx_qwen_tts.hub import resolve_source
        from mlx_qwen_tts.loading import is_converted

        folder = resolve_source(source)
        if is_converted(folder):
            raise click.ClickException(f"{source} is already an MLX folder; convert the Hugging Face checkpoint")
        bits = None if no_quantize else int(bits)
        convert_model(folder, out, bits=bits, group_size=int(group_size), dtype=dtype, overwrite=force,
                      progress=True)
    click.echo(f"Converted {source} -> {out} ({f'{bits}-bit, group {group_size}' if bits else 'unquantized'}, "
               f"{dtype})", err=True)


@main.command("check-quant")
@click.argument("quantized", type=click.Path(path_type=Path))
@click.option("-r", "--reference", required=True, type=click.Path(path_type=Path),
              help="The float model it was made from (Hugging Face or unquantized MLX folder).")
@click.option("--frames", type=click.IntRange(min=4), default=40, show_default=True,
              help="Frames generated per gate prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_quant(quantized, reference, frames, as_json):
    """Compare a quantized model with its float source (teacher-forced KL, top-1/top-5, SNR).

    Exits with status 1 when the gate fails.
    """
    import json

    import mlx.core as mx

    from mlx_qwen_tts.loading import load_model
    from mlx_qwen_tts.quality import THRESHOLDS, quality_gate

    with user_errors():
        report = quality_gate(load_model(reference, dtype=mx.float32), load_model(quantized, dtype=mx.float32),
                              frames=frames)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for part in ("talker", "predictor"):
            click.echo(f"{part:9s}: mean KL {getattr(report, part + '_kl'):.5f}, top-1 "
                       f"{100 * getattr(report, part + '_top1'):.1f} %, top-5 {100 * getattr(report, part + '_top5'):.1f} %")
        click.echo(f"decoded SNR: {report.snr_db:.1f} dB over {report.frames} frames (reported, not gated)")
        click.echo(f"gate (KL <= {THRESHOLDS['kl_max']}, top-1 >= {THRESHOLDS['top1_min']:.0%}, top-5 >= "
                   f"{THRESHOLDS['top5_min']:.0%}): {'PASS' if report.passed else 'FAIL'}")
    if not report.passed:
        sys.exit(1)


@main.group()
def voice():
    """Saved voices for Base (voice-clone) models."""


@voice.command("create")
@click.option("--ref-audio", required=True, type=click.Path(path_type=Path), help="A 1-30 s recording.")
@click.option("--ref-text", help="Its transcript (enables in-context cloning).")
@click.option("-m", "--model", required=True, help="The Base model the voice is for (folder or Hub id).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The .safetensors file to write.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
def voice_create(ref_audio, ref_text, model, out, device):
    """Encode a reference recording once and save it for `speak --voice-file`."""
    with user_errors():
        from mlx_qwen_tts.config import load_model_config
        from mlx_qwen_tts.hub import resolve_model
        from mlx_qwen_tts.loading import load_model
        from mlx_qwen_tts.voice import make_voice_clone, save_voice

        device = select_device(device)
        folder = resolve_model(model)
        if load_model_config(folder).model_type != "base":
            raise click.ClickException("voices can only be made for Base models")
        import mlx.core as mx

        tts = load_model(folder, dtype=mx.float32 if device == "cpu" else None, codec=False)
        clone = make_voice_clone(tts, str(ref_audio), ref_text)
        save_voice(out, clone, tts)
    mode = "in-context (x-vector + reference codes)" if ref_text else "x-vector only"
    click.echo(f"Saved voice {out} ({mode})", err=True)


main.add_command(convert_command)
from mlx_qwen_tts.server.cli import serve  # noqa: E402 (click only; the server loads inside)
main.add_command(serve)


if __name__ == "__main__":
    main()
