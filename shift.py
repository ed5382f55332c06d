"""Temporal shifts along the frame axis, as in TSM, TokenShift (eq. 4-9) and MSCA (eq. 17-23).

Every tensor here has a frame axis T (axis 1: `(B, T, ...)`) and a "slot" axis along which the shift is
chosen: channels of the class token for TokenShift, heads or tokens for MSCA. The first `n_back` slots
of frame t take their value from frame t-1, the next `n_fwd` from frame t+1, the rest stay. Where the
neighbour does not exist (t=1 backward, t=T forward) the shifted part is zero, as in TSM and TokenShift.
"""
import torch
from torch import nn

TIME_DIM = 1


def temporal_shift(x: torch.Tensor, dim: int, n_back: int, n_fwd: int) -> torch.Tensor:
    """Shift slots [0, n_back) of axis `dim` from frame t-1 and [n_back, n_back+n_fwd) from t+1.

    x: (B, T, ...) with the frame axis at 1. Returns a new tensor of the same shape (x itself when nothing
    is shifted); x is not modified.
    """
    if n_back == 0 and n_fwd == 0:
        return x
    dim = dim % x.dim()
    if dim == TIME_DIM:
        raise ValueError("temporal_shift: the slot axis cannot be the frame axis (1)")
    if n_back < 0 or n_fwd < 0 or n_back + n_fwd > x.size(dim):
        raise ValueError(f"temporal_shift: cannot shift {n_back}+{n_fwd} of {x.size(dim)} slots along axis {dim}")
    return TemporalShift.apply(x, dim, n_back, n_fwd)


class TemporalShift(torch.autograd.Function):
    """The shift with its own backward: the gradient of "slot s of frame t takes frame t-1" is "slot s of
    frame t sends to t+1", i.e. the same shift with the directions swapped. One pass over memory each way;
    autograd through the slices would allocate and sum a full-size gradient per slice."""

    @staticmethod
    def forward(ctx, x, dim, n_back, n_fwd):
        ctx.shift = dim, n_back, n_fwd
        return shifted_copy(x, dim, n_back, n_fwd, back=-1)

    @staticmethod
    def backward(ctx, grad):
        dim, n_back, n_fwd = ctx.shift
        return shifted_copy(grad, dim, n_back, n_fwd, back=+1), None, None, None


def shifted_copy(x: torch.Tensor, dim: int, n_back: int, n_fwd: int, back: int) -> torch.Tensor:
    """Slots [0, n_back) of frame t take frame t+back, slots [n_back, n_back+n_fwd) frame t-back, zeros where
    that frame does not exist; the rest is copied. Written slice by slice into one new tensor."""
    out = torch.empty_like(x)
    frames, kept = x.size(TIME_DIM), x.size(dim) - n_back - n_fwd

    def part(t, start, length, frame_start, frame_len):
        return t.narrow(dim, start, length).narrow(TIME_DIM, frame_start, frame_len)

    part(out, n_back + n_fwd, kept, 0, frames).copy_(part(x, n_back + n_fwd, kept, 0, frames))
    for start, length, offset in ((0, n_back, back), (n_back, n_fwd, -back)):  # offset: source frame - t
        hit, lost = (1, 0) if offset < 0 else (0, frames - 1)  # T-1 frames from `hit` on have a source
        part(out, start, length, hit, frames - 1).copy_(part(x, start, length, hit + offset, frames - 1))
        part(out, start, length, lost, 1).zero_()
    return out


class TokenShift(nn.Module):
    """TokenShift's shift module (eq. 8-9): only the class token (token 0) is shifted.

    Channels [0, D_b) of the class token come from frame t-1, [D_b, D_b + D_f) from t+1, the rest and
    all patch tokens pass through. D_b = D_f = D // shift_div (shift_div=4 as in the TokenShift paper).
    """

    def __init__(self, dim: int, shift_div: int = 4):
        super().__init__()
        self.n_back = self.n_fwd = dim // shift_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, N+1, D)
        cls = temporal_shift(x[:, :, :1], dim=3, n_back=self.n_back, n_fwd=self.n_fwd)  # eq. 8
        return torch.cat([cls, x[:, :, 1:]], dim=2)  # eq. 9

    def extra_repr(self) -> str:
        return f"n_back={self.n_back}, n_fwd={self.n_fwd}"
