"""The server's input and connections before any work, against one real `serve` process on loopback:
the key is checked before the body is read, bodies are bounded while they arrive, malformed input
is a 400, slow senders and clients that stop reading are dropped (raw sockets), every request has
an id and one log line, each request is capped by the server, and CORS lets the OpenAI JS SDK's
preflight through (checked in headless chromium)."""

import http.server
import json
import re
import socket
import threading
import time

import httpx
import pytest

from mlx_qwen_tts.server.health import engine_health
from mlx_qwen_tts.server.cli import _is_loopback
from mlx_qwen_tts.server.registry import NAME, check_name
from test_server import assert_openai_error, health, wait_for

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 2  # --client-timeout
CAP_FRAMES = 500  # --max-seconds-per-request 40 at 12.5 frames/s
PAGE = b"<!doctype html><title>sdk page</title>"
# What the official OpenAI JS SDK adds to every request (openai-node's platform and retry headers).
STAINLESS = {"X-Stainless-Lang": "js", "X-Stainless-Package-Version": "5.20.0", "X-Stainless-OS": "Unknown",
             "X-Stainless-Arch": "unknown", "X-Stainless-Runtime": "browser:chrome",
             "X-Stainless-Runtime-Version": "120.0.0", "X-Stainless-Retry-Count": "0", "X-Stainless-Timeout": "600"}


@pytest.fixture(scope="module")
def page():
    """A page on another loopback origin, for the browser's cross-origin calls."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(start_server, model_dir, page):
    # --ignore-eos: every request runs to its max_frames (or the server's cap), so lengths are known.
    return start_server(model_dir("customvoice_0b6"), "--api-key", KEY, "--client-timeout", TIMEOUT_S,
                        "--max-seconds-per-request", 40, "--ignore-eos", "--cors-origin", page)


def raw(server, head: bytes, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    s.sendall(head)
    return s


def request_head(method="POST", path="/v1/audio/speech", headers=(), body=b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(s: socket.socket) -> int:
    return int(s.recv(4096).split(b" ", 2)[1])


def say(**extra):
    return {"input": "Hello there.", "voice": "ryan", "response_format": "pcm", **extra}


# -- before the body ---------------------------------------------------------------------------------

def test_the_key_is_checked_before_the_body_is_read(server):
    url = f"{server.url}/v1/audio/speech"
    # A body that never comes: the 401 must not wait for it.
    with raw(server, request_head(headers=["Content-Type: application/json", "Content-Length: 1000"])) as s:
        s.settimeout(TIMEOUT_S / 2)
        assert status_of(s) == 401
    for content in (b'{"input": "Hi', b"\xff\xfe junk", b"[" * 100_000):
        r = httpx.post(url, content=content, headers={"Content-Type": "application/json"})
        assert assert_openai_error(r, 401)["type"] == "authentication_error"
    r = httpx.post(url, content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 401)


def test_bodies_are_bounded_while_they_arrive(server):
    declared = request_head(headers=["Authorization: Bearer sekret", "Content-Length: 1000000000"])
    with raw(server, declared) as s:  # refused on the header, before a byte of the body
        assert status_of(s) == 413
    chunked = request_head(headers=["Authorization: Bearer sekret", "Content-Type: application/json",
                                    "Transfer-Encoding: chunked"])
    with raw(server, chunked) as s:  # no length given: refused once the bytes read pass the limit
        try:
            for _ in range(17):  # 64 KB past the 1 MB limit: the server reads it all, so its close is clean
                s.sendall(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass
        assert status_of(s) == 413
    r = httpx.post(f"{server.url}/v1/audio/voices", headers=AUTH, files={"audio": b"\0" * (11 << 20)},
                   data={"name": "v"})
    assert_openai_error(r, 413)


def test_slow_headers_and_bodies_are_dropped(server):
    started = time.monotonic()
    with raw(server, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n") as s:
        s.settimeout(0.5)
        closed = False
        while not closed and time.monotonic() - started < 4 * TIMEOUT_S:
            try:
                s.sendall(b"X")  # a header byte now and then: slowloris
                closed = s.recv(100) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
    assert closed and time.monotonic() - started < TIMEOUT_S + 1.5
    head = request_head(headers=["Authorization: Bearer sekret", "Content-Type: application/json",
                                 "Content-Length: 100"], body=b'{"in')
    started = time.monotonic()
    with raw(server, head) as s:
        assert status_of(s) == 408 and time.monotonic() - started < TIMEOUT_S + 1.5
    wait_for(lambda: "sent no complete request for 2 s" in server.log(), 5, "the slowloris log line")


MALFORMED = [
    ({"input": "\ud800 lone surrogate", "voice": "ryan"}, "input"),
    ({"input": "Hi.", "voice": "ryan", "instructions": "\udfff"}, "instructions"),
    ({"input": "Hi.", "voice": "\ud800"}, "voice"),
    ({"input": "Hi.", "voice": {"id": "\ud800"}}, "voice"),
    ({"input": "Hi.", "voice": "ryan", "language": "\udc00"}, "language"),
    ({"input": "Hi.", "voice": "ryan", "model": "\ud83d"}, "model"),
    ({"input": "Hi.", "voice": "ryan", "top_k": 10**20}, "top_k"),
    ({"input": "Hi.", "voice": "ryan", "top_k": 2**31}, "top_k"),
    ({"input": "Hi.", "voice": "ryan", "max_frames": 10**30}, "max_frames"),
    ({"input": "Hi.", "voice": "ryan", "seed": 2**64}, "seed"),
    ({"input": "Hi.", "voice": "ryan", "temperature": 1e308}, "temperature"),
    ({"input": {"nested": [[[["junk"]]]]}, "voice": "ryan"}, "input"),
    ({"input": ["Hi."], "voice": "ryan"}, "input"),
]


@pytest.mark.parametrize("body, param", MALFORMED, ids=[f"{p}-{i}" for i, (_, p) in enumerate(MALFORMED)])
def test_malformed_input_is_a_400(server, body, param):
    content = json.dumps(body).encode()  # json.dumps writes lone surrogates as \ud800 escapes
    r = httpx.post(f"{server.url}/v1/audio/speech", content=content, timeout=30,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(r, 400, param)


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"input": "\xff\xfe"}', b'{"input": 1e999999}',
                                     b'{"input": "Hi.", "voice": "ryan", "seed": 1' + b"0" * 5000 + b"}"])
def test_malformed_json_is_a_400(server, content):
    r = httpx.post(f"{server.url}/v1/audio/speech", content=content, timeout=30,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(r, 400)


# -- while it runs --------------------------------------------------------------------------------------

def test_a_client_that_stops_reading_is_dropped_and_its_row_freed(server):
    body = json.dumps(say()).encode()  # no max_frames: the server's cap, ~40 s of pcm (1.9 MB)
    head = request_head(headers=["Authorization: Bearer sekret", "Content-Type: application/json",
                                 f"Content-Length: {len(body)}", "X-Request-Id: never-reads"], body=body)
    with raw(server, head, rcvbuf=4096):  # connected, never read
        wait_for(lambda: health(server)["active_rows"] == 1, 10, "the row to start")
        wait_for(lambda: health(server)["active_rows"] == 0, 20, "the stalled client's row to be freed")
        wait_for(lambda: "never-reads POST" in server.log(), 10, "the request's log line")
    line = re.search(r"never-reads POST /v1/audio/speech 200 .*", server.log()).group(0)
    assert "outcome=cancelled" in line and "stopped reading the response" in server.log()
    assert int(re.search(r"frames=(\d+)", line).group(1)) < CAP_FRAMES


def test_the_server_caps_each_request_and_says_so(server):
    def done_event(**extra):
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", headers=AUTH, timeout=120,
                          json=say(stream_format="sse", **extra)) as r:
            assert r.status_code == 200
            return json.loads([line for line in r.iter_lines() if line.startswith("data:")][-1][5:])

    capped = done_event(max_frames=10**6)
    assert capped["type"] == "speech.audio.done" and capped["stop_reason"] == "server_limit"
    assert capped["usage"]["output_tokens"] == CAP_FRAMES
    own = done_event(max_frames=3)
    assert own["stop_reason"] == "max_frames" and own["usage"]["output_tokens"] == 3
    assert re.search(rf"POST /v1/audio/speech 200 .*frames={CAP_FRAMES} stop=server_limit", server.log())


# -- ids, log lines, health ----------------------------------------------------------------------------

def test_every_response_has_a_request_id_and_one_log_line(server):
    r = httpx.post(f"{server.url}/v1/audio/speech", headers={**AUTH, "X-Request-Id": "trace-42"},
                   json=say(max_frames=3))
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    wait_for(lambda: "trace-42 " in server.log(), 10, "the log line")
    line = [x for x in server.log().splitlines() if "trace-42 " in x]
    assert len(line) == 1 and re.search(r"trace-42 POST /v1/audio/speech 200 replica=\S+ voice=ryan format=pcm "
                                        r"outcome=ok frames=3 stop=max_frames rtf=\S+ ttfb=\d+\.\d+s audio=0\.24s",
                                        line[0])
    ids = set()
    for bad in ("has space", "x" * 129, "tab\there", "é"):
        r = httpx.get(f"{server.url}/v1/models", headers={**AUTH, "X-Request-Id": bad.encode("utf-8")})
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 4
    for r, status in [(httpx.get(f"{server.url}/v1/models"), 401), (httpx.get(f"{server.url}/v1/nothing",
                                                                              headers=AUTH), 404),
                      (httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, json={"input": ""}), 400)]:
        rid = r.headers["x-request-id"]
        assert r.status_code == status
        wait_for(lambda: f"{rid} " in server.log(), 10, "the error's log line")
        assert re.search(rf"{rid} \S+ \S+ {status} replica=\S+ error=\w+ ttfb=", server.log())
    forged = httpx.get(f"{server.url}/v1/x%0A00:00:00 INFO forged", headers=AUTH)  # a newline in the path
    assert forged.status_code == 404
    wait_for(lambda: forged.headers["x-request-id"] in server.log(), 10, "the 404's log line")
    assert "/v1/x%0A00:00:00" in server.log() and not re.search(r"^\S+ INFO forged", server.log(), re.M)
    assert health(server)["status"] == "ok" and health(server)["engine_lag_s"] < 1


def test_health_reports_a_stalled_engine():
    class Engine:  # an engine whose thread has been in one turn for lag_s seconds
        lag_s = 0.0

    engine = Engine()
    assert engine_health(engine, True) == (200, {"status": "ok", "engine_lag_s": 0.0})
    engine.lag_s = 7.5
    assert engine_health(engine, True) == (503, {"status": "stalled", "engine_lag_s": 7.5})
    assert engine_health(engine, False) == (200, {"status": "starting", "engine_lag_s": 7.5})


def test_the_engine_reports_how_long_its_thread_is_stuck(model_dir):
    import mlx.core as mx

    from mlx_qwen_tts.engine.service import Engine
    from mlx_qwen_tts.loading import load_model

    with Engine(load_model(model_dir("customvoice_0b6"), dtype=mx.float32), max_batch=1) as engine:
        time.sleep(0.2)
        assert engine.lag_s == 0  # waiting for work
        blocked = engine.call(time.sleep, 1.5)  # holds the engine's thread, as a long prefill would
        time.sleep(0.8)
        assert 0.5 < engine.lag_s < 1.5
        blocked.result()
        wait_for(lambda: engine.lag_s == 0, 5, "the engine to wait for work again")


def test_voice_names_must_match_whole():
    assert check_name("narrator_2") == "narrator_2"
    for name in ("narrator\n", "a\nb", "x" * 65, "", "a.b"):
        with pytest.raises(ValueError):
            check_name(name)
        assert not NAME.match(name)  # the registry's folder scan uses match


def test_non_loopback_hosts_are_told_apart():
    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "example.com"))


# -- CORS -------------------------------------------------------------------------------------------

def test_the_openai_js_sdk_preflight_passes(server, page):
    wanted = ",".join(["authorization", "content-type", *(h.lower() for h in STAINLESS)])
    r = httpx.options(f"{server.url}/v1/audio/speech", headers={
        "Origin": page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": wanted})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == page
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert set(wanted.split(",")) <= allowed


def test_a_browser_calls_the_server_like_the_openai_js_sdk(server, page, browser):
    browser.get(page + "/")
    result = browser.execute_async_script("""
        const [url, headers, body, done] = arguments;
        fetch(url, {method: "POST", headers, body}).then(async r => done({
            status: r.status, id: r.headers.get("x-request-id"), bytes: (await r.arrayBuffer()).byteLength
        })).catch(e => done({error: String(e)}));
    """, f"{server.url}/v1/audio/speech", {**AUTH, **STAINLESS, "Content-Type": "application/json"},
        json.dumps(say(max_frames=3)))
    assert result.get("status") == 200 and result["bytes"] == 3 * 1920 * 2, result
    assert re.fullmatch(r"[0-9a-f]{32}", result["id"] or "")  # readable: X-Request-Id is exposed
    result = browser.execute_async_script("""
        const [url, done] = arguments;
        fetch(url, {headers: {"X-Stainless-Lang": "js"}}).then(r => done({status: r.status}))
            .catch(e => done({error: String(e)}));
    """, f"{server.url}/v1/models")
    assert result == {"status": 401}  # the 401 carries CORS headers too: the SDK sees the status
