#!/usr/bin/env python3
"""A NumPy forward pass of a GGUF decoder, the reference the export is checked against without llama.cpp.

It reads the file as llama.cpp does, apart from the export's code: weights dequantized by gguf-py, Llama's
rotary embedding on adjacent pairs of the GGUF's (permuted) Q and K rows, Qwen's and Phi-3's on the
halves of each head (NeoX style), Qwen2's Q/K/V biases, Qwen3's and Gemma 3's per-head Q/K norms, Phi-3's
fused matrices, Gemma 3's embedding scale, post-norms, GELU-tanh MLP and local/global layers, causal grouped-query attention, and
logits for every position of a token sequence.

    tools/gguf_reference.py FILE.gguf MODEL_DIR   # |Δlogit| of the exported MODEL_DIR over 16 tokens
"""

import argparse
import sys
from pathlib import Path

import numpy as np

NEOX = {"qwen2", "qwen3", "phi3", "gemma3"}  # rotary on head halves; llama.cpp's LLAMA_ROPE_TYPE_NEOX
# Gemma 3 in llama.cpp: sliding-window layers rotate with base 10000, and every sixth layer is global.
GEMMA3_LOCAL_BASE, GEMMA3_GLOBAL_EVERY = 10000.0, 6


def logits(path: Path, tokens: list[int]) -> np.ndarray:
    """[len(tokens), vocab] next-token logits, in float64."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = lambda name, default=None: reader.fields[name].contents() if name in reader.fields else default  # noqa: E731
    arch = field("general.architecture")
    tensors = {t.name: t for t in reader.tensors}

    def weight(name):
        t = tensors[name]
        values = gguf.dequantize(t.data, t.tensor_type).astype(np.float64)
        return values.reshape([int(d) for d in reversed(t.shape)]) if len(t.shape) > 1 else values.reshape(-1)

    heads, kv_heads = int(field(f"{arch}.attention.head_count")), int(field(f"{arch}.attention.head_count_kv"))
    hidden = int(field(f"{arch}.embedding_length"))
    hd = int(field(f"{arch}.attention.key_length", hidden // heads))
    eps = float(field(f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(field(f"{arch}.rope.freq_base", 10000.0))
    t = len(tokens)

    def rms(x, gamma):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma

    def rope(x, base):  # [t, heads, hd]
        freq = base ** (-np.arange(0, hd, 2) / hd)
        angle = np.arange(t)[:, None, None] * freq[None, None, :]
        cos, sin = np.cos(angle), np.sin(angle)
        if arch in NEOX:
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    x = weight("token_embd.weight")[tokens]
    # Causal, and with a sliding window only the `window` latest positions (llama.cpp's standard SWA).
    distance = np.arange(t)[:, None] - np.arange(t)[None, :]
    window = field(f"{arch}.attention.sliding_window")
    causal = np.where(distance < 0, -np.inf, 0.0)
    windowed = np.where((distance < 0) | (distance >= int(window or t)), -np.inf, 0.0)
    gemma = arch == "gemma3"
    if gemma:
        x = x * np.sqrt(hidden)
    for i in range(int(field(f"{arch}.block_count"))):
        local = window is not None and not (gemma and (i + 1) % GEMMA3_GLOBAL_EVERY == 0)
        mask = windowed if local else causal
        layer_base = GEMMA3_LOCAL_BASE if gemma and local else base
        blk = lambda name: weight(f"blk.{i}.{name}")  # noqa: E731
        h = rms(x, blk("attn_norm.weight"))
        proj = {}
        if f"blk.{i}.attn_qkv.weight" in tensors:  # Phi-3: one matrix, Q rows then K then V
            qkv = h @ blk("attn_qkv.weight").T
            proj = dict(zip(("attn_q", "attn_k", "attn_v"),
                            np.split(qkv, [heads * hd, (heads + kv_heads) * hd], axis=-1)))
        for name in ("attn_q", "attn_k", "attn_v")[len(proj):]:
            proj[name] = h @ blk(f"{name}.weight").T
            if f"blk.{i}.{name}.bias" in tensors:
                proj[name] = proj[name] + blk(f"{name}.bias")
        q = proj["attn_q"].reshape(t, heads, hd)
        k = proj["attn_k"].reshape(t, kv_heads, hd)
        v = proj["attn_v"].reshape(t, kv_heads, hd)
        if f"blk.{i}.attn_q_norm.weight" in tensors:
            q, k = rms(q, blk("attn_q_norm.weight")), rms(k, blk("attn_k_norm.weight"))
        q, k = rope(q, layer_base), rope(k, layer_base)
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attention = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(t, heads * hd)
        attention = attention @ blk("attn_output.weight").T
        x = x + (rms(attention, blk("post_attention_norm.weight")) if gemma else attention)
        h = rms(x, blk("ffn_norm.weight"))
        if f"blk.{i}.ffn_gate.weight" in tensors:
            gate, up = h @ blk("ffn_gate.weight").T, h @ blk("ffn_up.weight").T
        else:  # Phi-3: gate and up in one matrix, gate first
            gate, up = np.split(h @ blk("ffn_up.weight").T, 2, axis=-1)
        if gemma:  # GELU, tanh approximation
            activated = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
        else:
            activated = gate / (1 + np.exp(-gate))
        mlp = (activated * up) @ blk("ffn_down.weight").T
        x = x + (rms(mlp, blk("post_ffw_norm.weight")) if gemma else mlp)
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    return rms(x, weight("output_norm.weight")) @ weight(head).T


def exported_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    """The exported model's logits at every position, one decode step at a time through its KV cache."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from export_model import Decoding

    decoding = Decoding(model_dir / "model.onnx")
    return np.stack([decoding.step([token])[-1] for token in tokens])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest |Δlogit| accepted (exit 1 beyond)")
    args = p.parse_args()
    tokens = list(np.random.default_rng(0).integers(0, 1000, args.tokens))
    expected, got = logits(args.gguf, tokens), exported_logits(args.model_dir, tokens)
    delta = np.abs(expected - got)
    agree = (expected.argmax(-1) == got.argmax(-1)).mean()
    print(f"max |Δlogit| {delta.max():.2e}, mean {delta.mean():.2e}, top-1 agreement {agree:.0%} "
          f"over {len(tokens)} positions (logits up to {np.abs(expected).max():.1f})")
    if delta.max() > args.tolerance:
        sys.exit(f"the export differs from the reference by more than {args.tolerance}")


if __name__ == "__main__":
    main()
