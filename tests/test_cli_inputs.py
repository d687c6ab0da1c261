"""No traceback for any user input, and bounded reading (README, Reliability): standard input and --file
read in chunks up to a limit, Ctrl-C while reading or importing, text that is not UTF-8 or only invisible,
out-of-range options, absurd or inconsistent model configs, strict check-quant JSON, messages that say
what is wrong with a path, and the OpenBLAS preload. Every case is a real CLI process."""

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from test_cli import REPO as HUB_ID  # noqa: F401
from test_cli import mlx_model  # noqa: F401 (a fixture)
from test_cli_nothing_lost import cli, error_line

from mlx_qwen_tts.__main__ import system_openblas

TEXT = "Hello world."
ROOT = Path(__file__).resolve().parent.parent


def speak(tmp_path, *args, **kwargs):
    """`speak` on a model that does not exist: an error about anything else came before model work."""
    return cli("speak", *args, "--model", tmp_path / "no-model", "--out", tmp_path / "x.wav", **kwargs)


# -- standard input and --file: bounded, interruptible ------------------------------------------------

def test_endless_standard_input_and_file_are_refused_at_the_limit(tmp_path):
    with open("/dev/zero", "rb") as zero:
        assert "standard input holds more than 10 MB of text" in error_line(speak(tmp_path, "-", stdin=zero))
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        assert "standard input holds more than 10 MB" in error_line(speak(tmp_path, "-", stdin=yes.stdout))
    finally:
        yes.kill()
        yes.wait()
    assert "--file /dev/zero holds more than 10 MB" in error_line(speak(tmp_path, "--file", "/dev/zero"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a pipe is read like a file (process substitution: --file <(...))
    writer = subprocess.Popen(["sh", "-c", f"yes > {fifo}"])
    try:
        assert f"--file {fifo} holds more than 10 MB" in error_line(speak(tmp_path, "--file", fifo))
    finally:
        writer.kill()
        writer.wait()


def test_closed_standard_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlx_qwen_tts", "speak", "-", "--out", str(tmp_path / "x.wav")],
                          capture_output=True, preexec_fn=lambda: os.close(0))
    assert "standard input is closed" in error_line(proc)


def _blocked_reading_stdin(pid: int) -> bool:
    """Whether the process sits in read(0, ...) (its current system call, from /proc)."""
    read = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    try:
        return read is not None and Path(f"/proc/{pid}/syscall").read_text().split()[:2] == [read, "0x0"]
    except OSError:
        return False


def _interrupt_while_reading(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "mlx_qwen_tts", *map(str, args)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 60
        while not _blocked_reading_stdin(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "never read standard input"
            time.sleep(0.05)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stderr.decode(), maps


def test_ctrl_c_while_reading_standard_input(tmp_path):
    code, stderr, _ = _interrupt_while_reading(["speak", "-", "--model", tmp_path / "m", "--out", tmp_path / "x.wav"])
    assert code == 130 and stderr.strip() == "Interrupted.", stderr


# Simulates Ctrl-C arriving while `module` is being imported, then starts the console script's entry point.
INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys
interrupted, signum = sys.argv[1].split("/")
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == interrupted:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, signum))
        return None
sys.meta_path.insert(0, Interrupt())
module, function = sys.argv[2].split(":")
sys.argv = ["mlx-qwen-tts", *sys.argv[3:]]
sys.exit(getattr(__import__(module, fromlist=[function]), function)())
"""


@pytest.mark.parametrize("module", ["click", "mlx.core"])  # the command line's imports; a command's own
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_imports(mlx_model, tmp_path, module, sig):
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["mlx-qwen-tts"]
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, f"{module}/{sig}", entry, "speak", TEXT,
                           "--model", mlx_model, "--out", tmp_path / "x.wav"], capture_output=True, text=True,
                          timeout=120)
    signum = getattr(signal, sig)
    said = "Interrupted." if sig == "SIGINT" else f"Interrupted ({sig})."
    assert proc.returncode == 128 + signum and proc.stderr.strip() == said, proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- text and option values ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", [None, "--instruct", "--ref-text", "--voice", "--language"])
def test_invalid_utf8_in_the_arguments_is_one_line(tmp_path, option):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv
    args = [bad] if option is None else [TEXT, option, bad]
    line = error_line(speak(tmp_path, *args))
    assert f"{option or 'TEXT'} is not UTF-8 text (byte 0xe9 at character 3)" in line
    line = error_line(cli("voices", "create", "--ref-audio", tmp_path / "r.wav", "--ref-text", bad, "-m", "x", "-o",
                          tmp_path / "v.safetensors"))
    assert "--ref-text is not UTF-8 text" in line


@pytest.mark.parametrize("args, needle", [
    (["\u200b\u200d\ufeff\u2060"], "text has only invisible characters"),
    ([TEXT, "--language", ""], "--language is empty"),
    ([TEXT, "--top-k", 2 ** 31], "--top-k must be an integer in [0, 2147483647]"),
    ([TEXT, "--max-seconds", "1e308"], "--max-seconds must be a finite number in (0, 86400]"),
])
def test_values_that_used_to_crash_are_one_line(tmp_path, args, needle):
    assert needle in error_line(speak(tmp_path, *args))


def test_largest_values_are_accepted(mlx_model, tmp_path):
    proc = cli("speak", TEXT, "--model", mlx_model, "--out", tmp_path / "x.wav", "--device", "cpu",
               "--top-k", 2 ** 31 - 1, "--max-seconds", 86400, "--seed", 1)
    assert proc.returncode == 0, proc.stderr


# -- paths that exist but are not what is wanted ------------------------------------------------------

def test_paths_that_exist_are_not_said_to_be_missing(tmp_path):
    fifo, folder, loop = tmp_path / "fifo", tmp_path / "folder", tmp_path / "loop"
    os.mkfifo(fifo)
    folder.mkdir()
    loop.symlink_to(loop)
    model = ["--out", tmp_path / "x.wav", "--model"]
    line = error_line(cli("speak", TEXT, *model, fifo))
    assert line.endswith(f"--model {fifo} is a named pipe (FIFO), not a folder")
    assert error_line(cli("speak", TEXT, *model, loop)).endswith(f"--model {loop} is a symbolic link loop")
    assert error_line(speak(tmp_path, "--file", folder)).endswith(f"--file {folder}: it is a folder, not a file")
    assert error_line(speak(tmp_path, "--file", loop)).endswith("it is a symbolic link loop")
    line = error_line(cli("voices", "create", "--ref-audio", folder, "-m", tmp_path / "m", "-o",
                          tmp_path / "v.safetensors"))
    assert line.endswith(f"reference audio {folder} is a folder, not a file")
    line = error_line(cli("speak", TEXT, "--out", fifo.with_suffix(".wav") / "x.wav", "--model", tmp_path / "m"))
    assert "does not exist" in line  # and truly so


# -- model configurations -----------------------------------------------------------------------------

def _config_only(mlx_model, tmp_path, edit, file="config.json"):
    """The model's configuration files alone (no weights): a config error must come before any."""
    folder = tmp_path / "model"
    (folder / "speech_tokenizer").mkdir(parents=True)
    for name in ("config.json", "speech_tokenizer/config.json", "generation_config.json"):
        shutil.copy(mlx_model / name, folder / name)
    config = json.loads((folder / file).read_text())
    edit(config)
    (folder / file).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("file, edit, needle", [
    ("config.json", lambda c: c["talker_config"].update(spk_id={}, spk_is_dialect={}),
     "talker_config.spk_id lists no speaker"),
    ("config.json", lambda c: c["talker_config"].update(num_hidden_layers=10 ** 6),
     "config.json:talker_config: field 'num_hidden_layers' is 1000000, beyond 512"),
    ("config.json", lambda c: c["talker_config"]["code_predictor_config"].update(
        hidden_size=60000, num_hidden_layers=200, intermediate_size=250000),
     "code_predictor_config: hidden_size 60000, intermediate_size 250000, num_hidden_layers 200"),
    ("speech_tokenizer/config.json", lambda c: c["decoder_config"].update(num_hidden_layers=10 ** 6),
     "speech_tokenizer/config.json:decoder_config: field 'num_hidden_layers' is 1000000"),
    ("speech_tokenizer/config.json", lambda c: c["decoder_config"].update(upsample_rates=[1] * 10 ** 5),
     "speech_tokenizer/config.json:decoder_config: field 'upsample_rates' lists 100000 sizes"),
    ("generation_config.json", lambda c: c.update(top_k=-5), "generation_config.json: field 'top_k' must be"),
    ("generation_config.json", lambda c: c.update(do_sample="no"), "generation_config.json: field 'do_sample' must"),
    ("generation_config.json", lambda c: c.update(temperature=10 ** 400), "field 'temperature' must be a finite"),
])
def test_bad_configs_are_refused_before_any_model_is_built(mlx_model, tmp_path, file, edit, needle):
    folder = _config_only(mlx_model, tmp_path, edit, file)
    line = error_line(cli("speak", TEXT, "--model", folder, "--out", tmp_path / "x.wav", "--device", "cpu",
                          timeout=60))
    assert needle in line and str(folder / file) in line


def test_check_quant_json_is_strict_with_an_infinite_snr(model_dir):
    source = model_dir("customvoice_0b6")  # compared with itself: no noise at all
    proc = cli("check-quant", source, "-r", source, "--frames", 4, "--json")
    assert proc.returncode == 0, proc.stderr

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    report = json.loads(proc.stdout, parse_constant=reject)
    assert report["snr_db"] == "inf" and report["talker_kl"] == 0 and report["passed"]


# -- the OpenBLAS preload -----------------------------------------------------------------------------

@pytest.mark.skipif(system_openblas() is None, reason="the system OpenBLAS is not installed")
def test_the_cli_runs_with_the_system_openblas(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert "libopenblas" not in subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                                               capture_output=True, text=True, env=env).stdout
    code, stderr, maps = _interrupt_while_reading(["speak", "-", "--model", tmp_path / "m", "--out",
                                                   tmp_path / "x.wav"], env={"LD_PRELOAD": ""})
    assert code == 130 and "libopenblas" in maps, stderr


@pytest.mark.parametrize("option", ["--instruct", "--ref-text"])
def test_long_instruct_and_ref_text_are_refused_before_the_model_loads(mlx_model, tmp_path, option):
    # The model's configuration without its weights: loading it would fail, so the error that comes
    # first shows the limit is checked before any model work.
    folder = tmp_path / "config-only"
    shutil.copytree(mlx_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    line = error_line(cli("speak", TEXT, "--model", folder, "--out", tmp_path / "x.wav", option, "calm " * 20_000))
    assert f"{option} is too long (100,000 characters); the limit is 1,000" in line
