#!/usr/bin/env bash
# One prepared check for the moment a GPU is at hand (a Mac, or an NVIDIA machine through MLX's CUDA
# backend): the whole test suite on the GPU stream, then bench/device_bench.py (B = 1..16 throughput
# at 0.6B in bf16 and 8-bit, B = 1 ms/frame against mlx-audio 0.6.2, time to first audio, and on
# Metal the command-buffer sweep). Writes OUT/device-check.json and OUT/device-check.md.
#
#   bash bench/device_check.sh [--dry-run] [--wheels DIR] [--out DIR] [--skip-tests]
#
# --dry-run    rehearsal on this machine's CPU: a few test files, tiny shapes, few frames
# --wheels DIR install offline first: DIR/install.sh (the layout of offline-cuda-wheels.sh: run as
#              `install.sh /tmp/site`, then `. env.sh /tmp/site`), else every wheel in DIR with
#              pip --no-index. Needs mlx (+ mlx-cuda on Linux), mlx-lm, numpy, soundfile, soxr,
#              safetensors, tokenizers, huggingface-hub, pytest (+ pluggy, iniconfig).
# Without --wheels the current environment is used (the repo's .venv if present, else python3).
# The test fixtures must be present (tests/.fixtures, or MLX_QWEN_TTS_FIXTURES): a GPU machine
# usually has no reference venv to build them; copy them along.
# Environment: TESTS (test paths, default: all of tests/), THREADS (CPU threads of the bench workers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/bench/results/device-check"
dry_run=0 wheels="" skip_tests=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --wheels) wheels="$2"; shift ;;
        --out) out="$2"; shift ;;
        --skip-tests) skip_tests=1 ;;
        *) echo "usage: bash bench/device_check.sh [--dry-run] [--wheels DIR] [--out DIR] [--skip-tests]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"
cd "$root"

# 1. Software, offline-safe.
python="${PYTHON:-$([ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3)}"
if [ -n "$wheels" ]; then
    site="${SITE:-/tmp/mlx-qwen-tts-site}"
    if [ -f "$wheels/install.sh" ]; then
        bash "$wheels/install.sh" "$site"
        # shellcheck disable=SC1091
        . "$wheels/env.sh" "$site"
    else
        "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
openblas="/usr/lib/$(uname -m)-linux-gnu/openblas-pthread/libopenblas.so.0"
if [ "$dry_run" = 1 ] && [ -f "$openblas" ]; then export LD_PRELOAD="$openblas"; fi  # MLX's CPU float32 (README)
device=$("$python" -c 'import mlx.core as mx; print("gpu" if mx.is_available(mx.gpu) else "cpu")')
if [ "$dry_run" = 1 ]; then
    device=cpu
elif [ "$device" != gpu ]; then
    echo "error: this MLX has no GPU backend (a Mac's mlx, or mlx-cuda on Linux): nothing to check" >&2
    exit 1
fi
"$python" -c 'import mlx.core as mx, mlx_lm, pytest; print("mlx", mx.__version__, "| mlx-lm", mlx_lm.__version__,
      "| pytest", pytest.__version__, "| default device", mx.default_device())'

# 2. The whole test suite on that device (MLX_QWEN_TTS_DEVICE: tests/conftest.py).
xml="$out/tests.xml"
rm -f "$xml"
if [ "$skip_tests" = 0 ]; then
    if [ "$dry_run" = 1 ]; then tests="${TESTS:-tests/test_engine.py tests/test_frame_levers.py}"; else tests="${TESTS:-tests}"; fi
    # shellcheck disable=SC2086
    MLX_QWEN_TTS_DEVICE=$device "$python" -m pytest $tests -q -p no:cacheprovider --junitxml "$xml" \
        2>&1 | tee "$out/tests.log" || echo "# tests failed: recorded in $xml and $out/tests.log"
fi

# 3. Benchmarks (mlx-audio's venv, .venv-mlxaudio, is used if present: bench/mlx_audio_env.sh makes it).
args=(--out "$out" --tests-device "$device" --threads "${THREADS:-4}")
[ -f "$xml" ] && args+=(--tests-xml "$xml")
[ "$dry_run" = 1 ] && args+=(--dry-run)
"$python" bench/device_bench.py "${args[@]}"
echo "# wrote $out/device-check.json and $out/device-check.md"
