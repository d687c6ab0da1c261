"""What every command shares: one-line user errors, warnings on stderr, the device choice, and
interruption (Ctrl-C, SIGTERM, SIGHUP) that runs the commands' cleanup and exits 128 + signal."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings

import click


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:  # system errors: "path: reason"
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


@contextlib.contextmanager
def user_errors():
    """Expected failures become `Error: <one line>` and exit 1, without a traceback."""
    from mlx_qwen_tts.audio import AudioDeviceError

    try:
        yield
    except (ValueError, OSError, AudioDeviceError) as e:  # ConfigError is a ValueError
        raise click.ClickException(one_line(e)) from None


@contextlib.contextmanager
def warnings_to_stderr():
    """Library warnings (runaway generation, ignored instruct) as plain `warning:` lines."""
    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        yield


def model_size(cfg) -> str:
    return f"{cfg.model_size.replace('b', '.')}B" if cfg.model_size else "unknown size"


def select_device(name: str | None) -> str:
    import mlx.core as mx

    has_gpu = mx.is_available(mx.gpu)
    name = name or ("gpu" if has_gpu else "cpu")
    if name == "gpu" and not has_gpu:
        raise click.ClickException("MLX has no GPU here; use --device cpu")
    mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)
    return name


def cpu_dtype(device: str):
    import mlx.core as mx

    return mx.float32 if device == "cpu" else None  # bf16 is slow on CPUs


# -- option values: bad ones are one `Error:` line (exit 1), checked before any model is loaded --

def utf8_text(ctx, param, value):
    """A click callback: text from the command line must be UTF-8. Python hands over other bytes
    as lone surrogates (surrogateescape), which no tokenizer takes."""
    if value is None:
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        name = param.opts[-1] if isinstance(param, click.Option) else param.human_readable_name
        try:
            byte = f" (byte 0x{value[e.start].encode('utf-8', 'surrogateescape').hex()} at character {e.start})"
        except UnicodeEncodeError:
            byte = ""
        raise click.ClickException(f"{name} is not UTF-8 text{byte}; check the terminal's or the "
                                   "script's encoding") from None
    return value


class Number(click.ParamType):
    """A finite number in [low, high] (open at `low` if `low_open`); `integer` for integers only."""

    def __init__(self, low=None, high=None, *, low_open=False, integer=False):
        self.low, self.high, self.low_open, self.integer = low, high, low_open, integer
        self.name = "integer" if integer else "float"

    def convert(self, value, param, ctx):
        name = param.opts[-1] if param is not None else "value"
        try:
            number = int(value) if self.integer else float(value)
        except (TypeError, ValueError):
            raise click.ClickException(f"{name} must be a{'n integer' if self.integer else ' number'}, "
                                       f"got {value!r}") from None
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and number > self.high
        if not math.isfinite(number) or too_low or too_high:
            raise click.ClickException(f"{name} must be {self.describe()}, got {value}")
        return number

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        return kind


# -- interruption -------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every `finally` and cleanup handler runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATING = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


def _raise_interrupted(signum, frame):
    for s in TERMINATING:  # a second signal must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_interrupts():
    """SIGTERM/SIGHUP (systemd, `docker stop`, `timeout`, a closed terminal) raise Interrupted."""
    if threading.current_thread() is not threading.main_thread():  # handlers need the main thread
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in TERMINATING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class InterruptibleMixin:
    """Ctrl-C prints `Interrupted.` and exits 130; SIGTERM/SIGHUP do the same with 128 + signal
    (click's own handling says `Aborted!` and exits 1)."""

    def main(self, *args, **kwargs):
        with signals_as_interrupts():
            return super().main(*args, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
            click.echo(f"Interrupted{name}.", err=True)
            ctx.exit(128 + signum)


class Command(InterruptibleMixin, click.Command):
    pass


class Group(InterruptibleMixin, click.Group):
    command_class = Command
    group_class = type  # subgroups are of this same class
