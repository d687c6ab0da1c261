#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine, then runs it:
#   - Debian packages: libportaudio2 (sounddevice), libopenblas0-pthread (fast float32 matmul for MLX's CPU backend),
#     haproxy (the load balancer in front of replicas in tests/test_replicas.py)
#   - .venv      the project with its test extras (mlx[cpu] on Linux)
#   - .venv-ref  the official qwen-tts 0.1.1 reference (PyTorch CPU), kept apart because of its transformers pin
#   - tests/.fixtures  tiny official models + reference dumps (rebuilt when tests/reference/ changes)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_pkgs=()
for p in libportaudio2 libopenblas0-pthread chromium chromium-driver haproxy; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

REF_REQ=tests/reference/requirements.txt
if [ ! -f .venv-ref/.installed ] || ! cmp -s "$REF_REQ" .venv-ref/.installed; then
  rm -rf .venv-ref
  "$PY" -m venv .venv-ref
  .venv-ref/bin/python -m pip install -q --disable-pip-version-check -r "$REF_REQ"
  .venv-ref/bin/python -m pip install -q --disable-pip-version-check --no-deps qwen-tts==0.1.1
  cp "$REF_REQ" .venv-ref/.installed
fi

# OpenBLAS makes MLX's float32 CPU matmuls ~30x faster; results are unchanged.
OPENBLAS=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0
if [ -f "$OPENBLAS" ]; then export LD_PRELOAD="$OPENBLAS${LD_PRELOAD:+:$LD_PRELOAD}"; fi

# The fixtures first, with their progress on screen (pytest would hold the builder's output back).
.venv/bin/python tests/conftest.py

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
