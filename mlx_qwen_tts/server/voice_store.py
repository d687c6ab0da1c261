"""A voice store shared by replicas (`serve --voice-store DIR`, DIR on a shared folder).

Two kinds of object, the usual shape for shared state without a lock server:

- **blobs**, `blobs/<sha256>.safetensors`: a saved voice file under the hash of its bytes. A blob
  never changes, so a replica may read (or cache) it by hash and never see a stale copy.
- **name pointers**, `names/<name>.json` (`{"sha256", "mode", "ref_text", "created_at"}`), created
  only if absent: the pointer is written whole under a private temporary name, then hard-linked
  to its name, which fails if the name exists (POSIX `link`, atomic on local disks and on NFS).
  Two replicas creating one name at once: one wins (201), the other gets 409; a crash leaves at
  most a temporary behind, never a torn pointer.

Names are resolved on every use, never cached: a voice created through one replica speaks
through all of them at once, and a delete (removing the pointer) is seen by all. Blobs are not
removed on delete (another name may share one; they are small); a replica never needs them gone.

`FolderStore` is the storage under `SharedVoiceRegistry`; an object store would implement the same
six methods (S3: `PUT names/<name>.json` with `If-None-Match: *` for `create_pointer`, and a local
cache by hash for `blob_path`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

from mlx_qwen_tts.server.registry import NAME, check_name, read_voices


def _private_temp(folder: Path) -> Path:
    """A temporary name no other writer (on any host sharing the folder) can pick."""
    return folder / f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FolderStore:
    """Blobs and name pointers in a folder (local, NFS or SMB)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs, self.names = self.root / "blobs", self.root / "names"
        for folder in (self.blobs, self.names):
            folder.mkdir(parents=True, exist_ok=True)

    def read_pointer(self, name: str) -> dict | None:
        try:
            return json.loads((self.names / f"{name}.json").read_bytes())
        except FileNotFoundError:
            return None

    def list_pointers(self) -> list[str]:
        return sorted(p.stem for p in self.names.glob("*.json") if NAME.match(p.stem))

    def create_pointer(self, name: str, pointer: dict) -> bool:
        """Create `names/<name>.json` only if it does not exist; False if it does."""
        temp = _private_temp(self.names)
        try:
            _write_synced(temp, json.dumps(pointer).encode())
            os.link(temp, self.names / f"{name}.json")  # no-replace: EEXIST if the name is taken
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def delete_pointer(self, name: str) -> bool:
        try:
            (self.names / f"{name}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def put_blob(self, digest: str, source: Path) -> None:
        target = self.blob_path(digest)
        if target.exists():
            return
        temp = _private_temp(self.blobs)
        try:
            _write_synced(temp, source.read_bytes())
            os.replace(temp, target)  # same bytes as any other writer's: replacing is harmless
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"{digest}.safetensors"


class SharedVoiceRegistry:
    """The voice registry's interface (as `VoiceRegistry`) over a store shared by replicas."""

    def __init__(self, store: FolderStore, engine, model, log=None):
        self.store, self.engine, self.model, self.log = store, engine, model, log

    @property
    def enabled(self) -> bool:
        return self.model.config.model_type == "base"

    def load(self) -> None:
        """Nothing to read ahead: names are resolved on use."""

    @staticmethod
    def _entry(name: str, pointer: dict) -> dict:
        return {"id": name, "name": name, "mode": pointer["mode"], "ref_text": pointer.get("ref_text"),
                "created_at": pointer["created_at"]}

    def list(self) -> list[dict]:
        entries = []
        for name in self.store.list_pointers():
            pointer = self.store.read_pointer(name)  # None if deleted since the listing
            if pointer is not None:
                entries.append(self._entry(name, pointer))
        return entries

    def names(self) -> list[str]:
        return self.store.list_pointers()

    def path(self, name: str) -> Path | None:
        if not NAME.match(name):
            return None
        pointer = self.store.read_pointer(name)
        return self.store.blob_path(pointer["sha256"]) if pointer is not None else None

    def create(self, name: str, wave, ref_text: str | None) -> dict:
        """Encode `wave` (float32 mono 24 kHz, already checked), store it, then claim `name`."""
        from mlx_qwen_tts.voice import make_voice_clone, save_voice

        check_name(name)
        if self.store.read_pointer(name) is not None:
            raise FileExistsError(f"voice {name!r} already exists; delete it first")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mlx-qwen-tts-voice-") as folder:
            local = Path(folder) / "voice.safetensors"
            self.engine.call_aside(lambda: save_voice(local, make_voice_clone(self.model, wave, ref_text),
                                                      self.model)).result()
            digest = hashlib.sha256(local.read_bytes()).hexdigest()
            self.store.put_blob(digest, local)
        pointer = {"sha256": digest, "mode": "in_context" if ref_text else "x_vector", "ref_text": ref_text,
                   "created_at": int(time.time())}
        if not self.store.create_pointer(name, pointer):  # another replica claimed it meanwhile
            raise FileExistsError(f"voice {name!r} already exists; delete it first")
        if self.log:
            self.log.info("voice %s registered in the shared store (%s, %.2f s, blob %s)", name, pointer["mode"],
                          time.perf_counter() - started, digest[:12])
        return self._entry(name, pointer)

    def delete(self, name: str) -> bool:
        return self.store.delete_pointer(check_name(name))

    def import_folder(self, folder: Path) -> list[str]:
        """Add the voices of a `--voices-dir` folder (`<name>.safetensors`) whose names the store
        does not have yet; a file that is not a voice for this model is skipped. Returns the names."""
        added = []
        skip = lambda name: self.store.read_pointer(name) is not None  # noqa: E731
        for name, path, clone in read_voices(folder, self.engine, self.model, self.log, skip):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            self.store.put_blob(digest, path)
            pointer = {"sha256": digest, "mode": "in_context" if clone.ref_text else "x_vector",
                       "ref_text": clone.ref_text, "created_at": int(path.stat().st_mtime)}
            if self.store.create_pointer(name, pointer):
                added.append(name)
        return added
