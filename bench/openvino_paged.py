#!/usr/bin/env python3
"""What batching the OpenVINO backend through PagedAttention can gain on an exported model, measured straight
on OpenVINO (no host), the route OpenVINO GenAI's continuous batching takes:

    .venv/bin/python bench/openvino_paged.py [--model models/smollm2-135m-instruct] [--precision exact|fast]

The export's decoder is rewritten with standard attention and its caches made state read through
`beam_idx` (tools/export_openvino_ir.py), then OpenVINO's `paged_attention_transformation` turns every
attention into a PagedAttention node over block tables: inputs `input_ids` and `position_ids` for all the
tokens of a pass, `past_lens`, `subsequence_begins`, `block_indices_begins`, `block_indices` and
`max_context_len`, and per layer `key_cache.N`/`value_cache.N` of [blocks, kv_heads, block_size, head_size].

1. Correctness: two prompts of different lengths prefilled in one pass, then one decode step of both in one
   pass, against ONNX Runtime running each alone on the export (largest |Δlogit|, same top-1).
2. Cost: one decode step of n sequences (each with CONTEXT cached positions) in one pass, n = 1..16,
   beside one step of the backend's path today (the ONNX export with explicit caches, one sequence).

The transformation must run in the serving process: the PagedAttention nodes it writes keep their head
counts and sizes in runtime info that neither an IR file nor an exported blob carries (OpenVINO 2026.4:
compiling a saved one fails with "Runtime info k_head_size and num_k_heads are required"), and the C API
the host uses has no transformations; so the host needs it through OpenVINO's C++ API.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
from openvino._offline_transformations import paged_attention_transformation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import export_openvino_ir  # noqa: E402

CONTEXT = 128
ROWS = [1, 2, 4, 8, 16]
REPEAT = 10
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "KV_CACHE_PRECISION": "f32"}


class Paged:
    """The PagedAttention form of the model, compiled, with its caches allocated."""

    def __init__(self, onnx_model: Path, config: dict, blocks: int):
        model, _, _ = export_openvino_ir.stateful(onnx_model, beam_idx=True)
        paged_attention_transformation(model)
        compiled = ov.Core().compile_model(model, "CPU", {**config, "INFERENCE_NUM_THREADS": "2"})
        self.request = compiled.create_infer_request()
        caches = [i for i in compiled.inputs if i.get_any_name().startswith(("key_cache.", "value_cache."))]
        # The value cache's third axis is the block size; a u8 key cache (fast mode) quantizes by channel and
        # keeps its scales and zero points as extra rows there.
        value = next(c for c in caches if c.get_any_name().startswith("value_cache."))
        self.block_size = value.get_partial_shape()[2].get_length()
        for cache in caches:
            dims = [blocks] + [cache.get_partial_shape()[d].get_length() for d in (1, 2, 3)]
            self.request.set_tensor(cache.get_any_name(), ov.Tensor(cache.get_element_type(), dims))
        self.cache_type = caches[0].get_element_type()

    def run(self, sequences: list[tuple[np.ndarray, int, list[int]]]) -> np.ndarray:
        """One pass over `sequences` (new tokens, cached positions, blocks); returns each one's last logits."""
        lengths = [len(tokens) for tokens, _, _ in sequences]
        inputs = {
            "input_ids": np.concatenate([tokens for tokens, _, _ in sequences]).astype(np.int64),
            "position_ids": np.concatenate([np.arange(past, past + len(tokens))
                                            for tokens, past, _ in sequences]).astype(np.int64),
            "past_lens": np.array([past for _, past, _ in sequences], np.int32),
            "subsequence_begins": np.cumsum([0] + lengths).astype(np.int32),
            "block_indices_begins": np.cumsum([0] + [len(b) for _, _, b in sequences]).astype(np.int32),
            "block_indices": np.concatenate([b for _, _, b in sequences]).astype(np.int32),
            "max_context_len": np.array(max(past + len(t) for t, past, _ in sequences), np.int32),
        }
        for name, value in inputs.items():
            self.request.set_tensor(name, ov.Tensor(value))
        self.request.infer()
        logits = self.request.get_tensor("logits").data
        return logits[np.cumsum(lengths) - 1, -1]

    def blocks_for(self, positions: int, first: int) -> list[int]:
        return list(range(first, first + -(-positions // self.block_size)))


def reference(session: ort.InferenceSession, tokens: np.ndarray) -> np.ndarray:
    """ONNX Runtime's last logits for `tokens` from an empty cache."""
    feeds = {"input_ids": tokens[None], "attention_mask": np.ones((1, len(tokens)), np.int64),
             "position_ids": np.arange(len(tokens))[None]}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return session.run(["logits"], feeds)[0][0, -1]


def explicit_step_ms(onnx_model: Path, config: dict) -> float:
    """One single-sequence decode step of the backend's path today: the ONNX export on OpenVINO, its
    caches passed in and handed back."""
    compiled = ov.Core().compile_model(str(onnx_model), "CPU", {**config, "INFERENCE_NUM_THREADS": "2"})
    request = compiled.create_infer_request()
    for i in compiled.inputs:
        name = i.get_any_name()
        if name.startswith("past_key_values."):
            shape = i.get_partial_shape()
            request.set_tensor(name, ov.Tensor(np.zeros((1, shape[1].get_length(), CONTEXT,
                                                         shape[3].get_length()), np.float32)))
    request.set_tensor("input_ids", ov.Tensor(np.array([[5]], np.int64)))
    request.set_tensor("position_ids", ov.Tensor(np.array([[CONTEXT]], np.int64)))
    request.set_tensor("attention_mask", ov.Tensor(np.ones((1, CONTEXT + 1), np.int64)))
    request.infer()
    started = time.perf_counter()
    for _ in range(REPEAT):
        request.infer()
    return (time.perf_counter() - started) / REPEAT * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    p.add_argument("--precision", choices=["exact", "fast"], default="exact",
                   help="exact: fp32 activations and caches; fast: the CPU plugin's defaults")
    args = p.parse_args()
    onnx_model = args.model / "model.onnx"
    config = EXACT if args.precision == "exact" else {}
    paged = Paged(onnx_model, config, blocks=max(ROWS) * (CONTEXT // 32 + 2) + 8)
    print(f"{args.model.name}, {args.precision}: caches {paged.cache_type}, blocks of {paged.block_size}")

    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    first, second = rng.integers(100, 10000, 40), rng.integers(100, 10000, 70)
    a_blocks, b_blocks = paged.blocks_for(41, 0), paged.blocks_for(71, 8)
    prefill = paged.run([(first, 0, a_blocks), (second, 0, b_blocks)])
    wanted = [reference(session, first), reference(session, second)]
    nexts = [int(w.argmax()) for w in wanted]
    step = paged.run([(np.array([nexts[0]]), 40, a_blocks), (np.array([nexts[1]]), 70, b_blocks)])
    wanted_step = [reference(session, np.append(first, nexts[0])), reference(session, np.append(second, nexts[1]))]
    for name, got, want in [("prefill of two prompts", prefill, wanted), ("decode step of both", step, wanted_step)]:
        delta = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        same = all(int(g.argmax()) == int(w.argmax()) for g, w in zip(got, want))
        print(f"  {name} in one pass: max |Δlogit| {delta:.2e} against ONNX Runtime alone, same top-1: {same}")

    today = explicit_step_ms(onnx_model, config)
    print(f"\n  one decode step, {CONTEXT} positions cached per sequence (2 threads)")
    print(f"  {'sequences':>9} {'ms/pass':>8} {'tok/s':>7} {'vs today':>9}")
    print(f"  {'today, 1':>9} {today:8.1f} {1000 / today:7.1f} {1.0:8.2f}x")
    for rows in ROWS:
        sequences = [(np.array([5]), CONTEXT, paged.blocks_for(CONTEXT + 1, r * (CONTEXT // 32 + 2)))
                     for r in range(rows)]
        paged.run(sequences)
        started = time.perf_counter()
        for _ in range(REPEAT):
            paged.run(sequences)
        ms = (time.perf_counter() - started) / REPEAT * 1000
        print(f"  {rows:>9} {ms:8.1f} {rows * 1000 / ms:7.1f} {rows * today / ms:8.2f}x")


if __name__ == "__main__":
    main()
