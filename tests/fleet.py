"""A fleet on loopback for the scale-out tests: `serve` replicas and one real HAProxy whose
configuration is deploy/haproxy.cfg with the addresses, ports and queue depth replaced.
Every process is started and stopped by its pid."""

from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import stop_process
from prometheus_client.parser import text_string_to_metric_families
from test_server import wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CFG = ROOT / "deploy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """`mlx-qwen-tts serve` as one replica; `start()` returns at once, `wait_ready()` waits."""

    def __init__(self, name: str, model: Path, args: list, folder: Path):
        self.name, self.model, self.args, self.folder = name, model, [str(a) for a in args], folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Replica":
        self.starts += 1
        self.log_path = self.folder / f"{self.name}-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlx_qwen_tts", "serve", "--model", str(self.model), "--port", str(self.port),
                 "--device", "cpu", "--replica-id", self.name, *self.args], stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout=120.0) -> "Replica":
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.running:
                raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def metrics(self) -> dict:
        """Every sample as {(name, sorted label items): value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        return stop_process(self.proc) if self.proc is not None else None


def render_config(template: str, port: int, stats_socket: Path, replicas: list[Replica], max_batch: int,
                  queue_depth: int) -> str:
    """deploy/haproxy.cfg for this fleet: its own bind, stats socket, servers and queue depth."""
    out, backend = [], None
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("backend "):
            backend = stripped.split()[1]
        if stripped.startswith("server "):
            if "server" in (out[-1].strip().split()[:1] if out else []):
                continue  # the template's servers, replaced once per backend
            limit = f" maxconn {max_batch}" if backend == "tts" else ""
            out += [f"    server {r.name} 127.0.0.1:{r.port}{limit}" for r in replicas]
            continue
        line = re.sub(r"^(\s*)bind \S+", rf"\1bind 127.0.0.1:{port}", line)
        line = re.sub(r"stats socket \S+", f"stats socket {stats_socket}", line)
        line = re.sub(r"\{ queue\((\w+)\) ge \d+ \}", rf"{{ queue(\1) ge {queue_depth} }}", line)
        out.append(line)
    return "\n".join(out) + "\n"


class HAProxy:
    def __init__(self, folder: Path, replicas: list[Replica], max_batch: int, queue_depth: int):
        if shutil.which("haproxy") is None:
            raise RuntimeError("these tests need HAProxy: apt-get install haproxy (tests/run.sh does)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = folder / "haproxy.sock"
        self.cfg = folder / "haproxy.cfg"
        self.cfg.write_text(render_config(DEPLOY_CFG.read_text(), self.port, self.socket, replicas, max_batch,
                                          queue_depth))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects the rendered config:\n{check.stdout}{check.stderr}")
        self.log_path = folder / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.socket.exists, 10, "HAProxy's stats socket")

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (its stats socket), and the answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    def stats(self) -> dict:
        """`show stat` as {(backend, server): row}."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {(row["pxname"], row["svname"]): row for row in rows}

    def server_up(self, name: str, backend: str = "tts") -> bool:
        return self.stats()[(backend, name)]["status"] == "UP"

    def queued(self, backend: str = "tts") -> int:
        return int(self.stats()[(backend, "BACKEND")]["qcur"])

    def stop(self) -> int:
        return stop_process(self.proc, 10)
