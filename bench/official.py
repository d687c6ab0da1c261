"""The official side: qwen-tts 0.1.1 (PyTorch), run in the reference venv by bench/run.py.

    .venv-ref/bin/python bench/official.py   (a worker: JSON commands on stdin, see common.serve)

It generates a fixed number of frames from the same token ids as our side (EOS made impossible:
`eos_token_id` is an id the official suppression list removes, `max_new_tokens = frames + 1`
because the last sampled code 0 is never completed), with hooks that timestamp every talker
forward call (one per frame) and time the talker stack and the code-predictor `generate`.
"""

import os
import sys
import time
import warnings

from common import LANGUAGE, NEVER_EOS, VOICE, host_info, peak_rss_gb, per_frame, serve
from shapes import FIXTURE, ROOT, config_dicts

sys.path.insert(0, str(ROOT / "tests" / "reference"))
from tiny_models import stub_torchaudio  # noqa: E402

stub_torchaudio()
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig  # noqa: E402
from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration  # noqa: E402

transformers.logging.set_verbosity_error()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def build(shape: str, precision: str, device: str):
    dtype = DTYPES[precision]
    if shape == "tiny":
        model = Qwen3TTSForConditionalGeneration.from_pretrained(FIXTURE, dtype=dtype)
    else:  # random init in the real layout
        model = Qwen3TTSForConditionalGeneration._from_config(Qwen3TTSConfig(**config_dicts(shape)[0]), dtype=dtype)
    return model.to(device).eval()


class PrefillDone(Exception):
    """Raised from the first talker call's hook to end a prefill-only measurement there."""


class Timers:
    """Per talker forward call: a timestamp; per decode step: talker-stack and predictor seconds."""

    def __init__(self, model, device):
        self.device, self.stamps, self.talker, self.predictor = device, [], [], []
        self._t, self.prefill_only = 0.0, False
        model.talker.register_forward_hook(self._stamp)
        model.talker.model.register_forward_pre_hook(self._start)
        model.talker.model.register_forward_hook(self._stop)
        predictor = model.talker.code_predictor
        generate = predictor.generate

        def timed_generate(*args, **kwargs):
            sync(device)
            t = time.perf_counter()
            out = generate(*args, **kwargs)
            sync(device)
            self.predictor.append(time.perf_counter() - t)
            return out
        predictor.generate = timed_generate  # the talker calls it once per frame

    def reset(self):
        self.stamps.clear(), self.talker.clear(), self.predictor.clear()

    def _stamp(self, *_):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        if self.prefill_only:
            raise PrefillDone

    def _start(self, *_):
        sync(self.device)
        self._t = time.perf_counter()

    def _stop(self, *_):
        sync(self.device)
        self.talker.append(time.perf_counter() - self._t)


def generate(model, ids, frames, seed, device):
    torch.manual_seed(seed)
    with torch.inference_mode():
        model.generate(input_ids=[torch.tensor([ids], device=device)], languages=[LANGUAGE], speakers=[VOICE],
                       non_streaming_mode=True, max_new_tokens=frames + 1, eos_token_id=NEVER_EOS)


class Session:
    """Commands from bench/run.py: build, then rep (repeatedly), then finish."""

    def build(self, shape, precision, threads, text, token_ids, seed):
        """token_ids: every text's prompt ids, from our tokenizer (the parity tests pin them equal)."""
        torch.set_num_threads(threads)
        self.device, self.token_ids, self.ids = pick_device(), token_ids, token_ids[text]
        t0 = time.perf_counter()
        self.model = build(shape, precision, self.device)
        build_s = time.perf_counter() - t0
        self.timers = Timers(self.model, self.device)
        generate(self.model, self.ids, 2, seed, self.device)  # warm-up
        return dict(build_s=build_s)

    def rep(self, frames, seed):
        """One generation of `frames` frames: seconds per frame and per-step stage seconds."""
        timers = self.timers
        timers.reset()
        generate(self.model, self.ids, frames, seed, self.device)
        stamps = timers.stamps  # [0]: prefill done; [k]: frame k-1 done (its predictor + talker step k)
        assert len(stamps) == frames + 1, f"{len(stamps)} talker calls for {frames} frames"
        return dict(frame_s=per_frame(stamps[1:]), talker_s=timers.talker[1:],
                    predictor_s=list(timers.predictor))

    def batch(self, batch_size, frames, seed):
        """The official batch call (list inputs): `batch_size` copies of the prompt, `frames`
        frames each; steady-state seconds per batched frame (after the prefill) and peak RSS."""
        timers = self.timers
        timers.reset()
        torch.manual_seed(seed)
        with torch.inference_mode():
            self.model.generate(input_ids=[torch.tensor([self.ids], device=self.device)] * batch_size,
                                languages=[LANGUAGE] * batch_size, speakers=[VOICE] * batch_size,
                                non_streaming_mode=True, max_new_tokens=frames + 1, eos_token_id=NEVER_EOS)
        stamps = timers.stamps
        assert len(stamps) == frames + 1, f"{len(stamps)} talker calls for {frames} frames"
        return dict(frame_s=per_frame(stamps[1:]), peak_rss_gb=peak_rss_gb())

    def prefill(self, texts, reps):
        """Prefill seconds for each text: prompt assembly and the talker's prefill forward (the
        generate call is stopped right after it)."""
        out, timers = {}, self.timers
        timers.prefill_only = True
        for text in texts:
            out[text] = []
            for _ in range(reps):
                timers.reset()
                t0 = time.perf_counter()
                try:
                    generate(self.model, self.token_ids[text], 1, 0, self.device)
                except PrefillDone:
                    pass
                out[text].append(timers.stamps[0] - t0)
        timers.prefill_only = False
        return out

    def finish(self):
        return dict(peak_rss_gb=peak_rss_gb(),
                    env=dict(impl="qwen-tts " + _version("qwen-tts"), torch=torch.__version__, device=self.device,
                             threads=torch.get_num_threads(), blas=_blas(), **host_info()))


def _version(package):
    from importlib.metadata import version
    return version(package)


def _blas() -> str:
    """torch's build summary names its BLAS ("BLAS_INFO=mkl" on x86 Linux wheels)."""
    config = torch.__config__.show()
    return config.split("BLAS_INFO=", 1)[1].split(",", 1)[0].strip() if "BLAS_INFO=" in config else "unknown"


if __name__ == "__main__":
    serve(Session())
