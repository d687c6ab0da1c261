#!/usr/bin/env bash
# Makes the mlx-audio side's venv, .venv-mlxaudio at the repo root, from the pinned
# bench/mlx_audio_requirements.txt (our .venv is left untouched), and checks that its MLX is the
# version ours runs. Re-running it on an existing venv only re-checks the pins.
#
#     bash bench/mlx_audio_env.sh          (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-mlxaudio"
reqs="$root/bench/mlx_audio_requirements.txt"

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q -r "$reqs"

theirs="$("$venv/bin/python" -c 'import mlx.core as mx; print(mx.__version__)')"
echo "mlx-audio $("$venv/bin/python" -c 'from mlx_audio.version import __version__; print(__version__)'), mlx $theirs in $venv"
if [ -x "$root/.venv/bin/python" ]; then
    ours="$("$root/.venv/bin/python" -c 'import mlx.core as mx; print(mx.__version__)')"
    if [ "$ours" != "$theirs" ]; then
        echo "error: .venv has mlx $ours, .venv-mlxaudio has mlx $theirs: pin the same in $reqs" >&2
        exit 1
    fi
fi
