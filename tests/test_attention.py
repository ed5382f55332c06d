"""attention.py: MSA and the 14 MSCA variants against the loop-over-(t, head, token) reference of eq. 12-23."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import naive
from attention import MSCA_VARIANTS, NO_SHIFT, Attention, CrossAttentionShift

DIM, HEADS, FRAMES, TOKENS = 24, 6, 4, 7
ROOT = Path(__file__).resolve().parents[1]


def layer(shift=NO_SHIFT):
    torch.manual_seed(0)
    return Attention(DIM, HEADS, shift).double()


def reference(module, z, shift=NO_SHIFT):
    return naive.attention(z, module.qkv.weight, module.qkv.bias, module.proj.weight, module.proj.bias, HEADS,
                           shift.shifted, shift.axis, shift.n_back, shift.n_fwd, shift.layout)


def msca(variant, heads=2, patches=4, layout="paper"):
    return CrossAttentionShift.from_variant(variant, heads=heads, patches=patches, num_heads=HEADS,
                                            num_tokens=TOKENS, layout=layout)


def test_msa_matches_reference():
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    module = layer()
    torch.testing.assert_close(module(z), reference(module, z))


@pytest.mark.parametrize("variant", MSCA_VARIANTS)
@pytest.mark.parametrize("amount", [2, 4, 6])
def test_every_msca_variant_matches_reference(variant, amount):
    """amount: heads shifted (6 = all heads) or tokens shifted (6 of 7: token 0 = CLS among them)."""
    shift = msca(variant, heads=amount, patches=amount)
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    module = layer(shift)
    torch.testing.assert_close(module(z), reference(module, z, shift))


@pytest.mark.parametrize("variant", ["K", "V", "KV", "QKV", "pKV"])
@pytest.mark.parametrize("amount", [2, 4])
def test_released_layout_matches_reference(variant, amount):
    shift = msca(variant, heads=amount, patches=amount, layout="released")
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    module = layer(shift)
    torch.testing.assert_close(module(z), reference(module, z, shift))


def released_head_shift(x, fold):
    """MSCA.diff's own slicing on a (b, t, h, n, d) tensor of K or V: heads [0, fold) take frame t+1, the last
    fold heads frame t-1, zeros at the clip ends (its buffer starts as zeros_like)."""
    out = torch.zeros_like(x)
    h = x.shape[2]
    out[:, :-1, 0:fold] = x[:, 1:, 0:fold]
    out[:, 1:, h - fold:] = x[:, :-1, h - fold:]
    out[:, :, fold:h - fold] = x[:, :, fold:h - fold]
    return out


@pytest.mark.parametrize("fold", [1, 2])
def test_released_reference_is_the_released_slicing(fold):
    """Guards the reference: its released rule moves exactly what the authors' slicing moves."""
    x = torch.randn(1, FRAMES, HEADS, 2, 3, dtype=torch.double)
    expected = torch.zeros_like(x)
    for t in range(FRAMES):
        for i in range(HEADS):
            src = naive.source_frame(t, i, fold, fold, FRAMES, "released", HEADS)
            if src is not None:
                expected[:, t, i] = x[:, src, i]
    assert torch.equal(released_head_shift(x, fold), expected)


def swap_heads(module, i, j):
    """The same attention with heads i and j renumbered: their rows of W_q, W_k, W_v and columns of W_o swap."""
    d, order = DIM // HEADS, list(range(HEADS))
    order[i], order[j] = j, i
    channels = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order])
    with torch.no_grad():
        rows = torch.cat([channels + part * DIM for part in range(3)])
        module.qkv.weight.copy_(module.qkv.weight[rows])
        module.qkv.bias.copy_(module.qkv.bias[rows])
        module.proj.weight.copy_(module.proj.weight[:, channels])
    return module


@pytest.mark.parametrize("variant", ["K", "V", "KV", "QKV"])
def test_released_layout_is_the_paper_one_in_reversed_time_with_two_heads_renumbered(variant):
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    released = layer(msca(variant, layout="released"))
    paper = swap_heads(layer(msca(variant)), 1, HEADS - 1)
    torch.testing.assert_close(released(z), paper(z.flip(1)).flip(1))
    assert not torch.allclose(released(z), layer(msca(variant))(z))  # not the paper's on the same weights


def test_patch_variants_have_one_layout():
    z = torch.randn(1, FRAMES, TOKENS, DIM, dtype=torch.double)
    torch.testing.assert_close(layer(msca("pKV", layout="released"))(z), layer(msca("pKV"))(z), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["KV", "pKV", "Q", "pV"])
def test_reference_tells_the_two_directions_apart(variant):
    """Guards the tests above: swapping t-1 and t+1 (the released code's head order) gives another result."""
    shift = msca(variant)
    z = torch.randn(1, FRAMES, TOKENS, DIM, dtype=torch.double)
    module = layer(shift)
    swapped = CrossAttentionShift(shift.shifted, shift.axis, n_back=0, n_fwd=shift.n_back + shift.n_fwd)
    assert not torch.allclose(module(z), reference(module, z, swapped))


def identity_projection(module):
    with torch.no_grad():
        module.proj.weight.copy_(torch.eye(DIM, dtype=module.proj.weight.dtype))
        module.proj.bias.zero_()
    return module


def per_head(x):
    """(B, T, N, h*d) -> (B, T, h, N, d), written out without einops."""
    b, t, n, _ = x.shape
    return x.reshape(b, t, n, HEADS, DIM // HEADS).permute(0, 1, 3, 2, 4)


@pytest.mark.parametrize("heads", [2, 4, 6])
def test_msca_qkv_equals_msa_then_output_shift(heads):
    """The paper's remark (Sec. 3.2): MSCA-QKV along heads is MSA followed by the same shift of its heads."""
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    msa = identity_projection(layer())
    msca_qkv = identity_projection(layer(msca("QKV", heads=heads)))
    msa_heads = per_head(msa(z))
    expected = naive.shift(msa_heads, 2, heads // 2, heads // 2)
    torch.testing.assert_close(per_head(msca_qkv(z)), expected)
    # and with the real output projection, the shift of the heads commutes into it
    msca_qkv = layer(msca("QKV", heads=heads))
    shifted = expected.permute(0, 1, 3, 2, 4).reshape(z.shape)
    torch.testing.assert_close(msca_qkv(z), shifted @ msca_qkv.proj.weight.T + msca_qkv.proj.bias)


def test_shifted_values_are_zero_at_the_clip_ends():
    """MSCA-V: the backward head of frame 1 and the forward head of frame T average zero values."""
    z = torch.randn(1, FRAMES, TOKENS, DIM, dtype=torch.double)
    heads = per_head(identity_projection(layer(msca("V", heads=2)))(z))
    assert torch.all(heads[:, 0, 0] == 0) and torch.all(heads[:, -1, 1] == 0)
    assert torch.all(heads[:, 1:, 0] != 0) and torch.all(heads[:, :-1, 1] != 0)


def test_nothing_shifted_is_plain_msa():
    z = torch.randn(2, FRAMES, TOKENS, DIM, dtype=torch.double)
    for variant, amount in [("KV", 0), ("pQKV", 0)]:
        torch.testing.assert_close(layer(msca(variant, amount, amount))(z), layer()(z), rtol=0, atol=0)


def test_no_parameters_are_added_by_the_shift():
    assert [n for n, _ in layer(msca("pQKV")).named_parameters()] == ["qkv.weight", "qkv.bias", "proj.weight",
                                                                      "proj.bias"]


@pytest.mark.parametrize("kwargs", [dict(heads=3), dict(heads=8), dict(heads=-2)])
def test_invalid_head_counts_are_refused(kwargs):
    with pytest.raises(ValueError, match="heads"):
        msca("KV", **kwargs)


def test_invalid_patch_counts_and_variants_are_refused():
    with pytest.raises(ValueError, match="patches"):
        msca("pKV", patches=8)  # 7 tokens per frame
    with pytest.raises(ValueError, match="unknown MSCA variant"):
        msca("KQ")


def test_map_printer_shows_the_paper_default():
    out = subprocess.run([sys.executable, "attention.py", "--variant", "pKV", "--patches", "16"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "K: t-1 <- tokens 0..7 | t+1 <- tokens 8..15" in out and "Q: all 197 tokens from frame t" in out
    out = subprocess.run([sys.executable, "attention.py", "--variant", "KV", "--shift-layout", "released"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "K: t-1 <- heads 11..11 | t+1 <- heads 0..0" in out and "heads: + . . . . . . . . . . -" in out
    bad = subprocess.run([sys.executable, "attention.py", "--variant", "KV", "--heads", "3"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "heads=3" in bad.stderr
