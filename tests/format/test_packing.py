import numpy as np
import pytest

from bitconv.format.packing import (
    pack_bits,
    pack_ternary_2bit,
    pack_ternary_base3,
    unpack_bits,
    unpack_ternary_2bit,
    unpack_ternary_base3,
)


def test_ternary_2bit_hand_computed_bytes():
    # codes t+2 = 1,2,3,3 | 2,(pad 2),(pad 2),(pad 2), least significant bits first
    packed = pack_ternary_2bit(np.array([[-1, 0, 1, 1, 0]]))
    assert packed.tolist() == [[1 | 2 << 2 | 3 << 4 | 3 << 6, 2 | 2 << 2 | 2 << 4 | 2 << 6]]
    assert unpack_ternary_2bit(packed, 5).tolist() == [[-1, 0, 1, 1, 0]]


def test_ternary_2bit_is_matmulnbits_layout():
    # MatMulNBits bits=2 dequantizes (code - 2) * scale with codes low bits first along K
    trits = np.array([[1, -1, 0, 1, -1, -1, 0, 0]])
    packed = pack_ternary_2bit(trits)
    codes = [(int(b) >> (2 * i)) & 3 for b in packed[0] for i in range(4)]
    assert [c - 2 for c in codes] == trits[0].tolist()


def test_base3_hand_computed_bytes():
    # digits t+1 = 0,1,2,2,1 -> 0 + 1*3 + 2*9 + 2*27 + 1*81 = 156; second byte: 2 then padding 1s
    packed = pack_ternary_base3(np.array([[-1, 0, 1, 1, 0, 1]]))
    assert packed.tolist() == [[156, 2 + 3 + 9 + 27 + 81]]
    assert unpack_ternary_base3(packed, 6).tolist() == [[-1, 0, 1, 1, 0, 1]]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [1, 3, 8, 13, 64])
def test_pack_bits_round_trip(bits, n):
    rng = np.random.default_rng(bits * 100 + n)
    codes = rng.integers(0, 1 << bits, size=(5, n), dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (5, -(-n * bits // 8))
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("n", [1, 4, 5, 7, 768])
def test_ternary_round_trips(n):
    rng = np.random.default_rng(n)
    trits = rng.integers(-1, 2, size=(3, n)).astype(np.int8)
    assert np.array_equal(unpack_ternary_2bit(pack_ternary_2bit(trits), n), trits)
    assert np.array_equal(unpack_ternary_base3(pack_ternary_base3(trits), n), trits)
    assert pack_ternary_base3(trits).max() <= 242


def test_corrupt_codes_are_refused():
    with pytest.raises(ValueError, match="reserved code 0"):
        unpack_ternary_2bit(np.zeros((1, 1), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="above 242"):
        unpack_ternary_base3(np.full((1, 1), 250, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="expected 2"):
        unpack_bits(np.zeros((1, 3), dtype=np.uint8), 2, 5)
