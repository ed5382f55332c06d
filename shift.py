"""Temporal shifts along the frame axis, as in TSM, TokenShift (eq. 4-9) and MSCA (eq. 17-23).

Every tensor here is `(B, T, ...)`, frames on axis 1. A shift makes some "slots" of frame t (channels of the class
token for TokenShift; heads or tokens of Q, K, V for MSCA) hold frame t-1 or frame t+1 instead. A slot is an index
tuple over the axes after T, e.g. `(0, slice(0, 192))` = token 0, channels 0..191. A clip has no frame before its
first or after its last one: there the shifted slots are zero, as in TSM and TokenShift.

Two layouts of the slots: "paper" as the text writes it (eq. 8, 17, 21: the first slots from t-1, the next from
t+1) and "released" as the authors' released code runs it (see TokenShift here and attention.shifted_slots).
"""
import torch
from torch import nn

LAYOUTS = ("paper", "released")
EVERY = slice(None)


def shifted_copy(x: torch.Tensor, from_previous, from_next) -> torch.Tensor:
    """A copy of x in which the slots `from_previous` of frame t hold frame t-1, those `from_next` frame t+1."""
    out = x.clone()
    for slots in from_previous:
        out[EVERY, 1:, *slots] = x[EVERY, :-1, *slots]  # frame t takes frame t-1,
        out[EVERY, 0, *slots] = 0  # and the first frame has none
    for slots in from_next:
        out[EVERY, :-1, *slots] = x[EVERY, 1:, *slots]  # frame t takes frame t+1,
        out[EVERY, -1, *slots] = 0  # and the last frame has none
    return out


class TemporalShift(torch.autograd.Function):
    """shifted_copy with its own backward. If slot s of frame t holds frame t-1, the gradient of slot s of frame
    t-1 is that of frame t: the same shift in the other direction. One copy each way, where autograd through
    the slices would allocate and add up a full-size gradient per slice."""

    @staticmethod
    def forward(ctx, x, from_previous, from_next):
        ctx.slots = from_previous, from_next
        return shifted_copy(x, from_previous, from_next)

    @staticmethod
    def backward(ctx, grad):
        from_previous, from_next = ctx.slots
        return shifted_copy(grad, from_next, from_previous), None, None


def temporal_shift(x: torch.Tensor, from_previous=(), from_next=()) -> torch.Tensor:
    """x itself when nothing moves, else a new tensor; x is never modified."""
    if not from_previous and not from_next:
        return x
    return TemporalShift.apply(x, tuple(from_previous), tuple(from_next))


class TokenShift(nn.Module):
    """TokenShift's shift module (eq. 8-9): some channels of the class token (token 0) move, nothing else.

    D // shift_div channels each way (shift_div 4 as in TokenShift: D/4 from t-1, D/4 from t+1).
    "paper" (eq. 8): channels [0, D/4) from t-1, [D/4, D/2) from t+1. "released": the same channels, the other
    way round ([0, D/4) from t+1, [D/4, D/2) from t-1), as TokenShift's code and so the paper's numbers ran it.
    """

    def __init__(self, dim: int, shift_div: int = 4, layout: str = "paper"):
        super().__init__()
        n = dim // shift_div
        first, second = [(0, slice(0, n))], [(0, slice(n, 2 * n))]
        self.from_previous, self.from_next = (first, second) if layout == "paper" else (second, first)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, T, N+1, D)
        return temporal_shift(z, self.from_previous, self.from_next)  # eq. 8; the other tokens pass (eq. 9)

    def extra_repr(self) -> str:
        return f"from t-1: {self.from_previous}, from t+1: {self.from_next}"
