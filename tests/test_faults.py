"""The fault matrix: whatever a client sends, and whatever fails inside, the host answers with a JSON error
of the right status (or closes a connection that never finishes), loses nothing and keeps serving."""

import json
import shutil
import socket
import time

import httpx
import pytest

from support import (CHAT, DEFAULT_MODEL, ROOT, TINY_MODEL, assert_json_error, failed_start, one_component_app,
                     openai_app, running_host, tiny_chat, wait_for_no_contexts)


def still_serving(host):
    tiny_chat(host)


@pytest.mark.parametrize(
    "body",
    [b'{"messages": [{"role": "user", "content": "hi"', b'{"messages": [{"role": "user", "content": "hi"}], "max_tok',
     b"\xff\xfe\x00garbage", '{"messages": [{"role": "user", "content": "\udcff"}]}'.encode("utf-8", "surrogatepass"),
     b"null", b'"a string"', b'{"messages": {"role": "user"}}', b'{"messages": [{"role": "user", "content": 5}]}',
     b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'],
)
def test_malformed_bodies_are_400(host, body):
    response = httpx.post(host.url + CHAT, content=body, headers={"content-type": "application/json"})
    assert_json_error(response, 400)


def test_a_ten_megabyte_body_is_413(host):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (10 << 20)}]}).encode()
    assert_json_error(httpx.post(host.url + CHAT, content=big, timeout=60), 413)
    still_serving(host)


def test_thousands_of_messages_beyond_the_context_are_400(host):
    messages = [{"role": "user", "content": f"message {i}"} for i in range(5000)]
    body = {"model": TINY_MODEL, "messages": messages, "max_tokens": 2}
    error = assert_json_error(httpx.post(host.url + CHAT, json=body, timeout=60), 400)
    assert error["error"]["code"] == "context_length_exceeded"


def test_a_client_leaving_before_the_response_starts_frees_its_context(host):
    body = json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
                       "max_tokens": 400, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", int(host.url.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)  # generating, no response yet
    wait_for_no_contexts(host, seconds=30)
    still_serving(host)


def test_slow_headers_are_cut_off(host):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(host.url.rsplit(":", 1)[1]))) as raw:
        raw.settimeout(15)
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        reply = raw.recv(4096)
    assert time.monotonic() - started < 10
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
    still_serving(host)


def test_a_body_that_stops_arriving_is_408(host):
    with socket.create_connection(("127.0.0.1", int(host.url.rsplit(":", 1)[1]))) as raw:
        raw.settimeout(15)
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 500\r\n\r\n{\"messages\": [")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = raw.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    error, _ = json.JSONDecoder().raw_decode(body[body.index(b"{"):].decode())
    assert error["error"]["message"] and error["detail"]
    still_serving(host)


def test_an_inference_error_mid_generation_is_500_json_and_frees_the_context(tmp_path):
    """The faults component's step (an attention mask longer than its tokens) reaches the engine only
    where the host does not build the batch itself: on ONNX Runtime, a model without shared cache buffers
    (no `genai_config.json`, as an Optimum export comes), whose contexts run their own steps."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / TINY_MODEL, models / TINY_MODEL)
    (models / TINY_MODEL / "genai_config.json").unlink()
    manifest = one_component_app(tmp_path, "faults", "nnspin_test_faults.wasm", [TINY_MODEL], route="/faults/...")
    with running_host(manifest, "--backend", "onnxruntime", models_dir=models) as host:
        response = httpx.post(host.url + "/faults/compute-error")
        error = assert_json_error(response, 500)
        assert "inference failed" in error["error"]["message"]
        wait_for_no_contexts(host)


def test_a_step_that_does_not_continue_its_cache_is_400_and_frees_the_context(host):
    """Where the host builds each batched pass itself (ONNX Runtime's shared rows, OpenVINO's PagedAttention
    blocks) it checks every step against its context's cache first: the same faulty step is the
    component's mistake, not an engine failure."""
    response = httpx.post(host.url + "/faults/compute-error")
    error = assert_json_error(response, 400)
    assert "3 positions are cached, but this context holds 0" in error["error"]["message"]
    wait_for_no_contexts(host)
    still_serving(host)


def test_a_corrupt_model_file_fails_the_start_clearly(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / TINY_MODEL, models / TINY_MODEL)
    # ONNX Runtime reads model.onnx; OpenVINO the stateful IR the export writes beside it.
    (models / TINY_MODEL / "model.onnx").write_bytes(b"this is not an onnx model")
    (models / TINY_MODEL / "openvino_model.xml").write_bytes(b"this is not an OpenVINO IR")
    manifest = openai_app(tmp_path, [TINY_MODEL])
    for backend, file in (("onnxruntime", "model.onnx"), ("openvino", "openvino_model.xml")):
        (line,) = failed_start(manifest, "--backend", backend, models_dir=models).strip().splitlines()
        assert file in line and TINY_MODEL in line, line


def test_prompts_and_answers_are_not_logged(host):
    marker = "zebra-quokka-4417"
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": f"Repeat {marker}"}], "max_tokens": 3}
    assert httpx.post(host.url + CHAT, json=body).status_code == 200
    assert marker not in "".join(host.log)


def test_a_response_sent_before_the_body_was_read_closes_the_connection(host):
    """hyper cannot reuse a connection whose request body is still unread; the response must say so, or
    the client's next request on that connection is lost."""
    address = host.url.split("//")[1].rsplit(":", 1)
    body = b'{"messages": []}'
    with socket.create_connection((address[0], int(address[1]))) as s:
        # Headers first; the body comes after the answer (a 404 no handler needed the body for).
        s.sendall(b"POST /locallab/nothing-here HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body))
        head = s.recv(65536).split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 404") and b"connection: close" in head, head
    with socket.create_connection((address[0], int(address[1]))) as s:
        # A body read to its end keeps the connection open for the next request.
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(body), body))
        # The answer is chunked and may come in several segments: read it to its last chunk.
        s.settimeout(30)
        answer = s.recv(65536)
        while not answer.endswith(b"0\r\n\r\n"):
            more = s.recv(65536)
            assert more, f"the connection closed before the answer ended: {answer!r}"
            answer += more
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 400") and b"connection: close" not in head, head
        assert b"transfer-encoding: chunked" in head, head
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200"), "the connection was kept for the next request"
