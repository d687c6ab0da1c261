"""The model and voice commands: `voices` (and `voices create`), `convert` and `check-quant`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mlx_qwen_tts.cli.common import Command, Group, cpu_dtype, model_size, select_device, user_errors, utf8_text
from mlx_qwen_tts.hub import DEFAULT_MODEL


@click.group(cls=Group, invoke_without_command=True)
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder or Hugging Face id (only its configuration is read).")
@click.pass_context
def voices(ctx, model):
    """List a model's speakers, languages and capabilities; `voices create` saves a cloned voice."""
    if ctx.invoked_subcommand is None:
        list_voices(model)


def list_voices(model):
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


@click.command("convert", cls=Command)
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
@click.option("--group-size", type=click.Choice(["32", "64", "128"]),
              help="Quantization group size; every quantized weight's width must be a multiple of it "
                   "[default: 64, or 32 where 64 does not divide a width].")
@click.option("--force", is_flag=True, help="Replace OUT if it is an earlier conversion (nothing else is deleted).")
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
            from mlx_qwen_tts.loading import converted_meta

            convert_gguf(source, codec_gguf, out, tokenizer_dir=tokenizer_dir, overwrite=force, progress=True)
            meta = converted_meta(out)
            click.echo(f"Converted {source} + {codec_gguf} -> {out} ({quantization_summary(meta)}, {meta['dtype']})",
                       err=True)
            return
        from mlx_qwen_tts_convert.convert import check_output, convert_model
        from mlx_qwen_tts.hub import resolve_source
        from mlx_qwen_tts.loading import converted_meta, is_converted

        local = [source] if Path(source).expanduser().exists() else []
        check_output(out, local, overwrite=force)  # before a download (a Hub source is checked once here)
        folder = resolve_source(source)
        if is_converted(folder):
            raise click.ClickException(f"{source} is already an MLX folder; convert the Hugging Face checkpoint")
        bits = None if no_quantize else int(bits)
        convert_model(folder, out, bits=bits, group_size=group_size and int(group_size), dtype=dtype,
                      overwrite=force, progress=True)
        meta = converted_meta(out)
    click.echo(f"Converted {source} -> {out} ({quantization_summary(meta)}, {dtype})", err=True)


def quantization_summary(meta: dict) -> str:
    """What was quantized, counted from the converter's record (never claimed from the options)."""
    q, counts = meta.get("quantization"), meta.get("quantized") or {}
    if not q:
        return "unquantized"
    return (f"{q['bits']}-bit, group {q['group_size']}: {counts.get('tensors', '?')} of "
            f"{counts.get('candidates', '?')} quantizable tensors, {100 * counts.get('weight_share', 0):.1f} % "
            "of the talker and code-predictor weights")


@click.command("check-quant", cls=Command)
@click.argument("quantized", type=click.Path(path_type=Path))
@click.option("-r", "--reference", required=True, type=click.Path(path_type=Path),
              help="The float model it was made from (Hugging Face or unquantized MLX folder).")
@click.option("--frames", type=click.IntRange(min=4), default=40, show_default=True,
              help="Frames generated per gate prompt.")
@click.option("--json", "as_json", is_flag=True,
              help='Print the report as JSON (strict: snr_db is "inf" for identical audio, null when no audio '
                   "was decoded).")
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
        click.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        for part in ("talker", "predictor"):
            click.echo(f"{part:9s}: mean KL {getattr(report, part + '_kl'):.5f}, top-1 "
                       f"{100 * getattr(report, part + '_top1'):.1f} %, "
                       f"top-5 {100 * getattr(report, part + '_top5'):.1f} %")
        click.echo(f"decoded SNR: {report.snr_db:.1f} dB over {report.frames} frames (reported, not gated)")
        click.echo(f"gate (KL <= {THRESHOLDS['kl_max']}, top-1 >= {THRESHOLDS['top1_min']:.0%}, top-5 >= "
                   f"{THRESHOLDS['top5_min']:.0%}): {'PASS' if report.passed else 'FAIL'}")
    if not report.passed:
        sys.exit(1)


@click.command("create", cls=Command)
@click.option("--ref-audio", required=True, type=click.Path(path_type=Path), help="A 1-30 s recording.")
@click.option("--ref-text", callback=utf8_text, help="Its transcript (enables in-context cloning).")
@click.option("-m", "--model", required=True, help="The Base model the voice is for (folder or Hub id).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="The .safetensors file to write (a symbolic link there is replaced, not written through).")
@click.option("--force", is_flag=True, help="Replace an existing OUT (never the recording, never a model's files).")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
def voice_create(ref_audio, ref_text, model, out, force, device):
    """Encode a reference recording once and save it for `speak --voice-file`."""
    with user_errors():
        from mlx_qwen_tts.config import load_model_config
        from mlx_qwen_tts.engine.prompt import MAX_REF_TEXT_CHARS, check_text_limit
        from mlx_qwen_tts.hub import resolve_model
        from mlx_qwen_tts.loading import load_model
        from mlx_qwen_tts.voice import SAMPLE_RATE, check_voice_path, load_reference_audio, make_voice_clone, save_voice

        check_voice_path(out)  # the output and the recording are checked before any model work
        check_voice_output(out, ref_audio, force)
        if ref_text is not None and not ref_text.strip():
            raise click.ClickException("--ref-text is empty; give the recording's transcript, or leave it out")
        check_text_limit("--ref-text", ref_text, MAX_REF_TEXT_CHARS)
        wave = load_reference_audio(str(ref_audio))
        device = select_device(device)
        folder = resolve_model(model)
        check_not_model_file(out, folder)
        if load_model_config(folder).model_type != "base":
            raise click.ClickException("voices can only be made for Base models")
        tts = load_model(folder, dtype=cpu_dtype(device), codec=False)
        clone = make_voice_clone(tts, wave, ref_text, sample_rate=SAMPLE_RATE)
        save_voice(out, clone, tts)
    mode = "in-context (x-vector + reference codes)" if ref_text else "x-vector only"
    click.echo(f"Saved voice {out} ({mode})", err=True)


MODEL_CONFIG_KEYS = ("model_type", "talker_config", "decoder_config", "mlx_qwen_tts")


def holds_model(folder: Path) -> bool:
    """Whether `folder` is a model's folder: its config.json is a model configuration."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(key in config for key in MODEL_CONFIG_KEYS)


def check_voice_output(out: Path, ref_audio: Path, force: bool):
    """A voice file never replaces the recording, a model's files, or (without --force) any file."""
    from mlx_qwen_tts.paths import same_file

    if same_file(out, ref_audio):
        raise click.ClickException(f"--out {out} is the recording --ref-audio {ref_audio}; choose another name")
    for folder in {Path(os.path.realpath(out.parent)), Path(os.path.realpath(out)).parent}:  # the link's, its target's
        if holds_model(folder):
            raise click.ClickException(f"--out {out} lies in the model folder {folder}; a voice file never goes "
                                       "among a model's files: choose another folder")
    if (out.exists() or out.is_symlink()) and not force:
        raise click.ClickException(f"{out} already exists; pass --force to replace it")


def check_not_model_file(out: Path, folder: Path):
    """Nor is it one of the loaded model's files (a hard or symbolic link to one included)."""
    from mlx_qwen_tts.paths import same_file

    for path in folder.rglob("*"):
        if same_file(out, path):
            raise click.ClickException(f"--out {out} is the model's file {path}; choose another name")


voices.add_command(voice_create)


@click.group(cls=Group, hidden=True)
def voice():
    """Old name of `voices create` (kept working)."""
    click.echo("note: `voice create` is now `voices create`", err=True)


voice.add_command(voice_create)
