"""What is wrong with a path the user gave, in words: "does not exist" only when nothing is there."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def path_problem(path: str | os.PathLike, want: str = "file") -> str | None:
    """None if `path` is a `want` ("file": a regular file, or "folder"), else why not: missing, a
    folder, a named pipe, a device, a socket, a broken or looping symbolic link, not accessible."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        if e.errno == errno.ENOTDIR:
            return "does not exist (a part of the path is a file, not a folder)"
        return "does not exist" if e.errno == errno.ENOENT else f"cannot be accessed ({e.strerror})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return None if want == "folder" else "is a folder, not a file"
    if want == "folder":
        return "is a file, not a folder" if stat.S_ISREG(mode) else f"is {kind(mode)}, not a folder"
    return None if stat.S_ISREG(mode) else f"is {kind(mode)}, not a regular file"


def kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through symbolic or hard links); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
