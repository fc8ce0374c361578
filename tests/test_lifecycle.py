"""The process's life as a scale-to-zero platform sees it: 503 while loading, a compilation cache for
fast restarts, graceful shutdown on SIGTERM, exit after an idle period, and a clear failure at start."""

import signal
import socket
import time

import httpx
import pytest

from support import DEFAULT_MODEL, TINY_MODEL, openai_app, running_host, start_host


def manifest(tmp_path, models):
    return openai_app(tmp_path, models)


def test_health_is_503_while_loading_then_200(tmp_path):
    # Compiling without the cache and loading the default model leave a window of about a second.
    with running_host(manifest(tmp_path, [DEFAULT_MODEL]), "--no-cache", wait="listening") as host:
        response = httpx.get(host.url + "/health")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "loading" in response.json()["detail"]
        deadline = time.monotonic() + 120
        while httpx.get(host.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)


def test_a_health_check_without_a_host_header_is_answered(tmp_path):
    """Load balancers' checks are often HTTP/1.0 without Host (HAProxy's default `option httpchk`); an
    HTTP/1.1 request without one is malformed and gets 400."""
    with running_host(manifest(tmp_path, [TINY_MODEL])) as host:
        address = host.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((address[0], int(address[1])), timeout=10) as connection:
            connection.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            reply = b"".join(iter(lambda: connection.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b'{"ok":true}'), reply
        with socket.create_connection((address[0], int(address[1])), timeout=10) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            reply = b"".join(iter(lambda: connection.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.1 400") and b"needs a Host header" in reply, reply


def test_compiled_components_are_cached_between_starts(tmp_path):
    cache = tmp_path / "cache"
    first = start_host(manifest(tmp_path, [TINY_MODEL]), "--cache-dir", str(cache))
    assert first.stop() == 0
    assert any("origin=Compiled" in line for line in first.log), "".join(first.log)
    assert list(cache.glob("*.cwasm"))
    with running_host(manifest(tmp_path, [TINY_MODEL]), "--cache-dir", str(cache)) as second:
        assert any("origin=Cache" in line for line in second.log), "".join(second.log)
        assert httpx.get(second.url + "/health").json() == {"ok": True}


def test_sigterm_lets_the_request_in_flight_finish(tmp_path):
    host = start_host(manifest(tmp_path, [TINY_MODEL]))
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    events = []
    with httpx.stream("POST", host.url + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                if len(events) == 2:
                    host.process.send_signal(signal.SIGTERM)
    assert events[-1] == "data: [DONE]", events[-3:]
    assert len(events) > 10
    assert host.process.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(host.url + "/health")


def test_idle_timeout_exits_cleanly(tmp_path):
    host = start_host(manifest(tmp_path, [TINY_MODEL]), "--idle-timeout-secs", "1")
    assert httpx.get(host.url + "/health").status_code == 200
    assert host.process.wait(timeout=20) == 0
    assert any("Idle" in line for line in host.log), "".join(host.log)


def test_a_missing_model_fails_the_start_clearly(tmp_path):
    with pytest.raises(RuntimeError) as failed:
        start_host(manifest(tmp_path, ["no-such-model"]))
    message = str(failed.value)
    assert "no-such-model" in message and "does not exist" in message
