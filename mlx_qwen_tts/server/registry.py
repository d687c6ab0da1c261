"""Registered voices (Base models): a reference recording encoded once into a saved voice file.

Each voice is `<voices-dir>/<name>.safetensors` (the format of `mlx-qwen-tts voice create`), so
the folder is the registry: it is read again at start, and a voice survives a restart. Names are
plain (`[A-Za-z0-9_-]{1,64}`, the whole name), which keeps every path inside the folder.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # \Z, not $: "$" also matches before a final newline
SUFFIX = ".safetensors"


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError("voice name must be 1-64 letters, digits, '_' or '-' (no paths)")
    return name


def read_voices(folder: Path, engine, model, log=None, skip=lambda name: False):
    """(name, path, clone) for each `<name>.safetensors` in `folder` that is a voice for this model
    (loaded beside generation); other files are skipped, logged."""
    from mlx_qwen_tts.voice import load_voice

    for path in sorted(Path(folder).glob(f"*{SUFFIX}")):
        name = path.name[:-len(SUFFIX)]
        if not NAME.match(name) or skip(name):
            continue
        try:
            clone = engine.call_aside(load_voice, path, model).result()
        except (ValueError, OSError) as e:
            if log:
                log.warning("skipping voice %s: %s", path, e)
            continue
        yield name, path, clone


class VoiceRegistry:
    """Voices in a folder; `engine.call_aside` runs the MLX work (encoding, checks) beside generation."""

    def __init__(self, folder: str | os.PathLike | None, engine, model, log=None):
        self.folder = Path(folder) if folder is not None else None
        self.engine, self.model, self.log = engine, model, log
        self._lock = threading.Lock()
        self._voices: dict[str, dict] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.folder is not None and self.model.config.model_type == "base"

    def load(self) -> None:
        """Read the folder; a file that is not a usable voice for this model is skipped (logged)."""
        if not self.enabled:
            return
        for name, path, clone in read_voices(self.folder, self.engine, self.model, self.log):
            self._voices[name] = self._entry(name, path, clone.ref_text)

    @staticmethod
    def _entry(name: str, path: Path, ref_text: str | None) -> dict:
        return {"id": name, "name": name, "mode": "in_context" if ref_text else "x_vector",
                "ref_text": ref_text, "created_at": int(path.stat().st_mtime)}

    def list(self) -> list[dict]:
        with self._lock:
            return [dict(v) for _, v in sorted(self._voices.items()) if not v.get("pending")]

    def path(self, name: str) -> Path | None:
        with self._lock:
            entry = self._voices.get(name)
            return self.folder / f"{name}{SUFFIX}" if entry and not entry.get("pending") else None

    def create(self, name: str, wave, ref_text: str | None) -> dict:
        """Encode `wave` (float32 mono 24 kHz, already checked) and save it as voice `name`."""
        from mlx_qwen_tts.voice import make_voice_clone, save_voice

        check_name(name)
        path = self.folder / f"{name}{SUFFIX}"
        with self._lock:
            if name in self._voices:
                raise FileExistsError(f"voice {name!r} already exists; delete it first")
            self._voices[name] = {"pending": True}  # reserves the name while encoding

        def encode():
            clone = make_voice_clone(self.model, wave, ref_text)
            save_voice(path, clone, self.model)

        try:
            started = time.perf_counter()
            self.engine.call_aside(encode).result()
        except BaseException:
            with self._lock:
                self._voices.pop(name, None)
            raise
        entry = self._entry(name, path, ref_text)
        with self._lock:
            self._voices[name] = entry
        if self.log:
            self.log.info("voice %s registered (%s, %.2f s)", name, entry["mode"], time.perf_counter() - started)
        return dict(entry)

    def delete(self, name: str) -> bool:
        with self._lock:
            entry = self._voices.get(name)
            if entry is None or entry.get("pending"):
                return False
            del self._voices[name]
        (self.folder / f"{name}{SUFFIX}").unlink(missing_ok=True)
        return True

    def names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, v in self._voices.items() if not v.get("pending"))
