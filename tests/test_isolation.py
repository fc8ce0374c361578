"""Each request runs in its own sandboxed instance: a handler that traps, loops forever or exhausts its
memory fails alone, with a JSON error, while other requests are served; and a component reaches no file,
socket or host it was not granted. Uses the deliberately faulty component in tests/components/faults."""

import concurrent.futures
from urllib.parse import urlparse

import httpx

from support import DEFAULT_MODEL, assert_json_error, tiny_chat


def chat_ok(host) -> bool:
    """A request served in full while the faulty ones fail."""
    return bool(tiny_chat(host, max_tokens=8)["choices"][0]["message"]["content"])


def test_a_trapping_handler_fails_alone(host):
    assert_json_error(httpx.get(host.url + "/faults/trap"), 500)
    assert httpx.get(host.url + "/faults/ok").json() == {"ok": True}
    assert chat_ok(host)


def test_an_endless_loop_is_stopped_while_other_requests_are_served(host):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        looping = pool.submit(httpx.get, host.url + "/faults/loop", timeout=60)
        others = [pool.submit(chat_ok, host) for _ in range(3)]
        assert all(f.result() for f in others)
        response = looping.result()
    assert_json_error(response, 504)
    assert "CPU time" in response.json()["detail"]


def test_a_memory_bomb_is_contained(host):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bomb = pool.submit(httpx.get, host.url + "/faults/memory", timeout=60)
        assert chat_ok(host)
        assert_json_error(bomb.result(), 500)
    assert chat_ok(host)


def test_only_granted_files_can_be_read(host):
    result = httpx.get(host.url + "/faults/read-file").json()
    assert result["allowed"] is False, result
    granted = httpx.get(host.url + "/faults/read-file?path=/data/greeting.txt").json()
    assert granted == {"allowed": True, "contents": "hello from the host"}, granted


def test_a_model_not_listed_for_the_component_is_not_found(host):
    # The /limited mount may use only the tiny model.
    client = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"))
    response = client.post(host.url + "/limited/generate", json={"prompt": "x", "model_id": DEFAULT_MODEL})
    assert response.status_code == 404, response.text


def test_sockets_cannot_be_opened(host):
    port = urlparse(host.url).port
    result = httpx.get(host.url + f"/faults/socket?port={port}").json()
    assert result["allowed"] is False, result


def test_outbound_http_to_hosts_not_granted_is_denied(host):
    port = urlparse(host.url).port
    result = httpx.get(host.url + f"/faults/outbound-http?port={port}", timeout=30).json()
    assert result["allowed"] is False, result
    assert "Denied" in result["error"], result
