"""Atomic outputs: everything is written beside its target under a hidden name that carries the
writer's PID (`.NAME.PID.tmp` for files, `.NAME.partial-PID` for folders) and renamed over the
target only once complete.

An interrupted writer removes its own temporary (SIGTERM and SIGHUP arrive as exceptions in the
CLI); a killed one (SIGKILL, power loss) cannot, so every writer first removes the temporaries
of dead processes for the same target. Errors name the user's path, never the temporary one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<file_pid>\d+)\.tmp|partial-(?P<dir_pid>\d+))$")


def temp_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_folder(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries of dead processes in `folder` (only those for target `name` if
    given); returns what was removed. Temporaries of live processes are theirs to finish."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or (name is not None and m["name"] != name):
            continue
        pid = int(m["file_pid"] or m["dir_pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _renamed(e: BaseException, temp: Path, path: Path) -> BaseException | None:
    """`e` with the temporary path replaced by the user's path, or None if it names neither."""
    old, new = str(temp), str(path)
    if isinstance(e, OSError):
        names = [e.filename, e.filename2]
        if not any(isinstance(n, str) and old in n for n in names):
            return None
        names = [n.replace(old, new) if isinstance(n, str) else n for n in names]
        return type(e)(e.errno, e.strerror, *names[:1 if names[1] is None else 2])
    if isinstance(e, ValueError) and old in str(e):
        try:
            return type(e)(str(e).replace(old, new))
        except TypeError:  # an exception class with another signature
            return ValueError(str(e).replace(old, new))
    return None


@contextlib.contextmanager
def user_paths(temp: Path, path: Path):
    """Errors raised inside name `path` where they named `temp` (or something inside it)."""
    try:
        yield
    except (OSError, ValueError) as e:
        renamed = _renamed(e, temp, path)
        if renamed is None:
            raise
        raise renamed from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path to write; on success it replaces `path` (after an fsync), on any
    failure or interruption it is removed and `path` stays as it was."""
    path = Path(path)
    remove_stale(path.parent, path.name)
    temp = temp_file(path)
    try:
        with user_paths(temp, path):
            yield temp
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp, path)  # readers see the old file or the whole new one
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def check_writable_file(path: str | os.PathLike, what: str = "") -> Path:
    """Fail before long work, not after it: not a folder, in a folder that exists and takes files."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {label}: it is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {label}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {label}: folder {folder} is not writable")
    return path
