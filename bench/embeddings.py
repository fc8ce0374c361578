#!/usr/bin/env python3
"""Embedding throughput of nnspin's /v1/embeddings beside ONNX Runtime's own Python API running the same
graph (models/all-minilm-l6-v2) in-process, with the session settings the host uses: what serving it over
HTTP from a WebAssembly component costs.

    bench/embeddings.py [--sentences 512] [--concurrency 4]

Inputs come from the text bench/quality.py uses (the 1911 Britannica entry on Shakespeare, public
domain): 64 inputs of exactly 16 tokens, and the first `--sentences` sentences of 5 to 60 words.
Embeddings per second, each the best of three runs: 1 and 32 inputs per request against ORT in batches of
1 and 32; 1 input per request with `--concurrency` requests at a time (the host merges their passes)
against ORT one at a time; every sentence in one request against ORT in batches of 32 sorted by length.
"""

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import ROOT, start_host  # noqa: E402
from quality import sentences  # noqa: E402

MODEL = "all-minilm-l6-v2"


def best_of(runs: int, measure) -> float:
    return min(measure() for _ in range(runs))


def ort_session():
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(ROOT / "models" / MODEL / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def ort_embed(session, tokenizer, batch: list[str]):
    rows = [tokenizer.encode(s).ids for s in batch]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def inputs_of(tokens: int, count: int, tokenizer) -> list[str]:
    """`count` texts of the corpus that the tokenizer frames as exactly `tokens` tokens."""
    found, words = [], []
    for word in text().split():
        words.append(word)
        length = len(tokenizer.encode(" ".join(words)).ids)
        if length == tokens:
            found.append(" ".join(words))
            words = []
        elif length > tokens:
            words = [word]
        if len(found) == count:
            return found
    sys.exit(f"the text gives fewer than {count} inputs of {tokens} tokens")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    corpus = sentences(args.sentences)

    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / MODEL / "tokenizer.json"))
    session = ort_session()
    sixteen = inputs_of(16, 64, tokenizer)
    by_length = sorted(corpus, key=lambda s: len(tokenizer.encode(s).ids))

    def timed(work) -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started

    def ort_batches(texts, size):
        return lambda: [ort_embed(session, tokenizer, texts[i:i + size]) for i in range(0, len(texts), size)]

    process, url = start_host()
    try:
        client = httpx.Client(base_url=url, timeout=600)

        def post(inputs):
            response = client.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
            response.raise_for_status()
            return response.json()

        # One connection per concurrent client, made once (a client costs more to make than a request).
        clients = threading.local()

        def post_apart(inputs):
            if not hasattr(clients, "client"):
                clients.client = httpx.Client(base_url=url, timeout=600)
            body = {"model": MODEL, "input": inputs}
            return clients.client.post("/v1/embeddings", json=body).raise_for_status()

        def requests(texts, size):
            return lambda: [post(texts[i:i + size]) for i in range(0, len(texts), size)]

        def concurrent():
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(post_apart, sixteen))

        post(corpus[:4])
        vectors = np.array([d["embedding"] for d in post(corpus[:8])["data"]])
        agreement = float(np.abs(vectors - ort_embed(session, tokenizer, corpus[:8])).max())
        rows = []
        for name, count, ours, theirs in [
            ("1 input of 16 tokens per request", len(sixteen), requests(sixteen, 1), ort_batches(sixteen, 1)),
            ("32 inputs of 16 tokens per request", len(sixteen), requests(sixteen, 32), ort_batches(sixteen, 32)),
            (f"1 input of 16 tokens, {args.concurrency} requests at a time", len(sixteen), concurrent,
             ort_batches(sixteen, 1)),
            (f"{len(corpus)} sentences in one request", len(corpus), requests(corpus, len(corpus)),
             ort_batches(by_length, 32)),
        ]:
            rows.append((name, count / best_of(3, lambda: timed(ours)), count / best_of(3, lambda: timed(theirs))))
    finally:
        process.terminate()
        process.wait()

    tokens = sum(len(tokenizer.encode(s).ids) for s in corpus)
    print(f"sentences: {tokens / len(corpus):.1f} tokens each on average; largest difference nnspin vs ORT: "
          f"{agreement:.1e}")
    print(f"{'embeddings per second':52} {'nnspin':>8} {'ORT':>8} {'ratio':>6}")
    for name, ours, theirs in rows:
        print(f"{name:52} {ours:8.1f} {theirs:8.1f} {ours / theirs:6.2f}")
    print("ORT: the same graph in-process in batches of 1, 32, 1 and 32 (sorted by length) respectively")


if __name__ == "__main__":
    main()
