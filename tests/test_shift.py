"""shift.py against the element-by-element reference of eq. 8 (TSM/TokenShift shift with zero padding)."""
import pytest
import torch

import naive
from shift import TokenShift, temporal_shift


def along(dim, start, stop):
    """The slot index tuple (over the axes after T) selecting [start, stop) of axis `dim`."""
    return (slice(None),) * (dim - 2) + (slice(start, stop),)


def paper_shift(x, dim, n_back, n_fwd):
    """temporal_shift in the paper's layout: [0, n_back) from t-1, the next n_fwd from t+1."""
    return temporal_shift(x, [along(dim, 0, n_back)] if n_back else [],
                          [along(dim, n_back, n_back + n_fwd)] if n_fwd else [])


@pytest.mark.parametrize("shape,dim,n_back,n_fwd", [
    ((2, 5, 7), 2, 2, 3),          # channels of a (B, T, C) tensor
    ((2, 4, 6, 3, 5), 2, 1, 1),    # heads of a (B, T, h, N, d) tensor
    ((1, 3, 4, 9, 2), 3, 4, 4),    # tokens of a (B, T, h, N, d) tensor
    ((2, 4, 6), 2, 6, 0),          # everything backward
    ((2, 4, 6), 2, 0, 6),          # everything forward
    ((1, 1, 5), 2, 2, 2),          # a single frame: both neighbours missing
])
def test_temporal_shift_matches_reference(shape, dim, n_back, n_fwd):
    x = torch.randn(shape)
    assert torch.equal(paper_shift(x, dim, n_back, n_fwd), naive.shift(x, dim, n_back, n_fwd))


def test_clip_ends_are_zero_and_the_rest_moves_by_one_frame():
    x = torch.arange(1, 1 + 4 * 6, dtype=torch.float).reshape(1, 4, 6)  # frame t, channel c: 6t + c + 1
    out = paper_shift(x, 2, 2, 1)
    assert torch.all(out[0, 0, :2] == 0) and torch.all(out[0, -1, 2:3] == 0)  # t=1 backward, t=T forward
    assert torch.equal(out[0, 1:, :2], x[0, :-1, :2])  # backward slots: frame t holds frame t-1
    assert torch.equal(out[0, :-1, 2], x[0, 1:, 2])  # forward slot: frame t holds frame t+1
    assert torch.equal(out[0, :, 3:], x[0, :, 3:])  # the rest untouched


def test_slots_in_several_places_at_once():
    """One copy moves blocks on two axes, as MSCA-KV does with K's and V's heads (axis 2: q/k/v, axis 3: heads)."""
    x = torch.randn(2, 3, 3, 4, 5)
    out = temporal_shift(x, [(1, slice(0, 1)), (2, slice(0, 1))], [(1, slice(1, 2)), (2, slice(1, 2))])
    for which in (1, 2):
        expected = naive.shift(x[:, :, which], 2, 1, 1)
        assert torch.equal(out[:, :, which], expected)
    assert torch.equal(out[:, :, 0], x[:, :, 0])


def test_no_shift_is_the_input_itself_and_input_is_never_modified():
    x = torch.randn(2, 3, 4)
    assert temporal_shift(x) is x
    before = x.clone()
    paper_shift(x, 2, 1, 1)
    assert torch.equal(x, before)


def test_gradient_flows_back_through_the_shift():
    x = torch.randn(2, 4, 6, requires_grad=True)
    weights = torch.randn(2, 4, 6)
    (paper_shift(x, 2, 2, 2) * weights).sum().backward()
    expected = weights.clone()  # kept slots: d out[t] / d x[t] = weight at t
    expected[:, :-1, :2] = weights[:, 1:, :2]  # backward slots: x[t] feeds out[t+1]
    expected[:, -1, :2] = 0
    expected[:, 1:, 2:4] = weights[:, :-1, 2:4]  # forward slots: x[t] feeds out[t-1]
    expected[:, 0, 2:4] = 0
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("shift_div", [4, 3, 8])
@pytest.mark.parametrize("layout", ["paper", "released"])
def test_token_shift_moves_class_token_channels_only(shift_div, layout):
    z = torch.randn(2, 4, 5, 16)
    channels = 16 // shift_div
    assert torch.equal(TokenShift(16, shift_div, layout)(z), naive.token_shift(z, channels, layout))


def test_released_token_shift_is_the_paper_one_in_reversed_time():
    z = torch.randn(2, 5, 3, 16)
    assert torch.equal(TokenShift(16, 4, "released")(z), TokenShift(16, 4, "paper")(z.flip(1)).flip(1))
    assert not torch.equal(TokenShift(16, 4, "released")(z), TokenShift(16, 4, "paper")(z))


def test_token_shift_default_is_a_quarter_each_way():
    out = TokenShift(768)(torch.ones(1, 3, 2, 768))
    assert (out[0, 0, 0] == 0).sum() == 192 and (out[0, -1, 0] == 0).sum() == 192  # clip ends: D/4 zeros each
    assert (out[0, 1, 0] == 0).sum() == 0 and torch.all(out[:, :, 1] == 1)
