#!/usr/bin/env python3
"""An exported GGUF beside llama.cpp reading the same file: greedy continuations and teacher-forced logits.

    .venv/bin/python bench/gguf_llama_cpp.py --gguf FILE --model models/NAME [--dequantized]

llama.cpp (llama-cpp-python from bench/requirements.txt, CPU, weight repacking off as bench/ does
everywhere) is the reference implementation of the GGUF format. Both engines get the same token ids
(llama.cpp's tokenizer, BOS as the file asks):

- for each of a fixed set of prompts, the first 32 greedy tokens: the export through ONNX Runtime in exact
  mode (fp32 activations, one decode step at a time through its KV cache) and llama.cpp; printed is how many
  tokens agree from the start, and both texts;
- teacher-forced logits over windows of 512 tokens (each from an empty cache) of bench/quality.py's
  public-domain text, at least --positions in all: max and mean |Δlogit| and the same-top-1 rate.

llama.cpp's CPU backend multiplies quantized weights with activations quantized to 8 bits (Q8_0/Q8_K), so
on a quantized file it differs from exact arithmetic by that much, while the export computes the file's
weights exactly in fp32. `--dequantized` gives llama.cpp the same weights widened to F32 (a GGUF written
once under target/quality/), which it multiplies in fp32: what remains is the engines' arithmetic.

tests/test_gguf_architectures.py checks the export against a NumPy reading of tiny GGUFs in CI; this is the
check against llama.cpp for real files, which needs llama.cpp's 20-minute build.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tools")]
from export_model import Decoding  # noqa: E402
from llama_cpp_server import disable_repacking  # noqa: E402
from quality import WORK, all_positions, text  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
]
GREEDY_TOKENS = 32
WINDOW = 512


def dequantized(path: Path) -> Path:
    """`path` with every tensor widened to F32 (metadata as it is), written once under target/quality/."""
    import gguf

    out = WORK / f"{path.stem}.f32.gguf"
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    source = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(out), source.fields["general.architecture"].contents())
    for name, field in source.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub_type)
    for tensor in source.tensors:
        values = gguf.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, values.reshape([int(d) for d in reversed(tensor.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def llama_cpp(path: Path, context: int):
    import llama_cpp

    disable_repacking()
    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=WINDOW, n_threads=2, logits_all=True,
                           verbose=False)


class Export:
    """The exported model through ONNX Runtime in exact mode: last-position logits per step, and a variant
    with every position's logits for teacher forcing."""

    def __init__(self, model_dir: Path):
        self.model = model_dir / "model.onnx"
        whole = WORK / f"{model_dir.name}-all-positions" / "model.onnx"
        if not whole.exists():
            whole.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(all_positions(onnx.load(self.model)), whole, save_as_external_data=True,
                      location="model.onnx_data")
        self.whole = Decoding(whole, threads=2)

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        decoding, new, out = Decoding(self.model, threads=2), list(prompt), []
        for _ in range(count):
            new = [int(decoding.step(new)[-1].argmax())]
            out += new
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.whole.reset()
        return self.whole.step(tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="the exported model directory")
    p.add_argument("--positions", type=int, default=2048, help="teacher-forced positions, at least")
    p.add_argument("--dequantized", action="store_true",
                   help="give llama.cpp the file's weights widened to F32, so it computes without 8-bit activations")
    args = p.parse_args()

    llm = llama_cpp(dequantized(args.gguf) if args.dequantized else args.gguf, context=max(WINDOW, 256))
    export = Export(args.model)
    print(f"{'prompt':<44} agree  llama.cpp / export")
    agreements = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        reference = []
        llm.reset()
        llm.eval(ids)
        for _ in range(GREEDY_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            reference.append(token)
            llm.eval([token])
        ours = export.greedy(ids, GREEDY_TOKENS)
        agree = next((i for i, (a, b) in enumerate(zip(reference, ours)) if a != b), GREEDY_TOKENS)
        agreements.append(agree)
        print(f"{prompt!r:<44} {agree:>2}/{GREEDY_TOKENS}  {llm.detokenize(reference).decode(errors='replace')!r}"
              f" / {llm.detokenize(ours).decode(errors='replace')!r}")

    tokens = llm.tokenize(text().encode(), add_bos=False, special=False)
    largest, total, same, positions = 0.0, 0.0, 0, 0
    for start in range(0, len(tokens) - WINDOW, WINDOW):
        if positions >= args.positions:
            break
        window = llm.tokenize(b"", add_bos=True, special=False) + tokens[start:start + WINDOW - 1]
        llm.reset()
        llm.eval(window)
        reference = np.array(llm.scores[:len(window)], np.float32)
        ours = export.logits(window)
        delta = np.abs(reference - ours)
        largest, total = max(largest, float(delta.max())), total + float(delta.mean()) * len(window)
        same += int((reference.argmax(-1) == ours.argmax(-1)).sum())
        positions += len(window)
    print(f"\ngreedy: {sum(a == GREEDY_TOKENS for a in agreements)}/{len(PROMPTS)} prompts agree on all "
          f"{GREEDY_TOKENS} tokens (per prompt: {agreements})")
    print(f"teacher-forced, {positions} positions: max |Δlogit| {largest:.4f}, mean {total / positions:.5f}, "
          f"same top-1 {same / positions:.2%}")


if __name__ == "__main__":
    main()
