"""Atomic outputs: everything is written beside its target under a hidden name that carries the
writer's PID (`.NAME.PID.tmp` for files, `.NAME.partial-PID` for folders) and renamed over the
target only once complete.

An interrupted writer removes its own temporary (SIGTERM and SIGHUP arrive as exceptions in the
CLI); a killed one (SIGKILL, power loss) cannot, so every writer first removes the temporaries
of dead processes for the same target. Errors name the user's path, never the temporary one.

A target name too long to take the temporary's decoration (a legal 255-byte name) gets a
shortened temporary: a prefix of the name, `~` and a hash of the whole name (`short_name`).
An existing target that is a symbolic link is replaced by the new file: the link is replaced,
never written through, so whatever it pointed to stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<file_pid>\d+)\.tmp|partial-(?P<dir_pid>\d+))$")


DECORATION_BYTES = 24  # the most a temporary adds to a name: "." + ".partial-" + a 10-digit PID + slack
HASH_CHARS = 16


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) that `folder`'s file system takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def short_name(name: str, limit: int) -> str:
    """`name` if it fits in `limit` bytes, else its longest prefix that leaves room for `~` and a
    hash of the whole name: stable, so that every process shortens a name the same way."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:HASH_CHARS]
    prefix = raw[:max(limit - HASH_CHARS - 1, 0)].decode("utf-8", "ignore")  # whole characters only
    return f"{prefix}~{digest}"


def _temp_stem(path: Path) -> str:
    return short_name(path.name, name_max(path.parent) - DECORATION_BYTES)


def temp_file(path: Path) -> Path:
    return path.with_name(f".{_temp_stem(path)}.{os.getpid()}.tmp")


def temp_folder(path: Path) -> Path:
    return path.with_name(f".{_temp_stem(path)}.partial-{os.getpid()}")


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
        if not m or (name is not None and m["name"] not in (name, _temp_stem(folder / name))):
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
            try:
                yield temp
                with open(temp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(temp, path)  # readers see the old file or the whole new one; a link is replaced
            except OSError as e:
                if e.filename is None and e.errno is not None:  # a failed write names no file: name ours
                    raise type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
                raise
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


MIN_FREE_BYTES = 1 << 20  # below this, a write is refused before the work that would fill it


def check_writable_file(path: str | os.PathLike, what: str = "") -> Path:
    """Fail before long work, not after it: not a folder, a name the file system takes, in a
    folder that exists, takes files and has at least MIN_FREE_BYTES free."""
    from mlx_qwen_tts.paths import path_problem

    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {label}: it is a folder")
    if path.exists() and not path.is_file():
        raise ValueError(f"cannot write {label}: it {path_problem(path)}")
    folder = path.parent
    problem = path_problem(folder, "folder")
    if problem:
        raise FileNotFoundError(f"cannot write {label}: folder {folder} {problem}")
    limit = name_max(folder)
    if len(os.fsencode(path.name)) > limit:
        raise OSError(errno.ENAMETOOLONG, f"the name is {len(os.fsencode(path.name))} bytes long; this file "
                                          f"system takes at most {limit}", str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {label}: folder {folder} is not writable")
    check_free_space(folder, path)
    return path


def check_free_space(folder: Path, path: Path, needed: int = MIN_FREE_BYTES) -> None:
    """An OSError (ENOSPC) naming `path` unless `folder`'s disk has `needed` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise OSError(errno.ENOSPC, f"no space left on its disk ({_size(free)} free; at least {_size(needed)} "
                                    "needed)", str(path))


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n // 1024} KiB"
