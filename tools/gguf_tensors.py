"""GGUF tensor types as ONNX Runtime's ``MatMulNBits`` blocks, without loss wherever the format allows.

Every block-quantized GGUF type stores, per block of weights, integers ``q`` and either a scale (``w = d*q``,
a fixed offset subtracted from ``q``) or a scale and a minimum (``w = d*q + m``). ``MatMulNBits`` computes
``w = (q - zero) * scale`` per block of ``block`` weights, with 4- or 8-bit ``q`` and a float zero point, so:

======  =====================================  ======  =====  ==========================
type    GGUF block                              bits    block  zero point
======  =====================================  ======  =====  ==========================
Q4_0    d, 32 x 4-bit, ``d*(q-8)``             4       32     8
Q4_1    d, m, 32 x 4-bit, ``d*q + m``          4       32     ``-m/d``
Q5_0    d, 32 x 5-bit, ``d*(q-16)``            8       32     128 (``q + 112`` stored)
Q5_1    d, m, 32 x 5-bit, ``d*q + m``          8       32     ``-m/d``
Q8_0    d, 32 x int8, ``d*q``                  8       32     128 (``q + 128`` stored)
Q4_K    256: d, dmin, 8 x (6-bit sc, m),       4       32     ``dmin*m / (d*sc)``
        ``d*sc*q - dmin*m`` per 32
Q5_K    as Q4_K with 5-bit q                   8       32     ``dmin*m / (d*sc)``
Q6_K    256: d, 16 x int8 sc, 6-bit q,         8       16     128 (``q + 96`` stored)
        ``d*sc*(q-32)`` per 16
======  =====================================  ======  =====  ==========================

All are exact (the product ``(q - zero) * scale`` rounds within an ulp of the file's own
``d*sc*q - dmin*m``). F32, F16 and BF16 tensors are widened to dense fp32, also without loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32  # MatMulNBits' block for every type but Q6_K (16), and GGUF's for the non-K types.
SUPER = 256  # A K-quant super-block.


@dataclass
class BlockQuantized:
    """Weights ``w[n, k] = (q[n, k] - zero[n, k // block]) * scale[n, k // block]`` in MatMulNBits layout."""

    bits: int
    packed: np.ndarray  # uint8 [N, K/block, block*bits/8]
    scales: np.ndarray  # float32 [N * K/block]
    zeros: np.ndarray  # float32 [N * K/block]
    n: int
    k: int
    block: int = BLOCK

    def dequantize(self) -> np.ndarray:
        q = unpack(self.packed, self.bits).reshape(self.n, self.k // self.block, self.block).astype(np.float32)
        s = self.scales.reshape(self.n, -1, 1)
        z = self.zeros.reshape(self.n, -1, 1)
        return ((q - z) * s).reshape(self.n, self.k)

    @property
    def layout(self) -> tuple[int, int, int]:
        """What matrices must share to be stacked into one kernel: bits, block and K."""
        return self.bits, self.block, self.k

    @staticmethod
    def concat(parts: list["BlockQuantized"]) -> "BlockQuantized":
        """Stack matrices of one layout along N, so one kernel computes several projections."""
        assert len({p.layout for p in parts}) == 1
        return BlockQuantized(
            parts[0].bits,
            np.concatenate([p.packed for p in parts]),
            np.concatenate([p.scales for p in parts]),
            np.concatenate([p.zeros for p in parts]),
            sum(p.n for p in parts),
            parts[0].k,
            parts[0].block,
        )

    def split_nibbles(self) -> "BlockQuantized":
        """An 8-bit matrix as a 4-bit one over the input repeated twice, without loss.

        With u = 16*hi + lo: s*(u - z) = 16s*(hi - 8) + s*(lo - (z - 128)). ONNX Runtime's fp32-activation
        kernel for 8 bits is ~100x slower than its 4-bit one, so exact 8-bit weights run as 4-bit halves.
        """
        assert self.bits == 8
        blocks = self.k // self.block
        u = self.packed.reshape(self.n, blocks, self.block)
        hi, lo = u >> 4, u & 0x0F
        s = self.scales.reshape(self.n, blocks)
        z = self.zeros.reshape(self.n, blocks)
        return BlockQuantized(
            4,
            np.concatenate([pack(hi, 4), pack(lo, 4)], axis=1),
            np.concatenate([16 * s, s], axis=1).reshape(-1),
            np.concatenate([np.full_like(z, 8.0), z - 128], axis=1).reshape(-1),
            self.n,
            2 * self.k,
            self.block,
        )

    def permute_rows(self, order: np.ndarray) -> "BlockQuantized":
        blocks = self.k // self.block
        return BlockQuantized(
            self.bits,
            self.packed[order],
            self.scales.reshape(self.n, blocks)[order].reshape(-1),
            self.zeros.reshape(self.n, blocks)[order].reshape(-1),
            self.n,
            self.k,
            self.block,
        )


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers [..., block] into MatMulNBits bytes (element 2i in the low nibble for 4 bits)."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def quantize(w: np.ndarray, bits: int) -> BlockQuantized:
    """Asymmetric min/max block quantization of a dense [N, K] matrix (used for the tiny random model)."""
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    if bits == 8:  # symmetric, like Q8_0, so the integer zero point also serves GatherBlockQuantized
        scale = np.maximum(np.abs(blocks).max(-1), 1e-8).astype(np.float32) / 127
        q = np.rint(blocks / scale[..., None]) + 128
        return BlockQuantized(8, pack(q, 8), scale.reshape(-1), np.full(scale.size, 128.0, np.float32), n, k)
    lo, hi = blocks.min(-1), blocks.max(-1)
    levels = (1 << bits) - 1
    scale = np.where(hi > lo, (hi - lo) / levels, 1.0).astype(np.float32)
    zero = (-lo / scale).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None] + zero[..., None]), 0, levels)
    return BlockQuantized(bits, pack(q, bits), scale.reshape(-1), zero.reshape(-1), n, k)


# --------------------------------------------------------------------------------------------------
# Reading GGUF blocks. `raw` is a tensor's bytes as gguf's reader gives them: uint8 [N, bytes per row].


def _f16(field: np.ndarray) -> np.ndarray:
    """Little-endian f16 fields ([..., 2] bytes) as float32."""
    return np.ascontiguousarray(field).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 4-bit layout in a 32-weight block: weights 0..15 in the low nibbles, 16..31 in the high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits_of(word: np.ndarray, count: int) -> np.ndarray:
    """Bits 0..count-1 of little-endian bit fields ([..., bytes]) as [..., count] of 0/1."""
    return np.unpackbits(np.ascontiguousarray(word), axis=-1, bitorder="little")[..., :count]


def _offset(q: np.ndarray, zero: int, bits: int, block: int, scale: np.ndarray, n: int, k: int) -> BlockQuantized:
    """``w = scale * (q - zero)`` with integer `zero`: stored as ``q - zero + default`` so the kernel's
    default zero point (8 for 4 bits, 128 for 8) is the block's, and no correction is needed."""
    default = 1 << (bits - 1)
    u = q.astype(np.int16) - zero + default
    zeros = np.full(scale.size, float(default), np.float32)
    return BlockQuantized(bits, pack(u.reshape(n, k // block, block), bits), scale.reshape(-1), zeros, n, k, block)


def _affine(q: np.ndarray, scale: np.ndarray, offset: np.ndarray, bits: int, n: int, k: int) -> BlockQuantized:
    """``w = scale*q + offset`` per 32-weight block, as ``(q - (-offset/scale)) * scale``. A block with
    scale 0 is the constant `offset`: q = 1, zero 0, scale `offset`."""
    flat = scale == 0
    zero = np.where(flat, 0.0, -offset / np.where(flat, 1.0, scale)).astype(np.float32)
    q = np.where(flat[..., None], 1, q)
    scale = np.where(flat, offset, scale).astype(np.float32)
    return BlockQuantized(bits, pack(q.reshape(n, k // BLOCK, BLOCK), bits), scale.reshape(-1),
                          zero.reshape(-1), n, k)


def from_q4_0(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // BLOCK, 18)
    return _offset(_nibbles(b[..., 2:]), 8, 4, BLOCK, _f16(b[..., 0:2]), n, k)


def from_q4_1(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // BLOCK, 20)
    return _affine(_nibbles(b[..., 4:]), _f16(b[..., 0:2]), _f16(b[..., 2:4]), 4, n, k)


def _q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 weights: low nibbles as in 4-bit blocks, bit j of the 32-bit `qh` as weight j's fifth bit."""
    return _nibbles(qs) | (_bits_of(qh, 32) << 4)


def from_q5_0(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // BLOCK, 22)
    return _offset(_q5(b[..., 2:6], b[..., 6:]), 16, 8, BLOCK, _f16(b[..., 0:2]), n, k)


def from_q5_1(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // BLOCK, 24)
    return _affine(_q5(b[..., 4:8], b[..., 8:]), _f16(b[..., 0:2]), _f16(b[..., 2:4]), 8, n, k)


def from_q8_0(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // BLOCK, 34)
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8)
    return _offset(q, 0, 8, BLOCK, _f16(b[..., 0:2]), n, k)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: eight 6-bit scales and mins packed in 12 bytes (llama.cpp's `get_scale_min_k4`)."""
    s = scales.astype(np.uint8)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    m = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), m.astype(np.float32)


def _k_low(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: four 32-byte chunks, each holding sub-block 2i in its low nibbles and 2i+1 in its high."""
    chunks = qs.reshape(qs.shape[:-1] + (4, 32))
    return np.stack([chunks & 0x0F, chunks >> 4], axis=-2).reshape(qs.shape[:-1] + (8, 32))


def _k_affine(b: np.ndarray, q: np.ndarray, bits: int, n: int, k: int) -> BlockQuantized:
    sc, m = _k_scales(b[..., 4:16])
    d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]
    return _affine(q, d * sc, -dmin * m, bits, n, k)


def from_q4_k(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // SUPER, 144)
    return _k_affine(b, _k_low(b[..., 16:]), 4, n, k)


def from_q5_k(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    b = raw.reshape(n, k // SUPER, 176)
    high = _bits_of(b[..., 16:48, None], 8)  # [.., 32 weights, 8 sub-blocks]: bit j of qh[l]
    q = _k_low(b[..., 48:]) | (np.swapaxes(high, -1, -2) << 4)
    return _k_affine(b, q, 8, n, k)


def from_q6_k(raw: np.ndarray, n: int, k: int) -> BlockQuantized:
    """Q6_K: two halves of 128 weights, each from 64 bytes of low nibbles and 32 of 2-bit high parts;
    sixteen int8 scales, one per 16 weights, times the super-block's d."""
    b = raw.reshape(n, k // SUPER, 210)
    ql = b[..., 0:128].reshape(n, -1, 2, 64)
    qh = b[..., 128:192].reshape(n, -1, 2, 32)
    scales = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])[..., None]
    lo = np.concatenate([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-1)
    hi = np.concatenate([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=-1)
    q = (lo | (hi << 4)).reshape(n, k)
    return _offset(q, 32, 8, 16, d * scales, n, k)


BLOCK_TYPES = {
    "Q4_0": from_q4_0, "Q4_1": from_q4_1, "Q5_0": from_q5_0, "Q5_1": from_q5_1, "Q8_0": from_q8_0,
    "Q4_K": from_q4_k, "Q5_K": from_q5_k, "Q6_K": from_q6_k,
}
DENSE_TYPES = ("F32", "F16", "BF16")


def read(tensor) -> BlockQuantized | np.ndarray:
    """A GGUF reader's matrix tensor (GGUF shape [in, out]) as MatMulNBits blocks, or dense fp32 [out, in]
    for the float types; any other type is refused with one line naming the tensor and the type."""
    import gguf

    k, n = (int(x) for x in tensor.shape)
    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    if kind.name in BLOCK_TYPES:
        return BLOCK_TYPES[kind.name](np.asarray(tensor.data).reshape(n, -1), n, k)
    if kind.name in DENSE_TYPES:
        return gguf.dequantize(tensor.data, kind).reshape(n, k).astype(np.float32)
    supported = ", ".join([*DENSE_TYPES, *BLOCK_TYPES])
    raise SystemExit(f"tensor {tensor.name}: type {kind.name} is not supported (supported: {supported})")
