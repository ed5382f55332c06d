"""shift.py against the element-by-element reference of eq. 8 (TSM/TokenShift shift with zero padding)."""
import pytest
import torch

import naive
from shift import TokenShift, temporal_shift


@pytest.mark.parametrize("shape,dim,n_back,n_fwd", [
    ((2, 5, 7), 2, 2, 3),          # channels of a (B, T, C) tensor
    ((2, 4, 6, 3, 5), 2, 1, 1),    # heads of a (B, T, h, N, d) tensor
    ((1, 3, 4, 9, 2), 3, 4, 4),    # tokens of a (B, T, h, N, d) tensor
    ((2, 4, 6), -1, 6, 0),         # everything backward
    ((2, 4, 6), 2, 0, 6),          # everything forward
    ((1, 1, 5), 2, 2, 2),          # a single frame: both neighbours missing
])
def test_temporal_shift_matches_reference(shape, dim, n_back, n_fwd):
    x = torch.randn(shape)
    expected = naive.shift(x, dim % x.dim(), n_back, n_fwd)
    assert torch.equal(temporal_shift(x, dim, n_back, n_fwd), expected)


def test_clip_ends_are_zero_and_the_rest_moves_by_one_frame():
    x = torch.arange(1, 1 + 4 * 6, dtype=torch.float).reshape(1, 4, 6)  # frame t, channel c: 6t + c + 1
    out = temporal_shift(x, 2, 2, 1)
    assert torch.all(out[0, 0, :2] == 0) and torch.all(out[0, -1, 2:3] == 0)  # t=1 backward, t=T forward
    assert torch.equal(out[0, 1:, :2], x[0, :-1, :2])  # backward slots: frame t holds frame t-1
    assert torch.equal(out[0, :-1, 2], x[0, 1:, 2])  # forward slot: frame t holds frame t+1
    assert torch.equal(out[0, :, 3:], x[0, :, 3:])  # the rest untouched


def test_no_shift_is_the_input_itself_and_input_is_never_modified():
    x = torch.randn(2, 3, 4)
    assert temporal_shift(x, 2, 0, 0) is x
    before = x.clone()
    temporal_shift(x, 2, 1, 1)
    assert torch.equal(x, before)


def test_gradient_flows_back_through_the_shift():
    x = torch.randn(2, 4, 6, requires_grad=True)
    weights = torch.randn(2, 4, 6)
    (temporal_shift(x, 2, 2, 2) * weights).sum().backward()
    expected = weights.clone()  # kept slots: d out[t] / d x[t] = weight at t
    expected[:, :-1, :2] = weights[:, 1:, :2]  # backward slots: x[t] feeds out[t+1]
    expected[:, -1, :2] = 0
    expected[:, 1:, 2:4] = weights[:, :-1, 2:4]  # forward slots: x[t] feeds out[t-1]
    expected[:, 0, 2:4] = 0
    assert torch.equal(x.grad, expected)


def test_invalid_shift_is_refused():
    with pytest.raises(ValueError):
        temporal_shift(torch.randn(1, 2, 3), 2, 2, 2)
    with pytest.raises(ValueError):
        temporal_shift(torch.randn(1, 2, 3), 1, 1, 0)


@pytest.mark.parametrize("shift_div", [4, 3, 8])
def test_token_shift_moves_class_token_channels_only(shift_div):
    z = torch.randn(2, 4, 5, 16)
    channels = 16 // shift_div
    assert torch.equal(TokenShift(16, shift_div)(z), naive.token_shift(z, channels))


def test_token_shift_default_is_a_quarter_each_way():
    module = TokenShift(768)
    assert (module.n_back, module.n_fwd) == (192, 192)
