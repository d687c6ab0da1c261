"""The mlx-audio side: the incumbent Mac library mlx-audio 0.6.2 (same MLX as ours), its Qwen3-TTS
model on the tiny CustomVoice fixture, run in its own venv (.venv-mlxaudio, bench/mlx_audio_env.sh).

    .venv-mlxaudio/bin/python bench/mlx_audio_side.py   (a worker: JSON commands on stdin, see common.serve)
    python bench/mlx_audio_side.py --selftest            (build, rep(20), batch(4, 20); re-runs itself
                                                          in .venv-mlxaudio with OpenBLAS preloaded)

What is changed in mlx-audio, all from outside (its files are untouched):
- The fixture is read from a temporary copy whose speech_tokenizer/config.json `decoder_config` gets
  the two keys the official codec config has and the fixture lacks, `num_semantic_quantizers` (1)
  and `vector_quantization_hidden_dimension` (the official value equals `codebook_dim`: 512 there,
  32 here). 0.6.2 also loads without them (its dataclass defaults are 1 and 512, and its decoder
  reads only the first); they are set so its config matches the geometry.
- The codec decode is stubbed: `speech_tokenizer.decode` (what `generate` calls after its loop) and
  `Model._decode_generated_codes` (what the `batch_generate` session calls per finished row)
  return zeros of the right length (1920 samples per frame) without running the codec. Its loader
  guesses conv layouts from weight shapes (`check_array_shape_qwen3`) and guesses wrong at the
  fixture's tiny widths, so its codec cannot run on the fixture; the times here are the
  talker + code-predictor loop only (which is what ours' loop time measures too).
- EOS is made impossible: `talker_config.codec_eos_token_id` is set to the codec vocabulary size,
  an id no sampler can return. mlx-audio suppresses every id in [vocab - 1024, vocab) except its
  EOS id, so the real EOS (2150) is then suppressed as well, and every run makes exactly
  `max_tokens` frames (checked: the frame count that comes out is returned and asserted).

How frames are timed: mlx-audio's non-streaming `generate` yields once, at the end. Its loop calls
the talker once per frame (call 0 is the prefill) after one `mx.eval` sync at the end of the
previous frame, so the talker's class is swapped for a subclass whose `__call__` takes a
timestamp first; the stubbed decode takes one more as the loop ends. stamps[0] is the start of
the prefill and stamps[k] the end of frame k-1 (frames + 1 stamps, as bench/official.py has), and
`frame_s` = common.per_frame(stamps[1:]): the mean seconds per frame between the first and the
last frame's end (steady state, excludes the prefill and the first frame). `batch_generate`
(non-streaming: its continuous-batching session, one batched talker step per frame for all rows)
is timed the same way, per batched step, plus its total wall time.
"""

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import LANGUAGE, TEXTS, VOICE, host_info, peak_rss_gb, per_frame, serve, thread_env  # noqa: E402
from shapes import FIXTURE, ROOT  # noqa: E402

VENV = ROOT / ".venv-mlxaudio"
OPENBLAS = f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libopenblas.so.0"


def fixture_copy(dst: Path, src: Path = FIXTURE) -> Path:
    """A model folder (the fixture) copied to `dst`, with the two official decoder-config keys it lacks."""
    path = dst / src.name
    shutil.copytree(src, path)
    config_path = path / "speech_tokenizer" / "config.json"
    config = json.loads(config_path.read_text())
    decoder = config["decoder_config"]
    decoder.setdefault("num_semantic_quantizers", 1)
    decoder.setdefault("vector_quantization_hidden_dimension", decoder["codebook_dim"])
    config_path.write_text(json.dumps(config, indent=2))
    return path


class Stamps:
    """Timestamps of the talker's forward calls (one per frame; call 0 is the prefill) and one
    more when the loop has ended (the first stubbed decode call after it)."""

    def __init__(self, model):
        self.times, self.ended = [], False
        stamps, talker = self.times, model.talker

        class StampedTalker(type(talker)):
            def __call__(self, *args, **kwargs):
                stamps.append(time.perf_counter())
                return super().__call__(*args, **kwargs)

        talker.__class__ = StampedTalker

    def reset(self):
        self.times.clear()
        self.ended = False

    def end(self):
        if not self.ended:  # a batch decodes row by row, all rows ending on the same step
            self.times.append(time.perf_counter())
            self.ended = True


def stub_codec(model, stamps: Stamps) -> int:
    """Both decode entry points return zeros of the right length; returns samples per frame."""
    import mlx.core as mx

    upsample = model.speech_tokenizer.decode_upsample_rate

    def decode(codes):  # generate: codes [1, frames, groups] -> (audio [1, samples], lengths [1])
        stamps.end()
        n = codes.shape[1] * upsample
        return mx.zeros((1, n), dtype=mx.float32), mx.array([n])

    def decode_generated_codes(generated_codes, **_):  # batch session: one row's list of [1, groups]
        stamps.end()
        return mx.zeros((len(generated_codes) * upsample,), dtype=mx.float32)

    model.speech_tokenizer.decode = decode
    model._decode_generated_codes = decode_generated_codes
    return upsample


class Session:
    """Commands: build, then rep / batch (repeatedly), then finish."""

    def build(self, threads, seed=0, text="short", shape="tiny", precision="float32", path=None, **_):
        """Loads the fixture copy (float32), or for a released shape the random bfloat16 folder at `path`
        (bench/ours.py's checkpoint op) as float32, bfloat16 or 8-bit (its Linear layers quantized with
        group size 64, as ours); stubs the codec, makes EOS impossible, warms up."""
        if (shape == "tiny") != (path is None) or precision not in ("float32", "bfloat16", "8bit") or (
                shape == "tiny" and precision != "float32"):
            raise ValueError("the mlx-audio side runs the tiny fixture in float32, or a released shape's "
                             "checkpoint (path) in float32, bfloat16 or 8bit")
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten
        from mlx_audio.tts.utils import load_model

        self.threads, self.text = threads, TEXTS[text]
        self.tmp = tempfile.TemporaryDirectory(prefix="mlx_audio_fixture_")
        t0 = time.perf_counter()
        model = load_model(fixture_copy(Path(self.tmp.name), Path(path) if path else FIXTURE))
        if precision == "8bit":
            nn.quantize(model.talker, group_size=64, bits=8,
                        class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0)
        elif shape != "tiny":
            model.talker.set_dtype(getattr(mx, precision))
        mx.eval(model.parameters())
        build_s = time.perf_counter() - t0
        dtypes = {str(v.dtype) for _, v in tree_flatten(model.talker.parameters())}
        if precision != "8bit" and dtypes != {f"mlx.core.{precision}"}:
            raise ValueError(f"expected {precision} weights, got {dtypes}")
        talker_config = model.config.talker_config
        talker_config.codec_eos_token_id = talker_config.vocab_size  # never sampled: see the docstring
        self.model, self.stamps = model, Stamps(model)
        self.upsample = stub_codec(model, self.stamps)
        self._warm = set()
        self.rep(4, seed)  # warm-up: mx.compile'd talker pieces and the samplers' graphs
        mx.reset_peak_memory()
        return dict(build_s=build_s, weights_gb=mx.get_active_memory() / 1e9,
                    prompt_tokens=len(model.tokenizer.encode(self.text)))

    def rep(self, frames, seed):
        """One `generate` of exactly `frames` frames: frame_s (steady state), first_frame_s (from the
        first talker call, the prefill, to the end of frame 0; prompt building is before it)."""
        import mlx.core as mx

        stamps = self.stamps
        stamps.reset()
        mx.random.seed(seed)
        results = list(self.model.generate(text=self.text, voice=VOICE, lang_code=LANGUAGE, max_tokens=frames))
        out = stamps.times[:]
        assert len(results) == 1 and results[0].token_count == frames, \
            f"{[r.token_count for r in results]} frames for {frames}"
        assert results[0].samples == frames * self.upsample
        assert len(out) == frames + 1, f"{len(out)} stamps for {frames} frames"
        return dict(frame_s=per_frame(out[1:]), first_frame_s=out[1] - out[0], frames=results[0].token_count)

    def batch(self, batch_size, frames, seed, warmup=True):
        """One `batch_generate` of `batch_size` copies of the text (voice, language as in rep), each
        row exactly `frames` frames. total_s: the whole call (prompt prep, prefill, all steps, the
        stubbed decodes); step_s: steady-state seconds per batched step (per_frame over the step
        ends, as in rep); frames: per row. Aggregate frames/s = batch_size * frames / total_s, or
        batch_size / step_s in steady state. The first call at a batch size warms it up (its
        shapes compile) with a 4-frame run first, unless warmup is False."""
        import mlx.core as mx

        if warmup and batch_size not in self._warm:
            self._warm.add(batch_size)
            self.batch(batch_size, 4, seed, warmup=False)
        stamps = self.stamps
        stamps.reset()
        mx.random.seed(seed)
        t0 = time.perf_counter()
        results = list(self.model.batch_generate(texts=[self.text] * batch_size, voices=[VOICE] * batch_size,
                                                 lang_code=LANGUAGE, max_tokens=frames))
        total_s = time.perf_counter() - t0
        out = stamps.times[:]
        rows = [0] * batch_size
        for r in results:
            rows[r.sequence_idx] = r.token_count
        assert rows == [frames] * batch_size, f"{rows} frames per row for {frames}"
        assert len(out) == frames + 1, f"{len(out)} stamps for {frames} steps"
        return dict(total_s=total_s, step_s=per_frame(out[1:]), first_step_s=out[1] - out[0], frames=rows,
                    batch_size=batch_size)

    def finish(self, **_):
        import mlx.core as mx

        return dict(peak_mlx_gb=mx.get_peak_memory() / 1e9, peak_rss_gb=peak_rss_gb(), env=env_info(self.threads))


def env_info(threads) -> dict:
    import mlx.core as mx
    from mlx_audio.version import __version__

    if mx.metal.is_available():
        device, blas = "metal", "Metal (MLX kernels)"
    elif mx.cuda.is_available():
        device, blas = "cuda", "cuBLAS"
    else:
        device = "cpu"
        preload = os.environ.get("LD_PRELOAD", "")
        blas = ("Accelerate" if platform.system() == "Darwin" else
                f"OpenBLAS ({os.path.basename(preload)}, preloaded)" if "openblas" in preload else
                "the wheel's bundled reference BLAS (slow: see bench/README.md)")
    return dict(impl=f"mlx-audio {__version__}", mlx=mx.__version__, device=device, blas=blas, threads=threads,
                codec="stubbed (zeros; see bench/mlx_audio_side.py)", **host_info())


def relaunch_env(threads: int) -> dict:
    """The worker's environment: every thread pool at `threads`, the system OpenBLAS preloaded
    on Linux (MLX's CPU wheel bundles a reference BLAS ~30x slower in float32), offline."""
    env = thread_env(threads)
    if platform.system() == "Linux" and os.path.exists(OPENBLAS) and OPENBLAS not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(p for p in (OPENBLAS, env.get("LD_PRELOAD")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def ensure_venv() -> Path:
    """.venv-mlxaudio's python, made by bench/mlx_audio_env.sh if it is missing."""
    python = VENV / "bin" / "python"
    if not python.exists():
        import subprocess
        subprocess.run(["bash", str(BENCH / "mlx_audio_env.sh")], check=True)
    return python


def selftest(threads: int = 1):
    s = Session()
    print("build", json.dumps(s.build(threads=threads)), flush=True)
    r = s.rep(20, 1)
    print(f"rep(20): {r['frame_s'] * 1e3:.1f} ms/frame, prefill + first frame {r['first_frame_s'] * 1e3:.1f} ms, "
          f"{r['frames']} frames", flush=True)
    b = s.batch(4, 20, 1)
    print(f"batch(4, 20): {b['total_s']:.3f} s total, {b['step_s'] * 1e3:.1f} ms/step, frames {b['frames']}, "
          f"{sum(b['frames']) / b['total_s']:.1f} frames/s aggregate "
          f"({b['batch_size'] / b['step_s']:.1f} in steady state)", flush=True)
    print("finish", json.dumps(s.finish()), flush=True)


if __name__ == "__main__":
    if "--selftest" in sys.argv:
        threads = int(os.environ.get("THREADS", "1"))
        in_venv = Path(sys.prefix).resolve() == VENV.resolve()
        if not in_venv or OPENBLAS not in os.environ.get("LD_PRELOAD", "") and os.path.exists(OPENBLAS):
            python = ensure_venv()
            os.execve(str(python), [str(python), __file__, "--selftest"], relaunch_env(threads))
        selftest(threads)
    else:
        serve(Session())
