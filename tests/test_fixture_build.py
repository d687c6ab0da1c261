"""The fixture build shows its progress: one `[fixtures]` line per reference case the builder dumps,
outside pytest (tests/run.sh) and inside it (past pytest's output capture)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FAKE_BUILDER = textwrap.dedent("""\
    #!/bin/sh
    # stands in for .venv-ref/bin/python: "python -u build_fixtures.py OUT" prints its cases, writes OUT
    mkdir -p "$3/models"
    echo "  customvoice_0b6/en_ryan_nonstream: 12 frames, eos=True"
    echo "  base_0b6/icl_stream: 9 frames, eos=False"
    echo "some other chatter"
""")


def _env(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_BUILDER)
    fake.chmod(0o755)
    return {**os.environ, "MLX_QWEN_TTS_FIXTURES": str(tmp_path / "fixtures"), "MLX_QWEN_TTS_REF_PYTHON": str(fake)}


def test_run_sh_build_prints_a_line_per_case(tmp_path):
    proc = subprocess.run([sys.executable, str(TESTS / "conftest.py")], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[fixtures]")]
    assert any("customvoice_0b6/en_ryan_nonstream" in line for line in lines)
    assert any("base_0b6/icl_stream" in line for line in lines) and lines[-1].startswith("[fixtures] done")
    assert not any("chatter" in line for line in lines)  # only the case lines
    assert (tmp_path / "fixtures" / "stamp.json").is_file()


def test_pytest_shows_the_build_progress(tmp_path):
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text().replace(
        'ROOT = Path(__file__).resolve().parent.parent', f'ROOT = Path({str(TESTS.parent)!r})'))
    (tmp_path / "test_x.py").write_text("def test_x(fixtures_dir):\n    assert fixtures_dir.is_dir()\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[fixtures]" in proc.stderr and "base_0b6/icl_stream" in proc.stderr
