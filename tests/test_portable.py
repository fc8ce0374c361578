"""The portable build's model form: tools/export_openvino_ir.py rewrites the exported decoder as a stateful
OpenVINO IR with standard attention, the form upstream `wasmtime serve -S nn` loads. It must compute what
the ONNX decoder computes. (The portable component itself is built and served on upstream wasmtime by
bench/portable.py, which needs a 30-minute build of wasmtime-cli; its compiled-in tokenizer has unit
tests, run by tests/run.sh.)"""

import subprocess
import sys

import numpy as np
import openvino as ov
import pytest

from support import DEFAULT_MODEL, ROOT

EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / DEFAULT_MODEL
    subprocess.run([sys.executable, "tools/export_openvino_ir.py", "--model", f"models/{DEFAULT_MODEL}",
                    "--out", str(out)], cwd=ROOT, check=True)
    return out


def step_inputs(tokens: list[int], past: int) -> dict:
    n = len(tokens)
    return {"input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, past + n), np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64)[None]}


def test_the_ir_takes_only_the_new_tokens_and_keeps_the_cache_as_state(ir):
    model = ov.Core().read_model(ir / "model.xml")
    assert sorted(n for i in model.inputs for n in i.get_names()) == ["attention_mask", "input_ids", "position_ids"]
    assert [n for o in model.outputs for n in o.get_names()] == ["logits"]
    assert len(model.get_sinks()) == 2 * sum(1 for op in model.get_ordered_ops()
                                             if op.get_type_name() == "ScaledDotProductAttention")


def test_the_ir_computes_what_the_onnx_decoder_computes(ir):
    core = ov.Core()
    stateful = core.compile_model(ir / "model.xml", "CPU", EXACT).create_infer_request()
    onnx = core.compile_model(ROOT / "models" / DEFAULT_MODEL / "model.onnx", "CPU", EXACT)
    reference = onnx.create_infer_request()
    # The reference runs every step from scratch: empty caches [batch 1, kv_heads, 0, head_dim].
    empty = {}
    for i in onnx.inputs:
        if i.get_any_name().startswith("past_key_values."):
            shape = i.get_partial_shape()
            empty[i.get_any_name()] = np.zeros((1, shape[1].get_length(), 0, shape[3].get_length()), np.float32)
    # "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n" as the tokenizer writes it.
    tokens = [1, 4093, 198, 5820, 1296, 14797, 30, 2, 198, 1, 520, 9531, 198]
    prompt = len(tokens)
    logits = stateful.infer(step_inputs(tokens, 0))["logits"][0, -1]
    worst = 0.0
    for _ in range(6):
        expected = reference.infer({**step_inputs(tokens, 0), **empty})["logits"][0, -1]
        worst = max(worst, float(np.abs(logits - expected).max()))
        assert logits.argmax() == expected.argmax()
        tokens.append(int(logits.argmax()))
        logits = stateful.infer(step_inputs(tokens[-1:], len(tokens) - 1))["logits"][0, -1]
    assert worst < 1e-3, f"max |Δlogit| {worst} over {len(tokens) - prompt} steps"


def test_the_ir_has_the_shapes_openvino_fuses(ir):
    """The default model's Q8_0 head, which model.onnx splits into two 4-bit halves for ONNX Runtime, is
    one 8-bit compressed matmul again, and each rotary embedding compiles into one fused RoPE node (the
    rewrites that make a decode pass ~15% faster: a pattern that stops matching fails here, not silently)."""
    model = ov.Core().read_model(ir / "model.xml")
    weights = [op for op in model.get_ordered_ops()
               if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.u4, ov.Type.u8)]
    head = [op for op in weights if op.get_shape()[0] == 49152 and len(op.get_shape()) == 3
            and op.get_shape()[2] == 32]
    # The embedding table and the head: both 8-bit codes of 18 blocks of 32 (576 columns), none doubled.
    assert [(op.get_element_type(), list(op.get_shape())) for op in head] == [(ov.Type.u8, [49152, 18, 32])] * 2
    compiled = ov.Core().compile_model(model, "CPU", EXACT)
    layers = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()]
    attention = sum(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ordered_ops())
    assert layers.count("RoPE") == 2 * attention
