import pytest
import torch

from slimtune.quant import pack, packed_width, unpack


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [32, 64, 576, 33, 7])
def test_pack_unpack_round_trip(bits, n):
    torch.manual_seed(n)
    codes = torch.randint(0, 2 ** bits, (5, n), dtype=torch.uint8)
    words = pack(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (5, packed_width(n, bits))
    assert torch.equal(unpack(words, bits, n), codes)


@pytest.mark.parametrize("bits,per_word", [(2, 16), (4, 8), (8, 4)])
def test_packed_size_is_bits_over_8_bytes_per_weight(bits, per_word):
    codes = torch.full((3, 576), 2 ** bits - 1, dtype=torch.uint8)
    words = pack(codes, bits)
    assert words.shape[1] == 576 // per_word
    assert words.numel() * 4 == codes.numel() * bits // 8


def test_three_bits_pack_32_codes_into_3_words():
    assert pack(torch.zeros(1, 64, dtype=torch.uint8), 3).shape == (1, 6)


def test_out_of_range_codes_rejected():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(torch.tensor([[16]]), 4)


def test_layout_matches_compressed_tensors():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    for bits in (2, 3, 4, 8):
        codes = torch.randint(0, 2 ** bits, (4, 96))
        ct = helpers.pack_to_int32((codes - 2 ** (bits - 1)).to(torch.int8), bits)
        assert torch.equal(pack(codes, bits), ct)
