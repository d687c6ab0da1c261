"""Shared fixtures: the tiny official models and reference dumps built by tests/reference/.

They are built once (about 30 s) by the official qwen-tts in .venv-ref and cached in
tests/.fixtures; a change to tests/reference/ rebuilds them. A missing reference environment
is an error, never a skip: every parity claim rests on it.
"""

import hashlib
import json
import os
import subprocess
import sys
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


def ensure_fixtures():
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
    proc = subprocess.run([str(REF_PYTHON), str(REFERENCE / "build_fixtures.py"), str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the reference fixtures failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    (tmp / "stamp.json").write_text(json.dumps({"digest": digest}))
    subprocess.run(["rm", "-rf", str(FIXTURES)], check=True)
    tmp.rename(FIXTURES)
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir():
    return ensure_fixtures()


@pytest.fixture(scope="session")
def model_dir(fixtures_dir):
    def get(variant):
        return fixtures_dir / "models" / variant
    return get


def load_cases(fixtures_dir, variant):
    """[(case name, case args, dict of reference arrays)] for one variant."""
    folder = fixtures_dir / "dumps" / variant
    meta = json.loads((folder / "cases.json").read_text())
    return [(name, args, dict(np.load(folder / f"{name}.npz"))) for name, args in meta.items()]
