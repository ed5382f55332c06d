"""Temporal shifts along the frame axis: TSM, TokenShift (eq. 4-9) and MSCA (eq. 17-23).

Every tensor here is `(B, T, ...)`, frames on axis 1. A shift makes some "slots" of frame t
hold frame t-1 or frame t+1 instead: channels of the class token for TokenShift, heads or
tokens of Q, K, V for MSCA. A slot is an index tuple over the axes after T, e.g.
`(0, slice(0, 192))` = token 0, channels 0..191. A clip has no frame before its first or
after its last one: there the shifted slots are zero, as in TSM and TokenShift.

Two layouts of the slots: "paper" as the text writes it (eq. 8, 17, 21: the first slots
from t-1, the next from t+1) and "released" as the authors' released code runs it (see
TokenShift here and attention.shifted_slots).
"""
import torch
from torch import nn

LAYOUTS = ("paper", "released")
EVERY = slice(None)


def shifted_copy(x: torch.Tensor, from_previous, from_next) -> torch.Tensor:
    """A copy of x: slots `from_previous` of frame t hold t-1, slots `from_next` t+1."""
    out = x.clone()
    for slots in from_previous:
        source, target = x[EVERY, EVERY, *slots], out[EVERY, EVERY, *slots]
        target[:, 1:] = source[:, :-1]
        target[:, 0] = 0  # the first frame has no frame before it
    for slots in from_next:
        source, target = x[EVERY, EVERY, *slots], out[EVERY, EVERY, *slots]
        target[:, :-1] = source[:, 1:]
        target[:, -1] = 0  # nor the last one a frame after it
    return out


class TemporalShift(torch.autograd.Function):
    """shifted_copy with its own backward.

    If slot s of frame t holds frame t-1, the gradient of slot s of frame t-1 is that of
    frame t: the same shift in the other direction. One copy each way, where autograd
    through the slices would allocate and add up a full-size gradient per slice.
    """

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
    """TokenShift's shift (eq. 8-9): some channels of the class token move, nothing else.

    D // shift_div channels each way (shift_div 4 as in TokenShift: D/4 from t-1, D/4
    from t+1). "paper" (eq. 8): channels [0, D/4) from t-1, [D/4, D/2) from t+1.
    "released": the same channels the other way round, as TokenShift's code (and so the
    paper's numbers) ran it.
    """

    def __init__(self, dim: int, shift_div: int = 4, layout: str = "paper"):
        super().__init__()
        n = dim // shift_div
        channels = [(0, slice(0, n))], [(0, slice(n, 2 * n))]  # of the class token
        if layout != "paper":
            channels = channels[::-1]
        self.from_previous, self.from_next = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, T, N+1, D)
        # eq. 8; the other tokens pass unchanged (eq. 9)
        return temporal_shift(z, self.from_previous, self.from_next)

    def extra_repr(self) -> str:
        return f"from t-1: {self.from_previous}, from t+1: {self.from_next}"
