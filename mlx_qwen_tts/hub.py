"""Where a `--model` comes from: a local folder, or a Hugging Face id downloaded and converted once.

Converted copies live in `$MLX_QWEN_TTS_CACHE` (default `~/.cache/mlx-qwen-tts`) as
`<owner>--<name>-<bits>bit`; the raw snapshot stays in the Hugging Face cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
# What a snapshot needs; skips the model card's images and anything else in the repository.
SNAPSHOT_FILES = ["*.json", "*.txt", "*.safetensors", "speech_tokenizer/*"]
CONFIG_FILES = ["config.json", "generation_config.json", "speech_tokenizer/config.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpecError(ValueError):
    """A --model that names no usable folder and cannot be fetched."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    root = cache_dir or os.environ.get("MLX_QWEN_TTS_CACHE") or Path.home() / ".cache" / "mlx-qwen-tts"
    return Path(root).expanduser()


def converted_path(repo_id: str, bits: int | None = 8, cache_dir: str | Path | None = None) -> Path:
    owner, name = repo_id.split("/")
    return cache_root(cache_dir) / f"{owner}--{name}-{f'{bits}bit' if bits else 'float'}"


def _local_or_repo(spec: str | Path) -> Path | str:
    """An existing folder, or a Hub id; anything else is an error."""
    from mlx_qwen_tts.paths import path_problem

    path = Path(spec).expanduser()
    problem = path_problem(path, "folder")
    if problem is None:
        return path
    if path.exists() or path.is_symlink():  # something is there, and it is not a folder
        raise ModelSpecError(f"--model {spec} is a file; give the model's folder" if path.is_file()
                             else f"--model {spec} {problem}")
    spec = str(spec)
    if _REPO_ID.match(spec) and not spec.startswith("."):
        return spec
    raise ModelSpecError(f"model folder {spec} {problem} (and it is not a Hugging Face id "
                         f"such as {DEFAULT_MODEL})")


def download(repo_id: str, *, allow_patterns=SNAPSHOT_FILES, progress: bool = True) -> Path:
    """Snapshot a Hub repository into the Hugging Face cache (already cached files are reused)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hint = (f"to use a local copy, download it where you are online (`hf download {repo_id} "
            f"--local-dir DIR`) and pass --model DIR")
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except RepositoryNotFoundError:  # also gated and private repositories
        raise ModelSpecError(f"{repo_id} was not found on the Hugging Face Hub (or needs a login); "
                             f"check the name, or {hint}") from None
    except HFValidationError as e:
        raise ModelSpecError(f"{repo_id} is not a valid Hugging Face id: {e}") from None
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and nothing cached
        raise ModelSpecError(f"could not download {repo_id}: offline or the Hub is unreachable, and no "
                             f"copy is cached; {hint}") from None
    except (HfHubHTTPError, OSError) as e:  # server, network or disk trouble
        reason = " ".join(str(e).split())
        raise ModelSpecError(f"could not download {repo_id} ({reason}); {hint}") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def _ready_or_repo(spec, bits, cache_dir) -> tuple[str | None, Path]:
    """(repo id or None, folder): a local folder as is, else the cache path of its converted
    copy, which exists only once converted (convert_model publishes it atomically)."""
    where = _local_or_repo(spec)
    if isinstance(where, Path):
        return None, where
    return where, converted_path(where, bits, cache_dir)


def resolve_model(spec: str | Path, *, bits: int | None = 8, cache_dir: str | Path | None = None,
                  progress: bool = True) -> Path:
    """A ready model folder for `spec`: a local folder (converted or raw Hugging Face) as is, or a
    Hub id: the converted copy in the cache, made on first use (download, then convert)."""
    where, target = _ready_or_repo(spec, bits, cache_dir)
    if target.is_dir():
        return target
    snapshot = download(where, progress=progress)
    from mlx_qwen_tts.atomic import remove_stale
    from mlx_qwen_tts_convert.convert import convert_model

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent)  # leftovers of conversions killed outright, for any model
    try:
        return convert_model(snapshot, target, bits=bits, progress=progress)
    except FileExistsError:  # another process converted it meanwhile
        if (target / "config.json").is_file():
            return target
        raise


def resolve_config(spec: str | Path, *, bits: int | None = 8, cache_dir: str | Path | None = None) -> Path:
    """A folder holding at least the model's configuration (what `voices` needs): a local
    folder, the converted copy if cached, else only the config files from the Hub."""
    where, target = _ready_or_repo(spec, bits, cache_dir)
    return target if target.is_dir() else download(where, allow_patterns=CONFIG_FILES, progress=False)


def resolve_source(spec: str | Path, *, progress: bool = True) -> Path:
    """A raw Hugging Face snapshot folder for `convert`: a local folder, or downloaded."""
    where = _local_or_repo(spec)
    return where if isinstance(where, Path) else download(where, progress=progress)


def load(spec: str | Path = DEFAULT_MODEL, *, dtype=None, codec: bool = True, bits: int = 8):
    """`mlx_qwen_tts.load`: a converted or Hugging Face folder, or a Hub id (downloaded and
    converted to `bits`-bit MLX weights once, then read from the cache)."""
    from mlx_qwen_tts.loading import load_model

    return load_model(resolve_model(spec, bits=bits), dtype=dtype, codec=codec)
