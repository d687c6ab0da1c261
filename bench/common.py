"""Shared by both sides of the benchmark (pure Python: it also runs in the reference venv)."""

import json
import os
import platform
import resource
import statistics
import sys
import traceback

FRAME_RATE = 12.5  # codec frames per second of audio: one frame is 80 ms
FRAME_MS = 1000 / FRAME_RATE

# The seed benchmark's texts (shared/docs/seed-benchmark.md), language "russian".
TEXTS = {
    "short": "Привет!",
    "medium": "Ниже представлен план цикла статей о том, как создать собственную модель.",
    "long": "Ниже представлен план цикла статей о том, как создать собственную модель преобразования текста "
            "в речь. Мы рассмотрим архитектуру, обучение и развертывание системы.",
}
LANGUAGE, VOICE = "russian", "vivian"
# The official generate stops on `eos_token_id`; 2151 is among the ids it always suppresses, so
# the run never stops early. Ours takes ignore_eos=True.
NEVER_EOS = 2151


def spread(values) -> dict:
    """Median and spread of repeated measurements."""
    values = sorted(values)
    return dict(median=statistics.median(values), min=values[0], max=values[-1], n=len(values))


def per_frame(stamps: list[float]) -> float:
    """Mean seconds per frame between the first and last frame timestamps of one run (steady
    state: excludes prefill and everything before the first frame)."""
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def peak_rss_gb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def write_report(report: dict, out, indent: int = 1):
    """Print a run's report as JSON and, if `out` is given, write it there (the file bench/README.md quotes)."""
    text = json.dumps(report, indent=indent)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def host_info() -> dict:
    return dict(system=platform.system(), machine=platform.machine(), cpu=_cpu_name(), cpus=os.cpu_count(),
                python=platform.python_version())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def thread_env(threads: int) -> dict:
    """Environment of a side's subprocess: every BLAS and OpenMP pool gets the same thread count
    (they read it when they load, so it must be set before the process starts)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    return env


REPLY = "@bench "  # marks reply lines: library banners may also print to stdout


class WorkerProcess:
    """The driving side of `serve`: a worker process, one JSON command per call."""

    def __init__(self, name: str, argv: list, env: dict, log, cwd):
        import subprocess

        self.name = name
        self.proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log)

    def call(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if "error" in reply:
                    raise RuntimeError(f"{self.name} worker, {op}:\n{reply['error']}")
                return reply
        raise RuntimeError(f"the {self.name} worker exited (code {self.proc.wait()}); see its log")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve(session):
    """A side's worker loop: one JSON command per stdin line (`op` names a method of `session`),
    one marked JSON reply line each. The model stays loaded between commands, so run.py can
    interleave the two sides' repetitions under the same machine load."""
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = getattr(session, cmd.pop("op"))(**cmd)
        except Exception:  # reported to run.py, which stops with it
            reply = dict(error=traceback.format_exc())
        print(REPLY + json.dumps(reply), flush=True)
