#!/usr/bin/env python3
"""Write an exported decoder as a stateful OpenVINO IR (``model.xml`` + ``model.bin``).

The model directories ``tools/export_model.py`` writes hold an ONNX decoder whose attention is ONNX
Runtime's ``GroupQueryAttention`` contrib operator with explicit ``past_key_values.*`` inputs. OpenVINO reads
that file (nnspin's OpenVINO backend does), but the operator becomes an OpenVINO-internal node that no IR
reader accepts, and the explicit caches make a guest carry the whole KV cache through every step. This tool
rewrites each attention node with OpenVINO's standard operators (rotary embedding from ``position_ids``,
grouped heads broadcast to the query heads, ``ScaledDotProductAttention`` with a causal mask by position)
and makes the caches internal state (``ReadValue``/``Assign``), so the IR's only inputs are
``input_ids``, ``attention_mask`` and ``position_ids`` and its only output is ``logits``.

That is the form upstream ``wasmtime serve -S nn -S nn-graph=openvino::DIR`` loads (it reads
``DIR/model.xml`` and ``DIR/model.bin`` and names the graph after ``DIR``): an execution context's infer
request holds its sequence's cache between ``compute`` calls. nnspin's own OpenVINO backend serves it too.

    tools/export_openvino_ir.py --model models/smollm2-135m-instruct --out target/portable/smollm2-135m-instruct
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino._offline_transformations import apply_make_stateful_transformation

PAST = "past_key_values."
PRESENT = "present."


class NotRewritable(Exception):
    """The model's attention has a form this tool does not write with standard operators."""


def rotate(x: ov.Output, cos: ov.Output, sin: ov.Output) -> ov.Output:
    """Rotary embedding in the half-split (non-interleaved) layout: [x1, x2] -> [x1 c - x2 s, x2 c + x1 s],
    written as ``x * [c, c] + [-x2, x1] * [s, s]``, the form of Hugging Face's ``rotate_half`` that OpenVINO's
    RoPE fusion matches (a split on axis 3, a multiply by -1, a concat), so each becomes one fused node
    instead of ten. The same numbers: negating is exact and ``a + (-b)`` is ``a - b``."""
    half = x.get_partial_shape()[3].get_length() // 2
    x1, x2 = ops.variadic_split(x, ops.constant(np.int64(3)), ops.constant(np.array([half, half], np.int64))).outputs()
    minus_one = ops.constant(np.full((1, 1, 1, 1), -1, np.float32))
    rotated = ops.concat([ops.multiply(x2, minus_one), x1], -1)
    return ops.add(ops.multiply(x, ops.concat([cos, cos], -1)),
                   ops.multiply(rotated, ops.concat([sin, sin], -1))).output(0)


def attention(node: ov.Node, position_ids: ov.Output) -> tuple[ov.Output, ov.Output, ov.Output]:
    """Standard operators computing what one GroupQueryAttention node computes, for its three outputs."""
    attrs = node.get_attributes()
    if attrs.get("local_window_size", -1) not in (-1, 0) or attrs.get("rotary_interleaved"):
        raise NotRewritable(f"{node.get_friendly_name()}: sliding windows and interleaved rotary are not rewritten")
    heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    q, k, v, past_k, past_v = (node.input_value(i) for i in range(5))
    cos_cache, sin_cache = node.input_value(7), node.input_value(8)
    head_dim = q.get_partial_shape()[3].get_length()

    if attrs.get("do_rotary"):
        # [batch, seq, head_dim / 2], broadcast over heads.
        cos = ops.unsqueeze(ops.gather(cos_cache, position_ids, 0), 1).output(0)
        sin = ops.unsqueeze(ops.gather(sin_cache, position_ids, 0), 1).output(0)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    present_k = ops.concat([past_k, k], 2).output(0)
    present_v = ops.concat([past_v, v], 2).output(0)

    # Each key/value head serves heads / kv_heads consecutive query heads (as GroupQueryAttention groups
    # them): broadcast [b, kv, t, d] to [b, kv, group, t, d] and fold it into [b, heads, t, d].
    def expand(cache: ov.Output) -> ov.Output:
        shape = ops.shape_of(cache, "i64")
        batch_kv = ops.gather(shape, ops.constant([0, 1], np.int64), 0)
        tail = ops.gather(shape, ops.constant([2, 3], np.int64), 0)
        group = ops.constant([heads // kv_heads], np.int64)
        wide = ops.broadcast(ops.unsqueeze(cache, 2), ops.concat([batch_kv, group, tail], 0))
        folded = ops.concat([ops.gather(shape, ops.constant([0], np.int64), 0),
                             ops.constant([heads], np.int64), tail], 0)
        return ops.reshape(wide, folded, False).output(0)

    # Query at position p sees keys 0..p: mask [batch, 1, seq, total] from position_ids.
    total = ops.gather(ops.shape_of(present_k, "i64"), ops.constant(2, np.int64), 0)
    keys = ops.range(ops.constant(0, np.int64), total, ops.constant(1, np.int64), "i64")
    allowed = ops.less_equal(keys, ops.unsqueeze(position_ids, -1))
    mask = ops.unsqueeze(allowed, 1)
    scale = float(attrs.get("scale") or 0.0) or 1.0 / math.sqrt(head_dim)
    out = ops.scaled_dot_product_attention(q, expand(present_k), expand(present_v), mask,
                                           ops.constant(np.float32(scale)), causal=False)
    # [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]
    out = ops.transpose(out, ops.constant([0, 2, 1, 3], np.int64))
    out = ops.reshape(out, ops.constant([0, 0, heads * head_dim], np.int64), True)
    return out.output(0), present_k, present_v


def rename(value: ov.Output, old: ov.Output) -> None:
    """Moves `old`'s tensor names (`present.0.key`, ...) to `value`, which replaces it."""
    value.get_tensor().set_names(old.get_names())
    old.get_tensor().set_names(set())


def rewrite(model: ov.Model) -> int:
    position_ids = next(p.output(0) for p in model.get_parameters() if "position_ids" in p.output(0).get_names())
    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "GroupQueryAttention":
            continue
        for old, new in zip(node.outputs(), attention(node, position_ids)):
            rename(new, old)
            old.replace(new)
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


def compressed_weight(matmul: ov.Node) -> tuple[ov.Node, ov.Node, tuple[int, int, int]] | None:
    """A matmul's weight as OpenVINO reads a ``MatMulNBits`` (and writes a compressed matmul):
    ``Reshape(Multiply(Subtract(codes, zero points), scales))`` from ``[N, blocks, block]`` to ``[N, K]``.
    Returns the ``Subtract`` (codes, zero points), the scales' node and ``(N, blocks, block)``; None for any
    other weight."""
    weight = matmul.input_value(1).get_node()
    scaled = weight.input_value(0).get_node() if weight.get_type_name() == "Reshape" else None
    if scaled is None or scaled.get_type_name() != "Multiply":
        return None
    centred, scales = (scaled.input_value(i).get_node() for i in range(2))
    if centred.get_type_name() != "Subtract":
        return None
    n, blocks, block = (d.get_length() for d in scaled.get_output_partial_shape(0))
    return centred, scales, (n, blocks, block)


def fold_block_offsets(model: ov.Model) -> int:
    """Folds each quantized projection's block offsets into its zero points; returns how many it folded.

    The export writes a block-quantized projection as ONNX Runtime's fast kernels take it: 4-bit blocks at
    the kernel's default zero point, ``s * (q - 8)``, plus the exact remainder of each block's offset
    (Q4_1's minimum, a K-quant's sub-block offset) as a second, small matmul of per-block input sums
    ``sum(x) * s * (8 - z)``. OpenVINO's compressed matmul takes any zero point, so here both become one:
    ``s * (q - z)`` with ``z = 8 - offset / s``, which leaves each projection one compressed matmul instead of
    that plus an f32 matmul, a reduction and an add (about 11% of a decode step in f32 and 16% in bf16 on the
    default model, by OpenVINO's per-node counters). A block whose scale is 0 but whose offset is not cannot
    be written so: its projection keeps the second matmul."""
    folded = 0
    for add in model.get_ordered_ops():
        if add.get_type_name() != "Add":
            continue
        main, correction = (add.input_value(i).get_node() for i in range(2))
        if main.get_type_name() != "MatMul" or correction.get_type_name() != "MatMul":
            continue
        sums, offsets = (correction.input_value(i).get_node() for i in range(2))
        if sums.get_type_name() != "ReduceSum" or offsets.get_type_name() != "Constant":
            continue
        weight = compressed_weight(main)
        if weight is None:
            continue
        centred, scales, (n, blocks, _) = weight
        zero, scale_values = constant_values(centred.input_value(1).get_node()), constant_values(scales)
        if zero is None or scale_values is None:
            continue
        s = scale_values.astype(np.float64).reshape(n, blocks)
        offset = offsets.get_data().astype(np.float64).T.reshape(n, blocks)
        if np.any((s == 0) & (offset != 0)):
            continue
        z = np.broadcast_to(zero.astype(np.float64).reshape(-1)[0], (n, blocks))
        z = z - np.divide(offset, s, out=np.zeros_like(offset), where=s != 0)
        centred.input(1).replace_source_output(ops.constant(z.reshape(n, blocks, 1).astype(np.float32)).output(0))
        add.output(0).replace(main.output(0))
        folded += 1
    model.validate_nodes_and_infer_types()
    return folded


def join_nibbles(model: ov.Model) -> int:
    """Joins each 8-bit projection the export split into 4-bit halves back into one 8-bit compressed matmul;
    returns how many it joined.

    ONNX Runtime's fp32-activation kernel for 8-bit blocks is far slower than its 4-bit one, so the export
    writes an 8-bit matrix (a Q8_0 tied head: the default model's largest matmul) as a 4-bit matrix of
    twice the depth over the input repeated, ``16 s (hi - 8)`` beside ``s (lo - (z - 128))``
    (``BlockQuantized.split_nibbles``). OpenVINO has a fast 8-bit compressed matmul, and there the split
    only doubles the head's work (by OpenVINO's per-node counters, in bf16 on the default model: 6.3 ms
    split, 3.1 joined, of a 25-30 ms decode pass of 8 sequences). Joined: codes ``16 hi + lo``, scales
    ``s``, zero points ``z``, the same numbers."""
    joined = 0
    for matmul in model.get_ordered_ops():
        if matmul.get_type_name() != "MatMul":
            continue
        doubled = matmul.input_value(0).get_node()
        if doubled.get_type_name() != "Concat" or doubled.get_input_size() != 2:
            continue
        first = doubled.input_value(0)
        if first != doubled.input_value(1):
            continue
        weight = compressed_weight(matmul)
        transposed = matmul.get_attributes()
        if weight is None or transposed["transpose_a"] or not transposed["transpose_b"]:
            continue
        centred, scales, (n, double_blocks, block) = weight
        codes = centred.input_value(0).get_node()
        codes = codes.input_value(0).get_node() if codes.get_type_name() == "Convert" else codes
        zeros, scale_values = constant_values(centred.input_value(1).get_node()), constant_values(scales)
        if (codes.get_type_name() != "Constant" or codes.get_element_type() != ov.Type.u4
                or zeros is None or scale_values is None):
            continue
        blocks = double_blocks // 2
        packed = codes.get_data().reshape(n, double_blocks, block // 2)
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, double_blocks, block)
        s = scale_values.astype(np.float32).reshape(n, double_blocks)
        z = np.broadcast_to(zeros.astype(np.float32).reshape(n if zeros.size > 1 else 1, -1), (n, double_blocks))
        if not (np.array_equal(s[:, :blocks], 16 * s[:, blocks:]) and np.all(z[:, :blocks] == 8)):
            continue
        u = (16 * nibbles[:, :blocks] + nibbles[:, blocks:]).astype(np.uint8)
        dequantized = ops.multiply(
            ops.subtract(ops.convert(ops.constant(u), ov.Type.f32),
                         ops.constant(np.ascontiguousarray(z[:, blocks:] + 128).reshape(n, blocks, 1))),
            ops.constant(np.ascontiguousarray(s[:, blocks:]).reshape(n, blocks, 1)))
        dense = ops.reshape(dequantized, ops.constant(np.array([n, blocks * block], np.int64)), False)
        single = ops.matmul(first, dense, False, True)
        single.set_friendly_name(matmul.get_friendly_name())
        matmul.output(0).replace(single.output(0))
        joined += 1
    model.validate_nodes_and_infer_types()
    return joined


def constant_values(node: ov.Node) -> np.ndarray | None:
    """The values a constant, perhaps converted and reshaped, holds; None if it is not one."""
    while node.get_type_name() in ("Convert", "Reshape"):
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def initialise_state(model: ov.Model) -> None:
    """Starts each cache as an empty `[batch, kv_heads, 0, head_dim]` tensor, its batch that of `input_ids`
    (a `ReadValue` without an initial value would start with batch 0)."""
    input_ids = next(p.output(0) for p in model.get_parameters() if "input_ids" in p.output(0).get_names())
    batch = ops.gather(ops.shape_of(input_ids, "i64"), ops.constant([0], np.int64), 0)
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ReadValue":
            continue
        shape = node.get_output_partial_shape(0)
        fixed = [shape[1].get_length(), 0, shape[3].get_length()]
        empty = ops.broadcast(ops.constant(np.float32(0)),
                              ops.concat([batch, ops.constant(fixed, np.int64)], 0))
        node.set_arguments([empty.output(0)])
    model.validate_nodes_and_infer_types()


def add_beam_idx(model: ov.Model) -> None:
    """Reads each cache state through `Gather(state, beam_idx)`, as optimum-intel's stateful exports do: the
    input names the cache row each batch row continues, and OpenVINO's transformation to PagedAttention
    (`paged_attention_transformation`) matches only caches read that way."""
    beam_idx = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ReadValue":
            continue
        readers = [t for t in node.output(0).get_target_inputs() if t.get_node().get_type_name() != "Assign"]
        reordered = ops.gather(node.output(0), beam_idx, ops.constant(0, np.int64)).output(0)
        for target in readers:
            target.replace_source_output(reordered)
    model.add_parameters([beam_idx])
    model.validate_nodes_and_infer_types()


def stateful(onnx_model: Path, beam_idx: bool = False) -> tuple[ov.Model, int, int]:
    """The exported decoder with standard attention and its caches as state; with the number of attention
    layers rewritten and of caches made state."""
    model = ov.Core().read_model(onnx_model)
    fold_block_offsets(model)
    join_nibbles(model)
    rewritten = rewrite(model)
    names = {name for param in model.inputs for name in param.get_names()}
    caches = {name: PRESENT + name[len(PAST):] for name in names if name.startswith(PAST)}
    apply_make_stateful_transformation(model, caches)
    initialise_state(model)
    if beam_idx:
        add_beam_idx(model)
    return model, rewritten, len(caches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model directory holding model.onnx")
    p.add_argument("--out", type=Path, required=True,
                   help="directory to write model.xml and model.bin to (its name is the graph's name upstream)")
    p.add_argument("--beam-idx", action="store_true",
                   help="read the caches through a beam_idx input, as optimum-intel's exports do")
    args = p.parse_args()

    try:
        model, rewritten, caches = stateful(args.model / "model.onnx", args.beam_idx)
    except NotRewritable as e:
        sys.exit(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, args.out / "model.xml", compress_to_fp16=False)
    inputs = sorted(n for i in model.inputs for n in i.get_names())
    print(f"{args.out}: {rewritten} attention layers rewritten, {caches} caches made state; "
          f"inputs {', '.join(inputs)}")


if __name__ == "__main__":
    main()
