"""Nothing lost (README, Reliability): an output never replaces an input of the same command or a model's
files, a symbolic-link output is replaced and never written through, long names and full disks fail
cleanly (or work), and a failed conversion leaves no folders behind. Every case is a real CLI process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors import safe_open
from test_cli import mlx_model  # noqa: F401 (a fixture)

TEXT = "Hello world."


def cli(*args, input=None, stdin=None, env=None, script=None, timeout=300):
    """The command line in its own process (`script`: code run first, e.g. patching a module)."""
    run = "\nimport sys\nsys.argv = sys.argv[1:]\nfrom mlx_qwen_tts.__main__ import run\nrun()"
    prefix = ["-c", script + run, "mlx-qwen-tts"] if script else ["-m", "mlx_qwen_tts"]
    return subprocess.run([sys.executable, *prefix, *map(str, args)], input=input, stdin=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def error_line(proc) -> str:
    """The one `Error:` line of a failed run (no traceback, nothing else on stderr)."""
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def link(kind: str, target: Path, name: Path) -> Path:
    if kind == "symlink":
        name.symlink_to(target)
    elif kind == "hardlink":
        os.link(target, name)
    else:
        return target
    return name


# -- speak --out never replaces an input --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("option", ["--file", "--ref-audio", "--voice-file"])
def test_out_never_replaces_an_input_of_the_same_command(tmp_path, option, kind):
    given = tmp_path / "input.wav"
    given.write_bytes(b"precious input")
    out = link(kind, given, tmp_path / "out.wav")
    text = [] if option == "--file" else [TEXT]
    # The model does not exist: the error shows the check comes before any model work.
    line = error_line(cli("speak", *text, option, given, "--out", out, "--model", tmp_path / "no-model"))
    assert f"--out {out} is the same file as {option} {given}" in line
    assert given.read_bytes() == b"precious input"


def test_symlinked_out_is_replaced_never_written_through(mlx_model, tmp_path):
    keep = tmp_path / "keep.wav"
    keep.write_bytes(b"not to be touched")
    out = tmp_path / "out.wav"
    out.symlink_to(keep)
    proc = cli("speak", TEXT, "--model", mlx_model, "--out", out, "--max-seconds", 0.5, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert not out.is_symlink() and sf.info(out).duration > 0
    assert keep.read_bytes() == b"not to be touched"


# -- names and disks ----------------------------------------------------------------------------------

def test_longest_legal_name_works(mlx_model, tmp_path):
    out = tmp_path / ("n" * 251 + ".wav")  # 255 bytes: the temporary's decorations do not fit beside it
    proc = cli("speak", TEXT, "--model", mlx_model, "--out", out, "--max-seconds", 0.5, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and sf.info(out).duration > 0


def test_too_long_a_name_fails_before_synthesis(tmp_path):
    line = error_line(cli("speak", TEXT, "--model", tmp_path / "no-model", "--out", tmp_path / ("n" * 300 + ".wav")))
    assert "File name too long" in line or "bytes long" in line


def test_partial_of_a_long_name_fits(tmp_path):
    from mlx_qwen_tts.cli.speak import Output

    partial = Output(tmp_path / ("é" * 125 + "x.wav"), 24000).partial_path  # 255 bytes of UTF-8
    assert partial.name.endswith(".partial.wav") and len(os.fsencode(partial.name)) <= 255
    assert partial.name.startswith("é" * 50)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the given size (needs root, as tests/run.sh has)."""
    mounted = []

    def mount(size):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_fails_before_synthesis(small_disk, tmp_path):
    disk = small_disk("200k")
    line = error_line(cli("speak", TEXT, "--model", tmp_path / "no-model", "--out", disk / "x.wav"))
    assert line.startswith(f"Error: {disk / 'x.wav'}: no space left on its disk")
    assert list(disk.iterdir()) == []


# A speak run whose stream makes 30 s of audio at once (1.4 MB of WAV), whatever the model.
LOUD_STREAM = """
import numpy as np
import mlx_qwen_tts.api as api
def stream(*args, **kwargs):
    yield np.random.default_rng(0).uniform(-0.5, 0.5, 30 * 24000).astype(np.float32)
api.stream = stream
"""


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(small_disk, mlx_model):
    disk = small_disk("1200k")  # passes the 1 MiB check before synthesis; the file does not fit
    out = disk / "chapter.wav"
    line = error_line(cli("speak", TEXT, "--model", mlx_model, "--out", out, "--device", "cpu", script=LOUD_STREAM))
    assert line == f"Error: {out}: No space left on device; the 30.00 s made could not be kept either"
    assert list(disk.iterdir()) == []


# -- voices create ------------------------------------------------------------------------------------

def test_voices_create_protects_existing_files_recordings_and_models(tmp_path):
    recording = tmp_path / "ref.wav"
    sf.write(recording, np.zeros(24000, np.float32), 24000)
    existing = tmp_path / "v.safetensors"
    existing.write_bytes(b"an earlier voice")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_tts"}))
    weights = model / "model.safetensors"
    weights.write_bytes(b"model weights")
    os.link(recording, tmp_path / "same.safetensors")

    def create(out, *extra):
        return cli("voices", "create", "--ref-audio", recording, "--model", tmp_path / "no-model", "-o", out, *extra)

    assert "v.safetensors already exists; pass --force to replace it" in error_line(create(existing))
    assert "is the recording --ref-audio" in error_line(create(tmp_path / "same.safetensors", "--force"))
    assert "lies in the model folder" in error_line(create(weights, "--force"))
    (tmp_path / "w.safetensors").symlink_to(weights)
    assert "lies in the model folder" in error_line(create(tmp_path / "w.safetensors", "--force"))
    assert existing.read_bytes() == b"an earlier voice" and weights.read_bytes() == b"model weights"
    assert sf.info(recording).frames == 24000


def test_voices_create_never_replaces_the_loaded_models_own_file(model_dir, tmp_path):
    model = tmp_path / "base"
    model.mkdir()
    for f in model_dir("base_0b6").rglob("*"):  # hard links: the same files, another folder
        (model / f.relative_to(model_dir("base_0b6"))).parent.mkdir(exist_ok=True)
        if f.is_file():
            os.link(f, model / f.relative_to(model_dir("base_0b6")))
    recording = tmp_path / "ref.wav"
    sf.write(recording, np.sin(np.arange(48000) / 10).astype(np.float32) * 0.3, 24000)
    out = tmp_path / "voice.safetensors"
    os.link(model / "speech_tokenizer" / "model.safetensors", out)
    before = out.stat().st_size
    proc = cli("voices", "create", "--ref-audio", recording, "--model", model, "-o", out, "--force", "--device", "cpu")
    assert "is the model's file" in error_line(proc)
    assert out.stat().st_size == before


# -- convert ------------------------------------------------------------------------------------------

def test_convert_reports_what_it_quantized_and_refuses_a_group_size_that_does_not_divide(model_dir, tmp_path):
    source = model_dir("customvoice_0b6")  # its text embedding is 32 wide
    line = error_line(cli("convert", source, "-o", tmp_path / "a" / "b" / "out", "--group-size", 64))
    assert "group size 64 does not divide the width of" in line and "use --group-size 32" in line
    assert list(tmp_path.iterdir()) == []  # no folder left behind
    out = tmp_path / "out"
    proc = cli("convert", source, "-o", out, "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    names, sizes = [], {}
    for shard in out.glob("*.safetensors"):
        with safe_open(str(shard), "numpy") as f:
            names += list(f.keys())
            sizes.update({k: int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()})
    quantized = sorted(k[:-len(".scales")] for k in names if k.endswith(".scales"))
    logical = {k: sizes[k] * 4 if k[:-len(".weight")] in quantized else sizes[k] for k in sizes  # 8-bit: 4 per uint32
               if k.startswith(("talker.", "code_predictor.")) and not k.endswith((".scales", ".biases"))}
    share = sum(logical[k + ".weight"] for k in quantized) / sum(logical.values())
    summary = proc.stderr.decode().strip().splitlines()[-1]
    assert summary == (f"Converted {source} -> {out} (8-bit, group 32: {len(quantized)} of {len(quantized)} "
                       f"quantizable tensors, {100 * share:.1f} % of the talker and code-predictor weights, float32)")


def test_convert_on_a_full_disk_is_one_line_and_leaves_no_folders(small_disk, model_dir):
    source = model_dir("customvoice_0b6")
    disk = small_disk("8m")
    line = error_line(cli("convert", source, "-o", disk / "a" / "out"))
    assert line.startswith(f"Error: {disk / 'a' / 'out'}: no space left on its disk (8.4 MB free; at least")
    skip_check = "import mlx_qwen_tts_convert.convert as c\nc.check_free_space = lambda *args, **kwargs: None"
    proc = cli("convert", source, "-o", disk / "a" / "out", script=skip_check)
    stderr = proc.stderr.decode()  # the progress bars, then the error
    assert proc.returncode == 1 and "Traceback" not in stderr
    shard = disk / "a" / "out" / "model-00001.safetensors"
    assert stderr.strip().splitlines()[-1] == f"Error: {shard}: No space left on device"
    assert list(disk.iterdir()) == []
