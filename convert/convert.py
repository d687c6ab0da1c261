"""Hugging Face Qwen3-TTS snapshot -> self-contained MLX folder.

Streams tensor by tensor (mx.load is lazy), quantizes the talker and code predictor with
mlx_qwen_tts.quantize, writes the codec in float32 and MLX layout, and saves shards as it goes,
so peak memory stays near one shard. The output appears atomically: it is written to a
temporary sibling folder and renamed only once complete and verified.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx

from mlx_qwen_tts.atomic import MIN_FREE_BYTES, check_free_space, pid_alive, remove_stale, temp_folder, user_paths
from mlx_qwen_tts.tokenizer import BUILT_FILE, TextTokenizer
from mlx_qwen_tts.config import load_model_config
from mlx_qwen_tts.loading import (FORMAT_KEY, FORMAT_VERSION, is_converted, load_model, map_hf_codec_weights,
                                  map_hf_model_weights, read_safetensors)
from mlx_qwen_tts.quantize import quantizable, quantize_tensor

SHARD_BYTES = 1 << 30  # pending output stays in memory until its shard is written
COPIED_FILES = ["generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                "preprocessor_config.json", "speech_tokenizer/config.json",
                "speech_tokenizer/preprocessor_config.json"]
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
GROUP_SIZES, DEFAULT_GROUP_SIZES = (32, 64, 128), (64, 32)


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever SHARD_BYTES are pending."""

    def __init__(self, folder: Path):
        self.folder, self.pending, self.size, self.files, self.weight_map = folder, {}, 0, [], {}

    def add(self, name: str, array: mx.array):
        mx.eval(array)
        self.pending[name] = array
        self.size += array.nbytes
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        name = f"model-{len(self.files) + 1:05d}.safetensors"
        try:
            mx.save_safetensors(str(self.folder / name), self.pending, metadata={"format": "mlx"})
        except RuntimeError as e:  # MLX says "[write] Unable to write N bytes" without the reason
            full = shutil.disk_usage(self.folder).free < self.size
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                          f"cannot write ({e})", str(self.folder / name)) from None
        self.files.append(name)
        self.weight_map.update({k: name for k in self.pending})
        self.pending, self.size = {}, 0

    def finish(self):
        self.flush()
        if len(self.files) == 1:
            os.replace(self.folder / self.files[0], self.folder / "model.safetensors")
            return
        renamed = {}
        for i, old in enumerate(self.files, start=1):
            new = f"model-{i:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(self.folder / old, self.folder / new)
            renamed[old] = new
        index = {"weight_map": {k: renamed[v] for k, v in sorted(self.weight_map.items())}}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def progress_bar(items, enabled, desc):
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="tensor")


def choose_group_size(widths: dict, requested: int | None) -> int:
    """`requested`, or by default 64 (32 where 64 does not divide a width). It must divide the width of
    every quantizable weight: one left in float would make the recorded quantization untrue."""
    def divides(g):
        return all(w % g == 0 for w in widths.values())

    group = requested or next((g for g in DEFAULT_GROUP_SIZES if divides(g)), DEFAULT_GROUP_SIZES[0])
    odd = sorted((k, w) for k, w in widths.items() if w % group)
    if odd:
        fits = [str(g) for g in GROUP_SIZES if divides(g)]
        hint = f"use --group-size {' or '.join(fits)}" if fits else "convert with --no-quantize"
        raise ValueError(f"group size {group} does not divide the width of {len(odd)} of the {len(widths)} "
                         f"quantizable weights (e.g. {odd[0][0]}: {odd[0][1]}); {hint}")
    return group


def convert_model(source: str | Path, out: str | Path, *, bits: int | None = 8, group_size: int | None = None,
                  dtype: str = "bfloat16", overwrite: bool = False, progress: bool = False) -> Path:
    """Convert a Hugging Face snapshot folder. bits=None keeps the talker unquantized; group_size None
    is 64, or 32 where 64 does not divide a quantizable weight's width (see `choose_group_size`)."""
    source, out = Path(source), Path(out)
    if bits not in (None, 4, 8):
        raise ValueError(f"bits must be 4 or 8 (or None for no quantization), got {bits}")
    if group_size not in (None, *GROUP_SIZES):
        raise ValueError(f"group size must be 32, 64 or 128, got {group_size}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    check_output(out, [source], overwrite=overwrite)
    config_json = json.loads((source / "config.json").read_text(encoding="utf-8")) \
        if (source / "config.json").is_file() else None
    config = load_model_config(source)  # validates the whole configuration before any work
    encoders = config.model_type == "base"  # only voice cloning uses them
    needed = sum(f.stat().st_size for f in source.rglob("*.safetensors"))  # about the output's size
    return publish(out, lambda tmp: _write(source, tmp, config_json, bits, group_size, DTYPES[dtype], dtype,
                                           progress, encoders), overwrite=overwrite, needed=needed)


def is_our_output(folder: Path) -> bool:
    """An earlier output of this converter: a real folder whose config.json has our marker."""
    try:
        return folder.is_dir() and not folder.is_symlink() and is_converted(folder)
    except (OSError, ValueError):  # unreadable or not JSON: not ours
        return False


def check_output(out: Path, sources: list, *, overwrite: bool):
    """Refuse, before any work, an output that is, holds or lies inside a source, and one that
    exists unless `overwrite` is set and it is an earlier conversion (the only thing --force
    deletes: never a folder this converter did not make)."""
    _restore_replaced(out)
    target = out.resolve()
    for source in sources:
        src = Path(source).expanduser().resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            where = "is" if target == src else "lies inside" if target.is_relative_to(src) else "holds"
            raise ValueError(f"the output {out} {where} the source {source}; write it to another folder")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (--force) to replace it")
        if not is_our_output(out):
            raise FileExistsError(f"{out} exists and is not an mlx-qwen-tts conversion (no {FORMAT_KEY!r} in its "
                                  "config.json); --force replaces only those: move it away or choose another "
                                  "output folder")


def _restore_replaced(out: Path):
    """A run killed while swapping folders leaves the previous output aside: put it back if the
    new one never arrived, else remove it."""
    for aside in out.parent.glob(f".{glob.escape(out.name)}.replaced-*"):
        pid = aside.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and int(pid) != os.getpid():
            if out.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(aside, out)


def publish(out: Path, build, *, overwrite: bool = False, needed: int = MIN_FREE_BYTES) -> Path:
    """Run `build(tmp)` on a temporary sibling folder, load the result strictly, then rename it to
    `out`: a failure or interruption at any point leaves no partial folder behind, and an earlier
    output is replaced only once the new one is complete. Folders made for `out` are removed again
    on failure. A disk with less than `needed` bytes free is refused before any work."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    check_free_space(next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path(".")), out,
                     max(needed, MIN_FREE_BYTES))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name)
    tmp = temp_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    with user_paths(tmp, out):
        try:
            tmp.mkdir()
            build(tmp)
            mx.clear_cache()  # the written tensors' buffers, before the verification load
            load_model(tmp, codec=True)  # strict round trip before the folder becomes visible
            if out.exists() or out.is_symlink():
                if not overwrite or not is_our_output(out):  # it appeared since the check before the work
                    raise FileExistsError(f"{out} appeared meanwhile (another process?); it was left as it is")
                aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
                os.replace(out, aside)
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(aside, out)
                    raise
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in made:  # deepest first; only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
    return out


def write_config(folder: Path, config_json: dict, *, dtype: str, quantization: dict | None, source: dict,
                 quantized: dict | None = None):
    """config.json with the converted-folder marker that `load_model` reads, and the built text
    tokenizer (from the folder's tokenizer files, written before this) for a fast load. `quantized`
    records what the quantization covered (tensors, candidates, weight_share)."""
    TextTokenizer(folder).save(folder / BUILT_FILE)
    meta = {"format_version": FORMAT_VERSION, "dtype": dtype, "quantization": quantization, "source": source}
    if quantized is not None:
        meta["quantized"] = quantized
    config_json = {**config_json, FORMAT_KEY: meta}
    (folder / "config.json").write_text(json.dumps(config_json, indent=2, ensure_ascii=False))


def _write(source, tmp, config_json, bits, group_size, dtype, dtype_name, progress, encoders):
    """Write the converted weights; `encoders` False leaves out the voice-clone encoders (speaker_encoder.*,
    codec_encoder.*), which only a Base model uses."""
    writer = ShardWriter(tmp)
    weights = map_hf_model_weights(read_safetensors(source / "model.safetensors"), source / "model.safetensors")
    if not encoders:
        weights = {k: v for k, v in weights.items() if not k.startswith("speaker_encoder.")}
    widths = {k: v.shape[-1] for k, v in weights.items() if quantizable(k, v.shape)}
    if bits:
        group_size = choose_group_size(widths, group_size)
    sizes = {k: v.size for k, v in weights.items() if k.startswith(("talker.", "code_predictor."))}
    quantized = quantized_size = 0
    for name in progress_bar(sorted(weights), progress, "talker"):
        w = weights.pop(name)  # drop each source tensor once written: memory stays near one shard
        if mx.issubdtype(w.dtype, mx.floating) and not name.startswith("speaker_encoder."):
            w = w.astype(dtype)
        if bits and name in widths:
            for k, v in quantize_tensor(name, w, bits, group_size).items():
                writer.add(k, v)
            quantized, quantized_size = quantized + 1, quantized_size + w.size
        else:
            writer.add(name, w)
    st_path = source / "speech_tokenizer" / "model.safetensors"
    codec = map_hf_codec_weights(read_safetensors(st_path), st_path)
    if not encoders:
        codec = {k: v for k, v in codec.items() if not k.startswith("codec_encoder.")}
    for name in progress_bar(sorted(codec), progress, "codec"):
        writer.add(name, codec.pop(name))
    writer.finish()
    (tmp / "speech_tokenizer").mkdir()
    for rel in COPIED_FILES:
        if (source / rel).is_file():
            shutil.copyfile(source / rel, tmp / rel)
    quantization = {"group_size": group_size, "bits": bits, "mode": "affine"} if bits and quantized else None
    counts = {"tensors": quantized, "candidates": len(widths),
              "weight_share": quantized_size / max(sum(sizes.values()), 1)}
    write_config(tmp, config_json, dtype=dtype_name, quantization=quantization, source={"kind": "huggingface"},
                 quantized=counts if bits else None)
