#!/usr/bin/env python3
"""What continuous batching can gain on this model, measured straight on ONNX Runtime (no host):

    .venv/bin/python bench/batched_decode.py

1. Correctness: two sequences of different lengths decode in one batched run over a shared KV buffer (one
   row per sequence, GroupQueryAttention reading each row's length from `attention_mask` and writing in
   place, as with `past_present_share_buffer`), and their logits match each sequence run alone.
2. Cost: one decode step of n rows batched, against n single-row steps, for n = 1..16.

The host's execution contexts today each run their own single-row steps (and get a fresh, concatenated
cache back every step); this is the measurement behind moving them onto shared, batched buffers.
"""

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODEL = Path(__file__).resolve().parent.parent / "models" / "smollm2-135m-instruct" / "model.onnx"
THREADS = 2
PAST = 100


class Decoder:
    def __init__(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        self.session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        self.caches = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.presents = [name.replace("past_key_values.", "present.") for name in self.caches]
        _, self.kv_heads, _, self.head_dim = self.session.get_inputs()[3].shape

    def buffers(self, rows: int, positions: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((rows, self.kv_heads, positions, self.head_dim), np.float32) for name in self.caches}

    def step(self, buffers: dict[str, np.ndarray], ids: np.ndarray, positions: np.ndarray,
             lengths: list[int]) -> np.ndarray:
        """Runs `ids` ([rows, t]) at `positions` with each row's cache in place in `buffers` (views of
        whole rows); `lengths` is each row's valid length after the step. Returns the last logits."""
        rows = ids.shape[0]
        mask = np.zeros((rows, max(lengths)), np.int64)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        for past, present in zip(self.caches, self.presents):
            value = ort.OrtValue.ortvalue_from_numpy(buffers[past])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output("logits")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()[:, -1]

    def alone(self, prompt: list[int], steps: int) -> list[np.ndarray]:
        """Greedy steps of one sequence the way the host runs it today: growing, concatenated caches."""
        past = {name: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for name in self.caches}
        tokens, position, logits = prompt, 0, []
        for _ in range(steps):
            feed = {"input_ids": np.array([tokens], np.int64),
                    "attention_mask": np.ones((1, position + len(tokens)), np.int64),
                    "position_ids": np.arange(position, position + len(tokens), dtype=np.int64)[None], **past}
            outputs = self.session.run(None, feed)
            logits.append(outputs[0][0, -1])
            past = dict(zip(self.caches, outputs[1:]))
            position += len(tokens)
            tokens = [int(logits[-1].argmax())]
        return logits


def check_equivalence(decoder: Decoder, steps: int = 4) -> float:
    prompts = [[1, 9690, 198, 2683, 253, 5356, 30, 2, 198, 1, 520], [1, 4093, 198, 19556]]
    expected = [decoder.alone(prompt, steps) for prompt in prompts]
    shared = decoder.buffers(len(prompts), 64)
    worst, lengths, last = 0.0, [], []
    for row, prompt in enumerate(prompts):  # each prompt prefilled into its own row
        view = {name: buffer[row:row + 1] for name, buffer in shared.items()}
        logits = decoder.step(view, np.array([prompt], np.int64), np.arange(len(prompt))[None], [len(prompt)])[0]
        worst = max(worst, float(np.abs(logits - expected[row][0]).max()))
        lengths.append(len(prompt))
        last.append(int(logits.argmax()))
    for step in range(1, steps):  # then every row decodes in one batched run
        ids = np.array([[t] for t in last], np.int64)
        positions = np.array([[length] for length in lengths], np.int64)
        lengths = [length + 1 for length in lengths]
        logits = decoder.step(shared, ids, positions, lengths)
        for row in range(len(prompts)):
            worst = max(worst, float(np.abs(logits[row] - expected[row][step]).max()))
        last = [int(row.argmax()) for row in logits]
    return worst


def main():
    decoder = Decoder()
    print(f"batched over a shared cache vs alone: largest logit difference {check_equivalence(decoder):.1e}")
    print(f"\none decode step with {PAST} cached tokens per row, {THREADS} threads:")
    print("| rows | batched step ms | batched tok/s | single-row steps ms | single-row tok/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for rows in (1, 2, 4, 8, 16):
        buffers = decoder.buffers(rows, PAST + 16)
        ids = np.full((rows, 1), 42, np.int64)
        positions = np.full((rows, 1), PAST, np.int64)
        decoder.step(buffers, ids, positions, [PAST + 1] * rows)  # warm up
        started = time.perf_counter()
        for _ in range(10):
            decoder.step(buffers, ids, positions, [PAST + 1] * rows)
        batched = (time.perf_counter() - started) / 10
        started = time.perf_counter()
        for _ in range(10):
            for row in range(rows):
                view = {name: buffer[row:row + 1] for name, buffer in buffers.items()}
                decoder.step(view, ids[:1], positions[:1], [PAST + 1])
        single = (time.perf_counter() - started) / 10
        print(f"| {rows} | {batched * 1000:.1f} | {rows / batched:.0f} | {single * 1000:.1f} | {rows / single:.0f} | "
              f"{single / batched:.2f} |")


if __name__ == "__main__":
    main()
