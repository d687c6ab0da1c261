"""`WS /v1/audio/speech/stream` in a real server process, with a real WebSocket client
(`websockets`): vLLM-Omni's message shapes, one live row per utterance, several utterances per
session, auth as for HTTP, bounded messages, errors that keep the session, hang-up cancels."""

import json
import time

import httpx
import mlx.core as mx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from mlx_qwen_tts.api import synthesize
from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.server.encoders import wav_stream_header

UTTERANCES = ["Hello world, this is the first utterance.", "你好，世界。第二句。"]


@pytest.fixture(scope="module")
def server(start_server, model_dir):
    return start_server(model_dir("customvoice_0b6"), "--max-batch", 2)


@pytest.fixture(scope="module")
def custom(model_dir):
    return load_model(model_dir("customvoice_0b6"), dtype=mx.float32)


def _ws(server, **kwargs):
    return connect(server.url.replace("http", "ws") + "/v1/audio/speech/stream", open_timeout=30, **kwargs)


def _messages(ws, until="session.done", timeout=120):
    """Every message up to and including the first of type `until`: JSON as dicts, audio as bytes."""
    out, deadline = [], time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.1))
        out.append(message if isinstance(message, bytes) else json.loads(message))
        if isinstance(out[-1], dict) and out[-1]["type"] == until:
            return out


def test_utterances_in_pieces_with_pauses_equal_the_whole_texts(server, custom):
    config = {"type": "session.config", "voice": "ryan", "seed": 5, "response_format": "wav", "max_frames": 40}
    with _ws(server) as ws:
        ws.send(json.dumps(config))
        for text in UTTERANCES:
            for i in range(0, len(text), 4):
                ws.send(json.dumps({"type": "input.text", "text": text[i:i + 4]}))
                time.sleep(0.1)
            ws.send(json.dumps({"type": "input.done"}))
        ws.send(json.dumps({"type": "session.close"}))
        messages = _messages(ws)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    events = [m["type"] if isinstance(m, dict) else "audio" for m in messages]
    assert events[0] == "audio.start" and events[-1] == "session.done"
    assert events.count("audio.start") == events.count("audio.done") == 2
    assert messages[-1]["total_utterances"] == 2
    for index, text in enumerate(UTTERANCES):
        start = events.index("audio.start", events.index("audio.done") + 1 if index else 0)
        done = events.index("audio.done", start)
        assert messages[start] == {"type": "audio.start", "utterance_index": index, "format": "wav",
                                   "sample_rate": 24000, "channels": 1}
        audio = b"".join(messages[start + 1:done])
        assert messages[done] == {"type": "audio.done", "utterance_index": index, "total_bytes": len(audio),
                                  "error": None}
        expected = synthesize(custom, text, voice="ryan", seed=5, max_frames=40, non_streaming_text=False)
        header = wav_stream_header()
        assert audio[:len(header)] == header and len(audio) == len(header) + 2 * len(expected.audio)
        samples = np.frombuffer(audio[len(header):], "<i2").astype(np.float32) / 32767
        np.testing.assert_allclose(samples, np.clip(expected.audio, -1, 1), atol=1.01 / 32767)  # int16 rounding


def test_bad_messages_get_errors_and_the_session_goes_on(server):
    with _ws(server) as ws:
        for bad, code in [("not json", "invalid_json"), (json.dumps({"type": "input.push"}), "invalid_message"),
                          (json.dumps({"type": "session.config", "voice": "nobody"}), "invalid_voice"),
                          (json.dumps({"type": "session.config", "response_format": "mp3"}), "invalid_value"),
                          (json.dumps({"type": "session.config", "top_p": 7.0}), "invalid_value"),
                          (json.dumps({"type": "input.text", "text": 3}), "invalid_value")]:
            ws.send(bad)
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
        ws.send(json.dumps({"type": "input.text", "text": "Hi there "}))
        ws.send(json.dumps({"type": "session.config", "voice": "ryan"}))
        reply = json.loads(ws.recv(timeout=30))
        assert reply["code"] == "utterance_open"
        ws.send(json.dumps({"type": "input.text", "text": "x" * (129 * 1024)}))
        messages = _messages(ws, until="error")
        assert messages[-1]["code"] == "message_too_big"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009


def test_api_key_and_hang_up(start_server, model_dir):
    server = start_server(model_dir("customvoice_0b6"), "--api-key", "sesame")
    with _ws(server) as ws:
        reply = json.loads(ws.recv(timeout=30))
        assert reply["type"] == "error" and reply["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    with _ws(server, additional_headers={"Authorization": "Bearer sesame"}) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "vivian", "seed": 2}))
        ws.send(json.dumps({"type": "input.text", "text": "A long text that keeps on going, and going, and "}))
        first = ws.recv(timeout=60)  # audio.start: the row is generating
        assert json.loads(first)["type"] == "audio.start"
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        assert health["active_rows"] == 1
    deadline = time.monotonic() + 10  # the client hung up: the row is freed within a frame or so
    while httpx.get(f"{server.url}/health", timeout=5).json()["active_rows"] != 0:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)
    assert "ws session client left: 1 utterance(s)" in server.log()
    with _ws(server, additional_headers={"Authorization": "Bearer wrong"}) as ws:
        assert json.loads(ws.recv(timeout=30))["code"] == "invalid_api_key"


def test_the_servers_per_request_cap_bounds_a_live_utterance(start_server, model_dir):
    # --ignore-eos: only a cap ends the utterance; 0.4 s of audio is 5 frames at 12.5 Hz.
    server = start_server(model_dir("customvoice_0b6"), "--ignore-eos", "--max-seconds-per-request", "0.4")
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "ryan", "seed": 1, "response_format": "pcm"}))
        ws.send(json.dumps({"type": "input.text", "text": "A text that would take many seconds to say. " * 4}))
        ws.send(json.dumps({"type": "input.done"}))
        messages = _messages(ws, until="audio.done")
    samples = sum(len(m) for m in messages if isinstance(m, bytes)) // 2
    assert 0 < samples <= 5 * 1920
