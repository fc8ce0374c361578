#!/usr/bin/env python3
"""Embedding throughput of nnspin's /v1/embeddings beside ONNX Runtime's own Python API running the same
graph (models/all-minilm-l6-v2) in-process, with the session settings the host uses: what serving it over
HTTP from a WebAssembly component costs.

    bench/embeddings.py [--sentences 512] [--batch 32] [--concurrency 4]

Sentences: the first `--sentences` of 5 to 60 words from the text bench/quality.py uses (the 1911
Britannica entry on Shakespeare, public domain). Figures, each the best of three runs:
* a whole list in one request (`input` = every sentence) vs ORT in batches of `--batch`, rows padded to
  each batch's longest, sorted by length as the component sorts them;
* one sentence per request, one at a time (latency p50) and `--concurrency` at a time (throughput), vs ORT
  one sentence per run.
"""

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import ROOT, start_host  # noqa: E402
from quality import text  # noqa: E402

MODEL = "all-minilm-l6-v2"


def sentences(count: int) -> list[str]:
    found = []
    for sentence in text().replace("\n", " ").split(". "):
        words = sentence.split()
        if 5 <= len(words) <= 60:
            found.append(" ".join(words) + ".")
        if len(found) == count:
            return found
    sys.exit(f"the text has fewer than {count} sentences of 5 to 60 words")


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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    corpus = sentences(args.sentences)
    singles = corpus[:64]

    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / MODEL / "tokenizer.json"))
    session = ort_session()
    by_length = sorted(corpus, key=lambda s: len(tokenizer.encode(s).ids))

    def ort_list():
        started = time.perf_counter()
        for i in range(0, len(by_length), args.batch):
            ort_embed(session, tokenizer, by_length[i:i + args.batch])
        return time.perf_counter() - started

    def ort_singles():
        started = time.perf_counter()
        for s in singles:
            ort_embed(session, tokenizer, [s])
        return time.perf_counter() - started

    process, url = start_host()
    try:
        client = httpx.Client(base_url=url, timeout=600)

        def post(inputs):
            response = client.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
            response.raise_for_status()
            return response.json()

        post(corpus[:4])

        def nnspin_list():
            started = time.perf_counter()
            post(corpus)
            return time.perf_counter() - started

        latencies = []

        def nnspin_singles():
            started = time.perf_counter()
            for s in singles:
                one = time.perf_counter()
                post(s)
                latencies.append(time.perf_counter() - one)
            return time.perf_counter() - started

        def nnspin_concurrent():
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(post, singles))
            return time.perf_counter() - started

        vectors = np.array([d["embedding"] for d in post(corpus[:8])["data"]])
        agreement = float(np.abs(vectors - ort_embed(session, tokenizer, corpus[:8])).max())
        figures = {
            "list": (len(corpus) / best_of(3, nnspin_list), len(corpus) / best_of(3, ort_list)),
            "single": (len(singles) / best_of(3, nnspin_singles), len(singles) / best_of(3, ort_singles)),
            "concurrent": (len(singles) / best_of(3, nnspin_concurrent), None),
        }
    finally:
        process.terminate()
        process.wait()

    tokens = sum(len(tokenizer.encode(s).ids) for s in corpus)
    print(f"{len(corpus)} sentences, {tokens / len(corpus):.1f} tokens each on average; "
          f"largest difference nnspin vs ORT: {agreement:.1e}")
    print(f"{'figure':44} {'nnspin':>10} {'ORT in-process':>15} {'ratio':>7}")
    rows = [
        (f"one request of {len(corpus)} (sentences/s)", *figures["list"]),
        ("one sentence per request, serial (sentences/s)", *figures["single"]),
        (f"one per request, {args.concurrency} at a time (sentences/s)", figures["concurrent"][0],
         figures["single"][1]),
    ]
    for name, ours, theirs in rows:
        print(f"{name:44} {ours:10.1f} {theirs:15.1f} {ours / theirs:7.2f}")
    print(f"latency of one sentence, p50: {statistics.median(latencies) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
