"""The byte layouts of the other targets bitconv writes, next to its own (formats/SPEC.md): each a small numpy
function over the same trits and scales, checked bit for bit against the peer's own reader in the tests.

    MatMulNBits (ONNX Runtime, bits=2)  codes t + 2 four a byte, LSB first, per block of `block` inputs; the
                                        bitconv 2-bit bytes are already in this layout (see the spec)
    ggml TQ2_0 / TQ1_0 (llama.cpp)      256-weight blocks of 2-bit codes t + 1 (or base-3) and one fp16 scale
    transformers BitNet                 uint8 [out / 4, in]: four output rows a byte, codes t + 1
"""

from __future__ import annotations

import numpy as np

from bitconv.format.packing import pack_ternary_2bit, unpack_ternary_base3
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import Packing

# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime MatMulNBits, bits=2

NBITS_ZERO_BYTE = 0xAA  # four 2-bit codes of value 2 (zero): MatMulNBits row padding


def ternary_2bit_codes(spec: TensorSpec, codes: np.ndarray) -> np.ndarray:
    """The 2-bit codes [out, ceil(in/4)] of a ternary weight: the stored bytes, or base-3 repacked (same trits)."""
    if spec.packing == Packing.TWO_BIT:
        return codes
    return pack_ternary_2bit(unpack_ternary_base3(codes, spec.shape[1]))


def matmulnbits_block_size(spec: TensorSpec) -> int | None:
    """MatMulNBits' block_size for this weight; None when its scale groups cannot be expressed."""
    n_in = spec.shape[1]
    if spec.granularity == "group":
        group = int(spec.group_size)
        block = 1 << (group & -group).bit_length() - 1  # the largest power of two dividing the group size
        block = min(block, 256)
        return block if block >= 16 else None
    for block in (64, 32, 16):
        if n_in % block == 0:
            return block
    return 64  # rows are padded with zero codes up to the block boundary


def matmulnbits_weights(spec: TensorSpec, codes: np.ndarray, scale: np.ndarray,
                        block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """MatMulNBits B [N, k_blocks, block/4], scales [N, k_blocks], block size, from the same 2-bit codes."""
    n_out, n_in = spec.shape
    k_blocks = -(-n_in // block)
    codes = ternary_2bit_codes(spec, codes)
    padded = np.full((n_out, k_blocks * block // 4), NBITS_ZERO_BYTE, dtype=np.uint8)
    padded[:, : codes.shape[1]] = codes
    scale = np.asarray(scale, dtype=np.float32)
    if spec.granularity == "group":
        per_block = np.arange(k_blocks) * block // int(spec.group_size)
        scales = scale.reshape(n_out, -1)[:, per_block]
    else:
        scales = np.broadcast_to(scale.reshape(-1, 1), (n_out, k_blocks))
    return padded.reshape(n_out, k_blocks, block // 4), np.ascontiguousarray(scales, dtype=np.float32), block


# ---------------------------------------------------------------------------------------------------------
# ggml TQ2_0 / TQ1_0 block encoders (trits int8 [rows, n] with n % 256 == 0, fp16 scales [rows, n // 256])


QK_K = 256  # weights per TQ block


def encode_tq2_0(trits: np.ndarray, block_scales: np.ndarray) -> np.ndarray:
    rows, n = trits.shape
    codes = (trits.astype(np.int16) + 1).astype(np.uint8).reshape(rows, n // QK_K, 2, 4, 32)
    packed = codes[..., 0, :] | (codes[..., 1, :] << 2) | (codes[..., 2, :] << 4) | (codes[..., 3, :] << 6)
    qs = packed.reshape(rows, n // QK_K, 64)
    d = block_scales.astype(np.float16).reshape(rows, n // QK_K, 1).view(np.uint8)
    return np.concatenate([qs, d], axis=-1).reshape(rows, -1)


def _base3_fixed_point(digits: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """digits [..., k, m] (values 0..2), most significant first along k -> bytes [..., m]."""
    value = (digits.astype(np.uint16) * powers.reshape(-1, 1)).sum(axis=-2)
    return ((value * 256 + 242) // 243).astype(np.uint8)  # ceil(value * 256 / 243): llama.cpp's 8-bit fixed point


def encode_tq1_0(trits: np.ndarray, block_scales: np.ndarray) -> np.ndarray:
    rows, n = trits.shape
    digits = (trits.astype(np.int16) + 1).reshape(rows, n // QK_K, QK_K)
    p5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)
    qs0 = _base3_fixed_point(digits[..., :160].reshape(rows, -1, 5, 32), p5)
    qs1 = _base3_fixed_point(digits[..., 160:240].reshape(rows, -1, 5, 16), p5)
    qh = _base3_fixed_point(digits[..., 240:].reshape(rows, -1, 4, 4), p5[:4])  # a fifth, zero trit last
    d = block_scales.astype(np.float16).reshape(rows, n // QK_K, 1).view(np.uint8)
    return np.concatenate([qs0, qs1, qh, d], axis=-1).reshape(rows, -1)


TQ_ENCODERS = {"tq2_0": encode_tq2_0, "tq1_0": encode_tq1_0}


# ---------------------------------------------------------------------------------------------------------
# transformers BitNet (quant_method "bitnet")

HF_BITNET_VALUES_PER_BYTE = 4


def pack_output_dim(trits: np.ndarray) -> np.ndarray:
    """Trits [out, in] (out % 4 == 0) -> uint8 [out / 4, in], transformers' BitNet packing."""
    out = trits.shape[0]
    rows = out // HF_BITNET_VALUES_PER_BYTE
    codes = (trits.astype(np.int16) + 1).astype(np.uint8).reshape(HF_BITNET_VALUES_PER_BYTE, rows, -1)
    packed = np.zeros(codes.shape[1:], dtype=np.uint8)
    for i in range(HF_BITNET_VALUES_PER_BYTE):
        packed |= codes[i] << np.uint8(2 * i)
    return packed
