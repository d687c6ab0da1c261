"""The `mlx-qwen-tts` entry point (also `python -m mlx_qwen_tts`).

Ctrl-C while the command line's modules are still being imported ends like Ctrl-C anywhere else:
`Interrupted.` and exit status 130, no traceback. On Linux, MLX's CPU float32 matmuls are several
times faster with the system OpenBLAS (bench/README.md, "OpenBLAS"): when it is installed and not
already loaded, the process re-executes itself once with it in LD_PRELOAD (before MLX is loaded).
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig

OPENBLAS_NAMES = ("openblas-pthread/libopenblas.so.0", "openblas-openmp/libopenblas.so.0", "libopenblas.so.0")


def system_openblas() -> str | None:
    """The system OpenBLAS library (Debian/Ubuntu's libopenblas0-* layout), if installed."""
    arch = sysconfig.get_config_var("MULTIARCH")
    folders = [f"/usr/lib/{arch}"] if arch else []
    for folder in (*folders, "/usr/lib64", "/usr/lib"):
        for name in OPENBLAS_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def openblas_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return "libopenblas" in f.read()
    except OSError:
        return False


def use_openblas() -> None:
    """Re-execute with the system OpenBLAS preloaded, once: the preload marks the new process, so a
    library the loader refuses never loops."""
    if sys.platform != "linux" or "libopenblas" in os.environ.get("LD_PRELOAD", "") or "mlx" in sys.modules:
        return
    library = system_openblas()
    if library is None:
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": preload})
    except OSError:
        pass  # run without it


def _interrupt(signum, frame):
    error = KeyboardInterrupt()
    error.signum = signum
    raise error


def run():
    # Until the command line's own handlers are in place (cli/common.py), SIGTERM and SIGHUP end
    # the imports like Ctrl-C does.
    terminating = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {s: signal.signal(s, _interrupt) for s in terminating}
    try:
        use_openblas()
        from mlx_qwen_tts.cli import main
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        sys.stderr.write(f"Interrupted{name}.\n")
        sys.exit(128 + signum)
    for s, handler in previous.items():
        signal.signal(s, handler)
    return main()


if __name__ == "__main__":
    run()
