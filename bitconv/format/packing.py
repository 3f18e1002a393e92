"""Bit packing of integer codes into bytes, row by row (formats/SPEC.md, "Decoding, per scheme").

Every function works on a 2-D array of codes `[rows, n]` and packs along the last axis, least significant
bits first, each row starting on a fresh byte. Unpacking takes the logical row length `n` and drops the
padding. Pure numpy, so a reader needs nothing but numpy.
"""

from __future__ import annotations

import numpy as np

TERNARY_ZERO_CODE = 2  # code = t + 2, so the padding / zero code is 2 (also MatMulNBits' default zero point)
BASE3_TRITS_PER_BYTE = 5
_POWERS_OF_3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def packed_row_bytes(n: int, bits: int) -> int:
    """Bytes per row for `n` codes of `bits` bits (1, 2, 4 or 8)."""
    per_byte = 8 // bits
    return -(-n // per_byte)


def base3_row_bytes(n: int) -> int:
    return -(-n // BASE3_TRITS_PER_BYTE)


def _pad_columns(codes: np.ndarray, multiple: int, pad_value: int) -> np.ndarray:
    rows, n = codes.shape
    pad = (-n) % multiple
    if pad == 0:
        return codes
    return np.concatenate([codes, np.full((rows, pad), pad_value, dtype=codes.dtype)], axis=1)


def pack_bits(codes: np.ndarray, bits: int, pad_value: int = 0) -> np.ndarray:
    """Pack uint8 codes `[rows, n]` (each < 2**bits) into `[rows, ceil(n * bits / 8)]` bytes."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"cannot pack {bits}-bit codes")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D, got shape {codes.shape}")
    if bits == 8:
        return codes.copy()
    per_byte = 8 // bits
    padded = _pad_columns(codes, per_byte, pad_value)
    rows = padded.shape[0]
    grouped = padded.reshape(rows, -1, per_byte)
    packed = np.zeros(grouped.shape[:2], dtype=np.uint8)
    for i in range(per_byte):
        packed |= grouped[:, :, i] << np.uint8(bits * i)
    return packed


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_bits`: `[rows, bytes]` -> uint8 codes `[rows, n]`."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[:, :n].copy()
    per_byte = 8 // bits
    if packed.shape[1] != packed_row_bytes(n, bits):
        raise ValueError(
            f"packed rows have {packed.shape[1]} bytes, expected {packed_row_bytes(n, bits)} for {n} {bits}-bit codes"
        )
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.shape[0], packed.shape[1], per_byte), dtype=np.uint8)
    for i in range(per_byte):
        out[:, :, i] = (packed >> np.uint8(bits * i)) & mask
    return out.reshape(packed.shape[0], -1)[:, :n]


def pack_ternary_2bit(trits: np.ndarray) -> np.ndarray:
    """Trits in {-1, 0, 1} `[rows, n]` -> bytes `[rows, ceil(n/4)]`, code = t + 2."""
    codes = (np.asarray(trits, dtype=np.int8) + TERNARY_ZERO_CODE).astype(np.uint8)
    return pack_bits(codes, 2, pad_value=TERNARY_ZERO_CODE)


def unpack_ternary_2bit(packed: np.ndarray, n: int) -> np.ndarray:
    """Bytes `[rows, ceil(n/4)]` -> trits int8 `[rows, n]`."""
    codes = unpack_bits(packed, 2, n)
    if (codes == 0).any():
        raise ValueError("ternary 2-bit codes contain the reserved code 0: the tensor is corrupt")
    return codes.astype(np.int8) - TERNARY_ZERO_CODE


def pack_ternary_base3(trits: np.ndarray) -> np.ndarray:
    """Trits `[rows, n]` -> bytes `[rows, ceil(n/5)]`, byte = sum (t_i + 1) * 3**i (max 242)."""
    digits = (np.asarray(trits, dtype=np.int8) + 1).astype(np.uint8)
    if digits.ndim != 2:
        raise ValueError(f"trits must be 2-D, got shape {digits.shape}")
    padded = _pad_columns(digits, BASE3_TRITS_PER_BYTE, 1)
    grouped = padded.reshape(padded.shape[0], -1, BASE3_TRITS_PER_BYTE)
    # sum of at most 2 * 121 = 242 fits in uint8; accumulate in uint16 to be explicit about it
    return (grouped.astype(np.uint16) * _POWERS_OF_3).sum(axis=2).astype(np.uint8)


def unpack_ternary_base3(packed: np.ndarray, n: int) -> np.ndarray:
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.shape[1] != base3_row_bytes(n):
        raise ValueError(f"base-3 rows have {packed.shape[1]} bytes, expected {base3_row_bytes(n)} for {n} trits")
    if (packed > 242).any():
        raise ValueError("base-3 bytes above 242 found: the tensor is corrupt")
    digits = np.empty((packed.shape[0], packed.shape[1], BASE3_TRITS_PER_BYTE), dtype=np.uint8)
    rest = packed.copy()
    for i in range(BASE3_TRITS_PER_BYTE):
        digits[:, :, i] = rest % 3
        rest //= 3
    return digits.reshape(packed.shape[0], -1)[:, :n].astype(np.int8) - 1
