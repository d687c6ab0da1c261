"""Shared fixtures: the tiny official models and reference dumps built by tests/reference/.

They are built once (3 CPU-minutes; 3-8 min on 2 shared cores; progress as `[fixtures]` lines) by the
official qwen-tts in .venv-ref and cached in tests/.fixtures; a change to tests/reference/ rebuilds
them. `python tests/conftest.py` builds them outside pytest (tests/run.sh does, before pytest). A
missing reference environment is an error, never a skip: every parity claim rests on it.
"""

import collections
import contextlib
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "reference"
FIXTURES = Path(os.environ.get("MLX_QWEN_TTS_FIXTURES", ROOT / "tests" / ".fixtures"))
REF_PYTHON = Path(os.environ.get("MLX_QWEN_TTS_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
VARIANTS = ["customvoice_0b6", "customvoice_1b7", "voicedesign_1b7", "base_0b6"]


def _harness_digest():
    h = hashlib.sha256()
    for path in sorted(REFERENCE.glob("*.py")) + [REFERENCE / "requirements.txt"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


CASE_LINE = re.compile(r"\s+\w+/\w+: ")
_PYTEST_CONFIG = None  # set while pytest runs: progress lines then bypass its output capture


def pytest_configure(config):
    global _PYTEST_CONFIG
    _PYTEST_CONFIG = config
    device = os.environ.get("MLX_QWEN_TTS_DEVICE")  # cpu | gpu: the device the suite runs on (default: MLX's)
    if device:
        import mlx.core as mx

        if device not in ("cpu", "gpu") or (device == "gpu" and not mx.is_available(mx.gpu)):
            raise pytest.UsageError(f"MLX_QWEN_TTS_DEVICE={device}: this MLX offers "
                                    f"{'cpu and gpu' if mx.is_available(mx.gpu) else 'cpu only'}")
        mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)


def _progress(line: str):
    capman = _PYTEST_CONFIG.pluginmanager.getplugin("capturemanager") if _PYTEST_CONFIG else None
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(line, file=sys.stderr, flush=True)


def ensure_fixtures():
    """The fixtures folder, built first if missing or stale (its progress streamed as `[fixtures]` lines)."""
    stamp = FIXTURES / "stamp.json"
    digest = _harness_digest()
    if stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest:
        return FIXTURES
    if not REF_PYTHON.exists():
        raise RuntimeError(
            f"the official reference environment is missing ({REF_PYTHON}); "
            "run `bash tests/run.sh`, which creates it and builds the fixtures")
    tmp = FIXTURES.with_name(FIXTURES.name + ".tmp")
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    start = time.monotonic()
    _progress(f"[fixtures] building the official reference fixtures in {FIXTURES} (3-8 min, once)")
    proc = subprocess.Popen([str(REF_PYTHON), "-u", str(REFERENCE / "build_fixtures.py"), str(tmp)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, tail = queue.Queue(), collections.deque(maxlen=60)
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=30)
        except queue.Empty:  # the builder prints a variant's cases only once all are dumped
            _progress(f"[fixtures] {time.monotonic() - start:5.0f} s still building")
            continue
        if line is None:
            break
        tail.append(line)
        if CASE_LINE.match(line):  # one line per reference case ("  variant/case: ...")
            _progress(f"[fixtures] {time.monotonic() - start:5.0f} s {line.strip()}")
    if proc.wait() != 0:
        raise RuntimeError("building the reference fixtures failed:\n" + "".join(tail))
    (tmp / "stamp.json").write_text(json.dumps({"digest": digest}))
    subprocess.run(["rm", "-rf", str(FIXTURES)], check=True)
    tmp.rename(FIXTURES)
    _progress(f"[fixtures] done in {time.monotonic() - start:.0f} s")
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir():
    return ensure_fixtures()


@pytest.fixture(scope="session")
def model_dir(fixtures_dir):
    def get(variant):
        return fixtures_dir / "models" / variant
    return get


@pytest.fixture(scope="module")
def models(model_dir):
    """variant -> the fixture model (float32, with its codec), loaded once per test module."""
    import mlx.core as mx
    from mlx_qwen_tts.loading import load_model
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = load_model(model_dir(variant), dtype=mx.float32)
        return cache[variant]
    return get


def load_cases(fixtures_dir, variant):
    """[(case name, case args, dict of reference arrays)] for one variant."""
    folder = fixtures_dir / "dumps" / variant
    meta = json.loads((folder / "cases.json").read_text())
    return [(name, args, dict(np.load(folder / f"{name}.npz"))) for name, args in meta.items()]


class ServerProcess:
    """`python -m mlx_qwen_tts serve` on a free loopback port, its log in a file."""

    def __init__(self, model, *args, log_path, env=None, ready_timeout=120.0):
        import socket
        import time
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_qwen_tts", "serve", "--model", str(model), "--port", str(self.port),
             "--device", "cpu", *map(str, args)], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server was not ready within {ready_timeout} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit status (killed after `timeout`)."""
        self._log.close()
        return stop_process(self.proc, timeout)


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM `proc` (by its pid), then its exit status (killed after `timeout`)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(model_dir, *serve_args) -> a running ServerProcess, stopped after the module."""
    servers = []

    def start(model, *args, **kwargs):
        server = ServerProcess(model, *args, log_path=tmp_path_factory.mktemp("server") / "log.txt", **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Selenium and the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()):
        raise RuntimeError("the browser tests need Debian's chromium and chromium-driver "
                           "(tests/run.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=900,640"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # OpenBLAS preloaded into chromium crashes it
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


if __name__ == "__main__":  # tests/run.sh: build (or confirm) the fixtures with their progress shown
    ensure_fixtures()
