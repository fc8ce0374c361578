"""Every GGUF tensor type the export reads becomes MatMulNBits blocks that reproduce the file's weights:
each block format is decoded by tools/gguf_tensors.py and compared with gguf-py's own dequantization (an
independent reading of the same bytes), on random blocks, blocks of scale zero included. Then the blocks
run through ONNX Runtime's MatMulNBits kernel as the export writes it, against the dense product."""

import sys

import gguf
import numpy as np
import onnxruntime as ort
import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import gguf_tensors  # noqa: E402
from export_model import IR_VERSION, OPSET, DecoderConfig, GraphBuilder  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

N, K = 8, 512  # two K-quant super-blocks per row


def random_tensor(kind: gguf.GGMLQuantizationType, rng) -> np.ndarray:
    """Random bytes in `kind`'s layout, with every f16 field a finite value and a few blocks' scales zero."""
    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (N, K // block, size), dtype=np.uint8)
    f16_fields = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
                  "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[kind.name]
    for at in f16_fields:
        values = rng.uniform(-0.05, 0.05, raw.shape[:-1]).astype(np.float16)
        values[0, 0] = 0  # a block of scale zero: constant (min) or all zero
        raw[..., at:at + 2] = values[..., None].view(np.uint8)
    return raw.reshape(N, -1)


@pytest.mark.parametrize("name", sorted(gguf_tensors.BLOCK_TYPES))
def test_blocks_reproduce_the_files_weights(name):
    kind = gguf.GGMLQuantizationType[name]
    raw = random_tensor(kind, np.random.default_rng(list(gguf_tensors.BLOCK_TYPES).index(name)))
    expected = gguf.dequantize(raw, kind).reshape(N, K)
    blocks = gguf_tensors.BLOCK_TYPES[name](raw, N, K)
    assert blocks.bits in (4, 8) and blocks.block in (16, 32)
    np.testing.assert_allclose(blocks.dequantize(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_0", "Q6_K"])
def test_the_export_computes_them_with_matmulnbits(name):
    kind = gguf.GGMLQuantizationType[name]
    raw = random_tensor(kind, np.random.default_rng(7))
    weights = gguf_tensors.BLOCK_TYPES[name](raw, N, K)
    cfg = DecoderConfig(arch="llama", layers=1, hidden=K, ffn=K, heads=1, kv_heads=1, head_dim=K, vocab=N,
                        context=8, rope_theta=1e4, rms_eps=1e-6)
    graph = GraphBuilder(cfg, "int4")
    y = graph.linear("x", weights, "proj")
    model = helper.make_model(
        helper.make_graph(graph.nodes, "linear",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, K])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 3, N])], graph.inits),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = IR_VERSION
    x = np.random.default_rng(1).standard_normal((1, 3, K)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x})
    np.testing.assert_allclose(out, x @ weights.dequantize().T, rtol=1e-3, atol=1e-4)
