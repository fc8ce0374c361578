"""Observability and load: Prometheus metrics and request ids, a context freed when its client
disconnects, and overload answered with 503 + Retry-After without losing any accepted request."""

import concurrent.futures
import contextlib
import json
import time

import httpx
import pytest

from support import DEFAULT_MODEL, TINY_MODEL, host_metric, metric, openai_app, running_host, wait_for_metric


def test_metrics_and_request_ids(host):
    response = httpx.post(
        host.openai_url + "/chat/completions",
        json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"x-request-id": "trace-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    assert httpx.get(host.url + "/health").headers["x-request-id"], "a request id is made when none is sent"

    metrics = httpx.get(host.url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert metric(text, "nnspin_requests_total", route="/...", status="200") >= 1
    assert metric(text, "nnspin_instantiation_seconds_count") >= 1
    assert metric(text, "nnspin_model_load_seconds", model=TINY_MODEL) > 0
    assert metric(text, "nnspin_time_to_first_token_seconds_count", model=TINY_MODEL) >= 1
    assert metric(text, "nnspin_generated_tokens_total", model=TINY_MODEL) >= 1
    assert metric(text, "nnspin_decode_seconds_total", model=TINY_MODEL) > 0


def test_requests_count_as_in_flight_until_their_last_byte(host):
    # The metrics request itself is in flight while it is answered.
    idle = host_metric(host, "nnspin_requests_in_flight")
    assert idle >= 1
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1000,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", host.openai_url + "/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)
        assert host_metric(host, "nnspin_requests_in_flight") == idle + 1
    wait_for_metric(host, "nnspin_requests_in_flight", idle)


def test_a_client_disconnecting_mid_stream_frees_its_context(host):
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1000,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", host.openai_url + "/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        during = metric(httpx.get(host.url + "/metrics").text, "nnspin_execution_contexts", model=TINY_MODEL)
        assert during == 1
    # The connection is closed: the handler's next write fails and it drops the context.
    deadline = time.monotonic() + 10
    while metric(httpx.get(host.url + "/metrics").text, "nnspin_execution_contexts", model=TINY_MODEL) != 0:
        assert time.monotonic() < deadline, "the context was not released"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
def test_overload_is_refused_with_retry_after_and_nothing_is_lost(tmp_path, stream):
    manifest = openai_app(tmp_path, [TINY_MODEL])
    with running_host(manifest, "--max-sequences-per-model", "1", "--max-queue-per-model", "1") as host:
        body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "tell"}], "max_tokens": 300,
                "temperature": 0, "stream": stream}

        def send(_):
            return httpx.post(host.url + "/v1/chat/completions", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, range(8)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        served = [r for r in responses if r.status_code == 200]
        assert refused and served, statuses
        for r in refused:
            assert r.headers["retry-after"] == "1"
            assert "capacity" in r.json()["detail"]
        for r in served:
            if stream:
                # Overload is a status before the stream starts, never an error event inside one.
                events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]" and all('"error"' not in e for e in events), r.text[-500:]
                assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
            else:
                assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        text = httpx.get(host.url + "/metrics").text
        assert metric(text, "nnspin_rejected_total", model=TINY_MODEL) == len(refused)
        assert metric(text, "nnspin_requests_total", route="/...", status="200") == len(served)
        assert metric(text, "nnspin_queue_depth", model=TINY_MODEL) == 0
        assert metric(text, "nnspin_execution_contexts", model=TINY_MODEL) == 0


@pytest.mark.parametrize("placement, admitted", [
    ((), 32),  # OpenVINO on PagedAttention: every context's steps in shared passes
    (("--backend", "openvino", "--format", "onnx"), 8),  # an infer request per context, each computing alone
])
def test_a_model_that_batches_its_contexts_admits_more_sequences_by_default(tmp_path, placement, admitted):
    manifest = openai_app(tmp_path, [DEFAULT_MODEL])
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 400, "temperature": 0, "stream": True}
    with running_host(manifest, *placement, "--max-queue-per-model", "0") as host, \
            contextlib.ExitStack() as streams:
        statuses, running = [], []
        for _ in range(admitted + 1):
            response = streams.enter_context(
                httpx.stream("POST", host.openai_url + "/chat/completions", json=body, timeout=120))
            statuses.append(response.status_code)
            if response.status_code == 200:
                # Kept: dropping the iterator would close the connection (and free the context).
                running.append(response.iter_lines())
                next(running[-1])  # the stream has begun: its context is open
        # Held open, the first `admitted` streams all run; the next is refused, with no queue to wait in.
        assert statuses == [200] * admitted + [503], statuses
        assert host_metric(host, "nnspin_execution_contexts", model=DEFAULT_MODEL) == admitted


def test_choices_decoding_as_rows_take_a_turn_each(tmp_path):
    """A request's choices decode as rows of one context, and each row is a sequence the model admits: with
    4 sequences at once and no queue, a request streaming 4 choices leaves no room for another."""
    manifest = openai_app(tmp_path, [TINY_MODEL])
    # No end of turn (the tiny model's end tokens 0 and 2), so the choices run their whole length.
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 800, "temperature": 1.0, "seed": 3, "n": 4, "stream": True,
            "logit_bias": {"0": -100, "2": -100}}
    single = {**body, "n": 1, "stream": False, "max_tokens": 2}
    with running_host(manifest, "--max-sequences-per-model", "4", "--max-queue-per-model", "0") as host:
        url = host.openai_url + "/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            # Every choice has streamed a few tokens: the context's steps carry four rows.
            contents = 0
            while contents < 12:
                line = next(lines)
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    contents += 1
            refused = httpx.post(url, json=single, timeout=60)
            assert refused.status_code == 503, refused.text
        wait_for_metric(host, "nnspin_execution_contexts", 0, model=TINY_MODEL)
        assert httpx.post(url, json=single, timeout=60).status_code == 200
