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


def shift_in_place(x: torch.Tensor, from_previous, from_next, split=None) -> torch.Tensor:
    """x, changed in place: the slots `from_previous` of frame t hold frame t-1, those `from_next` frame t+1.
    Only the moved slots are copied (the source overlaps the target, hence the clone). `split`: the sizes the last
    axis is seen as by the slots (Q, K, V and heads in one axis: (3, h, D/h))."""
    view = x if split is None else x.unflatten(-1, split)
    for slots in from_previous:
        view[EVERY, 1:, *slots] = view[EVERY, :-1, *slots].clone()  # frame t takes frame t-1,
        view[EVERY, 0, *slots] = 0  # and the first frame has none
    for slots in from_next:
        view[EVERY, :-1, *slots] = view[EVERY, 1:, *slots].clone()  # frame t takes frame t+1,
        view[EVERY, -1, *slots] = 0  # and the last frame has none
    return x


class TemporalShift(torch.autograd.Function):
    """shift_in_place with its own backward. If slot s of frame t holds frame t-1, the gradient of slot s of frame
    t-1 is that of frame t: the same shift the other way, in place again. In place, a shift costs the copy of the
    slots it moves and no memory: a copy of the whole tensor beside the original, which autograd may keep for
    backward, would cost ~4% of a GPU step and more activations than MSA saves."""

    @staticmethod
    def forward(ctx, x, from_previous, from_next, split):
        ctx.slots = from_previous, from_next, split
        ctx.mark_dirty(x)
        return shift_in_place(x, from_previous, from_next, split)

    @staticmethod
    def backward(ctx, grad):
        from_previous, from_next, split = ctx.slots
        return shift_in_place(grad.contiguous(), from_next, from_previous, split), None, None, None


def temporal_shift(x: torch.Tensor, from_previous=(), from_next=(), split=None) -> torch.Tensor:
    """Shifts x in place (x itself when nothing moves): pass a tensor that nothing needs unshifted. The whole x,
    not a view of it, so that autograd does not copy all of its gradient (split gives the view's shape)."""
    if not from_previous and not from_next:
        return x
    return TemporalShift.apply(x, tuple(from_previous), tuple(from_next), split)


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
        # a copy: the block's input stays as it is (one copy of z costs ~0.5% of a GPU step)
        return temporal_shift(z.clone(), self.from_previous, self.from_next)  # eq. 8; the other tokens pass (eq. 9)

    def extra_repr(self) -> str:
        return f"from t-1: {self.from_previous}, from t+1: {self.from_next}"
