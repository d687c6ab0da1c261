"""`mlx-qwen-tts serve`: load the model once, warm it up, serve the OpenAI speech API.

Only click is imported at module level: `mlx-qwen-tts --help` works without the server extra.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from pathlib import Path

import click

from mlx_qwen_tts.hub import DEFAULT_MODEL

GRACE_S = 5  # on Ctrl-C (or once a drain's time is up): in-flight requests get this long, then they are cancelled
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this long


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _warm_up(engine, model) -> float:
    """One short synthesis through the engine (compiles the frame step, builds the codec state)."""
    import numpy as np

    started = time.perf_counter()
    kwargs = {"voice": None}
    if model.config.model_type == "base":  # a plain tone as the reference: x-vector path only
        t = np.arange(int(1.5 * 24000)) / 24000
        kwargs = {"ref_audio": (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)}
    for _ in engine.submit("Hello.", greedy=True, max_frames=4, **kwargs):
        pass
    return time.perf_counter() - started


def _logger(level: str) -> logging.Logger:
    log = logging.getLogger("mlx_qwen_tts.server")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


@click.command("serve")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder (converted or Hugging Face) or a Hugging Face id.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Requests generated together, as rows of one batch.")
@click.option("--max-queue", type=click.IntRange(min=1),
              help="Requests allowed to wait for a row; beyond it the answer is 429 [default: no limit].")
@click.option("--api-key", envvar="MLX_QWEN_TTS_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health and the playground page.")
@click.option("--voices-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Base models: where registered voices are kept (and read again at start).")
@click.option("--voice-store", type=click.Path(file_okay=False, path_type=Path),
              help="Base models: a voice store shared by replicas (a folder on NFS/SMB); voices made through "
                   "any replica are seen by all at once. With --voices-dir too: that folder's voices are "
                   "imported into the store (names it lacks), then only the store is used.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser calls from this origin (repeatable; '*' for any). CORS is off by default.")
@click.option("--max-input-chars", default=4096, show_default=True, type=click.IntRange(min=1))
@click.option("--max-seconds-per-request", default=600.0, show_default=True, type=click.FloatRange(min=0.1, max=86400),
              help="Audio seconds one request may make at most (caps its max_frames).")
@click.option("--client-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1, max=3600),
              help="Seconds a client may take to send its request headers or body, or stall reading a response.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), help="Where MLX runs [default: gpu if available].")
@click.option("--ignore-eos", is_flag=True, hidden=True, help="Benchmarks: never stop before max_frames.")
@click.option("--replica-id", help="This replica's name in X-Replica, /health and /metrics [default: the host name].")
@click.option("--drain-seconds", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="On SIGTERM: stop taking requests (readiness 503) and give those in flight this long to finish.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(model, host, port, max_batch, max_queue, api_key, voices_dir, voice_store, cors_origins, max_input_chars,
          max_seconds_per_request, client_timeout, device, ignore_eos, replica_id, drain_seconds, log_level):
    """Serve OpenAI-compatible text to speech (POST /v1/audio/speech) with a playground at /."""
    from mlx_qwen_tts.cli.common import select_device, user_errors

    try:
        import uvicorn

        from mlx_qwen_tts.server.app import ServerState, create_app
        from mlx_qwen_tts.server.connection import guarded_h11
        from mlx_qwen_tts.server.lifecycle import DrainingServer, Lifecycle
    except ImportError as e:
        raise click.ClickException(f"the server needs its extra: pip install 'mlx-qwen-tts[server]' ({e})")
    import mlx.core as mx

    from mlx_qwen_tts.hub import resolve_model
    from mlx_qwen_tts.loading import load_model
    from mlx_qwen_tts.engine.service import Engine
    from mlx_qwen_tts.server.registry import VoiceRegistry
    from mlx_qwen_tts.server.voice_store import FolderStore, SharedVoiceRegistry

    log = _logger(log_level)
    device = select_device(device)
    started = time.perf_counter()
    with user_errors():
        folder = resolve_model(model)
        tts = load_model(folder, dtype=mx.float32 if device == "cpu" else None)
    with user_errors():
        engine = Engine(tts, max_batch=max_batch, max_queue=max_queue)
    try:
        with user_errors():
            engine.warm_up()  # every batch size traced: a join never waits for a compile
            warm = _warm_up(engine, tts)
            if voice_store is not None:
                registry = SharedVoiceRegistry(FolderStore(voice_store), engine, tts, log)
                if voices_dir is not None and registry.enabled:  # moving to the store: copy the folder in
                    added = registry.import_folder(voices_dir)
                    log.info("imported %d voice(s) from %s into the store: %s", len(added), voices_dir,
                             ", ".join(added) or "-")
            else:
                registry = VoiceRegistry(voices_dir, engine, tts, log)
            registry.load()
    except BaseException:
        engine.close()
        raise
    if (voices_dir or voice_store) is not None and not registry.enabled:
        log.warning("--voices-dir/--voice-store is ignored: voice registration needs a Base model (this is %s)",
                    tts.config.model_type)
    state = ServerState(model=tts, engine=engine, registry=registry, model_id=str(model), api_key=api_key or None,
                        max_input_chars=max_input_chars, cors_origins=list(cors_origins), max_batch=max_batch,
                        max_queue=max_queue, ready=True, ignore_eos=ignore_eos, client_timeout=client_timeout,
                        max_seconds_per_request=max_seconds_per_request,
                        lifecycle=Lifecycle(replica_id or socket.gethostname(), drain_seconds))
    log.info("model %s (%s) on %s loaded and warmed up in %.1f s (warm-up %.2f s); %d registered voices",
             model, tts.config.model_type, device, time.perf_counter() - started, warm, len(registry.names()))
    if not api_key and not _is_loopback(host):
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the server", host)
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=GRACE_S, lifespan="on", http=guarded_h11(client_timeout),
                            timeout_keep_alive=KEEP_ALIVE_S)
    server = DrainingServer(config, state.lifecycle)  # SIGTERM drains first
    # uvicorn re-raises the signal that stopped it once it is done; with these handlers in place
    # that is a no-op, so a graceful stop exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        engine.close(10.0)
    if not server.started:
        raise click.ClickException(f"could not serve on {host}:{port} (see the log above)")
