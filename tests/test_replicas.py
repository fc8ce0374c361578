"""Several nnspin replicas behind a real load balancer (HAProxy, from Debian, configured as
deploy/haproxy/haproxy.cfg), all inside a network namespace the test creates, whose only interface is its
own loopback: requests spread over the replicas, a replica killed mid-run loses no request it had not
accepted, a draining replica (SIGTERM) finishes its streams and is sent no new ones, and rate limits and
API keys hold per replica as README.md says. The client's threads enter the namespace too (setns)."""

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support import CHAT, ROOT, TINY_MODEL, component, free_port, start_host, write_app

CLONE_NEWNET = 0x40000000
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
KEY = "sk-replicas-test"


@pytest.fixture(scope="module")
def namespace():
    name = f"nnspin-replicas-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def enter(namespace: str):
    """Moves the calling thread into the namespace: its sockets are the namespace's from then on."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{namespace}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")


def inside(namespace: str, function, *args):
    """Runs `function(*args)` on a thread inside the namespace."""
    with ThreadPoolExecutor(1, initializer=enter, initargs=(namespace,)) as pool:
        return pool.submit(function, *args).result()


@contextlib.contextmanager
def replicas(namespace, tmp_path, count, *args, **component_keys):
    """`count` hosts of one app inside the namespace, each with the same API keys file, and HAProxy in front
    of them with deploy/haproxy/haproxy.cfg; yields (the proxy's URL, the hosts)."""
    keys = tmp_path / "api-keys"
    keys.write_text(KEY + "\n")
    # /health on a component of its own, which no rate limit applies to: the proxy's checks come from one
    # address, as a kubelet's probes do.
    manifest = write_app(tmp_path, "replicas", {"/v1/...": "openai", "/health": "health"},
                         [component("openai", "nnspin_openai.wasm", [TINY_MODEL], **component_keys),
                          component("health", "nnspin_openai.wasm", [TINY_MODEL])])
    wrapper = ("ip", "netns", "exec", namespace)
    hosts = [start_host(manifest, "--api-keys-file", str(keys), "--shutdown-grace-secs", "20", *args,
                        wrapper=wrapper) for _ in range(count)]
    port = inside(namespace, free_port)
    servers = "".join(f"    server replica{i} {host.url.removeprefix('http://')} check\n" for i, host in enumerate(hosts))
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.read_text().replace("bind 0.0.0.0:8080", f"bind 127.0.0.1:{port}")
                      .split("    server replica")[0] + servers)
    proxy = subprocess.Popen([*wrapper, "haproxy", "-db", "-f", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        deadline = time.monotonic() + 20
        while True:
            try:
                stats = httpx.get(url + "/health", timeout=2)
                if stats.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proxy.poll() is None, proxy.stdout.read() if proxy.poll() is not None else ""
            time.sleep(0.2)
    try:
        inside(namespace, up)
        # Every replica in rotation: the checks run every second and two successes bring a server up.
        time.sleep(2.5)
        yield url, hosts
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        for host in hosts:
            host.stop()


def stream(client: httpx.Client, url: str, max_tokens: int) -> dict:
    """One streamed chat completion; what came back of it."""
    started = time.monotonic()
    result = {"started": started, "replica": None, "status": None, "done": False, "error": None}
    body = {"model": TINY_MODEL, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Count."}]}
    try:
        with client.stream("POST", url + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
            result["status"] = response.status_code
            result["replica"] = response.headers.get("x-replica")
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    result["done"] = True
    except httpx.HTTPError as e:
        result["error"] = repr(e)
    result["ended"] = time.monotonic()
    return result


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def test_a_killed_replica_and_a_draining_one_lose_no_request_they_had_not_accepted(namespace, tmp_path):
    with replicas(namespace, tmp_path, 3) as (url, hosts):
        killed, drained, _ = hosts
        events = {}
        stop = threading.Event()
        results = []

        def client_loop():
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    results.append(stream(client, url, 48))

        with ThreadPoolExecutor(6, initializer=enter, initargs=(namespace,)) as pool:
            for _ in range(6):
                pool.submit(client_loop)
            time.sleep(4)
            events["kill"] = time.monotonic()
            killed.process.send_signal(signal.SIGKILL)
            time.sleep(3)
            events["drain"] = time.monotonic()
            drained.process.send_signal(signal.SIGTERM)
            time.sleep(4)
            stop.set()
        assert drained.process.wait(timeout=30) == 0, "".join(drained.log)

    names = {host: f"replica{i}" for i, host in enumerate(hosts)}
    complete = [r for r in results if r["status"] == 200 and r["done"]]
    lost = [r for r in results if r not in complete]
    # Only streams the killed replica had accepted and was still sending when it died are cut off.
    for r in lost:
        assert r["replica"] == names[killed] and r["started"] < events["kill"] < r["ended"], r
    before = [r for r in complete if r["ended"] < events["kill"]]
    after = [r for r in complete if r["started"] > events["kill"] + 1]
    assert {r["replica"] for r in before} == set(names.values()), "requests did not spread over the replicas"
    assert not [r for r in complete if r["replica"] == names[killed] and r["started"] > events["kill"]]
    # The draining replica finished what it had and was given nothing after SIGTERM (once the host has
    # handled the signal and closed its listener: half a second covers a loaded machine).
    draining = [r for r in complete if r["replica"] == names[drained] and r["started"] < events["drain"] < r["ended"]]
    assert not [r for r in complete if r["replica"] == names[drained] and r["started"] > events["drain"] + 0.5]
    served = {name: sum(r["replica"] == name for r in complete) for name in names.values()}
    print(f"\n{len(results)} requests, {len(complete)} complete, {len(lost)} cut off on the killed replica; "
          f"served per replica {served}; {len(draining)} streams finished while draining; "
          f"p99 latency {p99([r['ended'] - r['started'] for r in before]) * 1000:.0f} ms before the kill, "
          f"{p99([r['ended'] - r['started'] for r in after]) * 1000:.0f} ms after")
    assert after, "nothing was served after the kill"


def test_rate_limits_count_per_replica_per_client_behind_a_trusted_proxy(namespace, tmp_path):
    """Each replica keeps its own buckets: a client gets `burst` requests from each replica. Behind the proxy,
    the client is the address HAProxy forwards (--trusted-proxy names the proxy's address)."""
    with replicas(namespace, tmp_path, 2, "--trusted-proxy", "127.0.0.1",
                  rate_limit="{ requests_per_minute = 1, burst = 2 }") as (url, _):
        def statuses(client_address: str) -> list[tuple[int, str]]:
            transport = httpx.HTTPTransport(local_address=client_address)
            with httpx.Client(transport=transport, timeout=30) as client:
                replies = [client.post(url + CHAT, headers={"Authorization": f"Bearer {KEY}"}, json={
                    "model": TINY_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                    for _ in range(6)]
            return [(r.status_code, r.headers.get("x-replica")) for r in replies]

        for address in ["127.0.0.2", "127.0.0.3"]:
            replies = inside(namespace, statuses, address)
            served = [replica for status, replica in replies if status == 200]
            assert sorted(served) == ["replica0", "replica0", "replica1", "replica1"], replies
            assert [status for status, _ in replies].count(429) == 2, replies


def test_api_keys_are_checked_by_every_replica(namespace, tmp_path):
    with replicas(namespace, tmp_path, 2) as (url, _):
        def replies(headers):
            with httpx.Client(timeout=30) as client:
                return [client.post(url + CHAT, headers=headers, json={
                    "model": TINY_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                    for _ in range(4)]

        refused = inside(namespace, replies, {})
        assert {r.status_code for r in refused} == {401}
        assert {r.headers["x-replica"] for r in refused} == {"replica0", "replica1"}
        assert refused[0].json()["error"]["message"]
        accepted = inside(namespace, replies, {"Authorization": f"Bearer {KEY}"})
        assert {r.status_code for r in accepted} == {200}
