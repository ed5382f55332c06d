"""MSA, Multi-head Self-Attention (eq. 12-16), and MSCA, its Self/Cross version (eq. 17-23).

MSCA is MSA in which some of the queries, keys or values of frame t are taken from frames
t-1 and t+1. All 14 variants of the paper are one mechanism with two switches:
- which of Q, K, V are shifted: "Q", "K", "V", "QK", "KV", "QV", "QKV";
- along which axis: heads (eq. 17-18: whole heads come from a neighbour frame) or patches
  (eq. 19-23, a "p" before the name: whole tokens, all heads, from a neighbour frame).
With nothing shifted it is exactly MSA, so one class serves both.

    python attention.py --variant pKV --patches 16  # which tokens come from which frame
    python attention.py --variant KV --shift-layout released  # the authors' head layout
"""
import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shift import EVERY, LAYOUTS, temporal_shift

HEAD_VARIANTS = ("Q", "K", "V", "QK", "KV", "QV", "QKV")
MSCA_VARIANTS = HEAD_VARIANTS + tuple("p" + v for v in HEAD_VARIANTS)  # "p": along patches


@dataclass(frozen=True)
class CrossAttentionShift:
    """Which of Q/K/V shift, along which axis, how many slots each way, in which layout."""

    shifted: str = ""  # subset of "qkv"
    axis: str = "head"  # "head" (eq. 17-18) or "patch" (eq. 19-23)
    n_back: int = 0  # h_b heads or N_b tokens taken from frame t-1
    n_fwd: int = 0  # h_f heads or N_f tokens taken from frame t+1
    layout: str = "paper"  # or "released"

    @classmethod
    def from_variant(cls, variant: str, *, heads: int, patches: int, num_heads: int,
                     num_tokens: int, layout: str = "paper") -> "CrossAttentionShift":
        """MSCA-`variant` shifting `heads` heads, or for "p" variants `patches` of the
        `num_tokens` = N+1 tokens: half from t-1, half from t+1 (heads=2: h_b = h_f = 1)."""
        for what, value, choices in (("MSCA variant", variant, MSCA_VARIANTS),
                                     ("shift layout", layout, LAYOUTS)):
            if value not in choices:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
        if variant.startswith("p"):
            axis, name, amount, available = "patch", "patches", patches, num_tokens
        else:
            axis, name, amount, available = "head", "heads", heads, num_heads
        if not isinstance(amount, int) or amount < 0 or amount % 2 or amount > available:
            most = available - available % 2
            raise ValueError(f"{name}={amount!r}: must be an even number from 0 to {most} "
                             f"(the model has {available} {name} per frame; "
                             "half shift from t-1, half from t+1)")
        half = amount // 2
        return cls(variant.removeprefix("p").lower(), axis, half, half, layout)


NO_SHIFT = CrossAttentionShift()


def shifted_slots(shift: CrossAttentionShift, num_heads: int) -> tuple[range, range]:
    """The heads (or tokens) that take frame t-1 and those that take frame t+1.

    Paper (eq. 17, 21): the first h_b (N_b) from t-1, the next h_f (N_f) from t+1; token 0
    is CLS. Released code (`MSCA.diff`, heads only): the first h_f heads from t+1, the
    *last* h_b from t-1, so other pretrained heads are repurposed (head h-1 looks back, not
    head 1). The patch variants have no released code: both layouts are the paper's there."""
    if shift.layout == "released" and shift.axis == "head":
        return range(num_heads - shift.n_back, num_heads), range(0, shift.n_fwd)
    return range(0, shift.n_back), range(shift.n_back, shift.n_back + shift.n_fwd)


class Attention(nn.Module):
    """MSA (eq. 12-16), or MSCA (eq. 17-23) when `shift` moves some of Q, K, V in time.

    On `(B, T, N+1, D)`, the frame axis kept for the shift to reach t-1 and t+1. Parameter
    names follow timm (`qkv`, `proj`), so ViT checkpoints load unchanged."""

    def __init__(self, dim: int, num_heads: int, shift: CrossAttentionShift = NO_SHIFT):
        super().__init__()
        self.num_heads, self.shift = num_heads, shift
        self.qkv = nn.Linear(dim, 3 * dim)  # eq. 12: [W_q, W_k, W_v], timm's order
        self.proj = nn.Linear(dim, dim)

        def slots(moved: range) -> list:  # index tuples into (three, h, n, d) of a frame
            span = slice(moved.start, moved.stop)
            axes = (span,) if shift.axis == "head" else (EVERY, span)
            return [("qkv".index(c), *axes) for c in shift.shifted if len(moved)]

        back, fwd = shifted_slots(shift, num_heads)
        self.from_previous, self.from_next = slots(back), slots(fwd)

    def shifted_qkv(self, x: torch.Tensor) -> torch.Tensor:
        # eq. 12 and 15: Q^(t), K^(t), V^(t) of every frame t, in h heads of D/h channels
        qkv = rearrange(self.qkv(x), "b t n (three h d) -> b t three h n d",
                        three=3, h=self.num_heads)
        # eq. 17-18 (heads) and eq. 21 (patches): some heads/tokens of frame t are those of
        # t-1 or t+1. One copy of all of Q, K, V: a copy of only the shifted ones would keep
        # the unshifted projection alive beside it for backward, saving more than MSA does.
        # Shifting only the moved heads in place is slower: many small strided copies.
        qkv = temporal_shift(qkv, self.from_previous, self.from_next)
        return rearrange(qkv, "b t three h n d -> three (b t) h n d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.shifted_qkv(x)
        # eq. 13-14: head_i^(t) = softmax(Q_i K_i^T / sqrt(D/h)) V_i, SDPA's default scale.
        # Eq. 14 writes sqrt(D), but ViT's weights were trained with sqrt(D/h) per head:
        # sqrt(D) would sharpen their attention by sqrt(h).
        heads = F.scaled_dot_product_attention(q, k, v)
        # eq. 16: stack the heads, then the output projection of ViT's MSA
        heads = rearrange(heads, "(b t) h n d -> b t n (h d)", b=x.size(0))
        return self.proj(heads)

    def class_token_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, h, N+1): softmax weights of each frame's class-token query over its keys."""
        q, k, _ = self.shifted_qkv(x)
        logits = q[:, :, :1] @ k.transpose(-1, -2) / q.size(-1) ** 0.5  # SDPA's scale
        return logits.softmax(-1)[:, :, 0].unflatten(0, (x.size(0), -1))

    def extra_repr(self) -> str:
        s = self.shift
        if not s.shifted:
            return f"heads={self.num_heads}"
        return (f"heads={self.num_heads}, shift={s.shifted.upper()} along {s.axis}s "
                f"(back {s.n_back}, fwd {s.n_fwd}, {s.layout} layout)")


def describe_shift(variant: str, num_heads: int, num_tokens: int, heads: int = 2,
                   patches: int = 16, layout: str = "paper") -> str:
    """A map: which heads (or tokens) of Q, K, V in frame t come from t-1, t and t+1."""
    shift = CrossAttentionShift.from_variant(variant, heads=heads, patches=patches,
                                             num_heads=num_heads, num_tokens=num_tokens,
                                             layout=layout)
    unit, total = ("head", num_heads) if shift.axis == "head" else ("token", num_tokens)
    back, fwd = shifted_slots(shift, num_heads)
    cls_note = " (token 0 = CLS)" if unit == "token" else ""
    stay = total - len(back) - len(fwd)
    lines = [f"MSCA-{variant} ({layout} layout): {len(back)} {unit}s from t-1, "
             f"{len(fwd)} from t+1, {stay} of {total} stay{cls_note}"]
    back_span, fwd_span = (f"{unit}s {taken.start}..{taken.stop - 1}" if taken else "none"
                           for taken in (back, fwd))
    for name in "QKV":
        if name.lower() in shift.shifted and len(back) + len(fwd):
            lines.append(f"  {name}: t-1 <- {back_span} | t+1 <- {fwd_span} | t: the rest")
        else:
            lines.append(f"  {name}: all {total} {unit}s from frame t")
    if unit == "head":
        marks = {**dict.fromkeys(fwd, "+"), **dict.fromkeys(back, "-")}
        cells = [marks.get(i, ".") for i in range(total)]
        lines.append("  heads: " + " ".join(cells) + "   (- from t-1, + from t+1, . from t)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Print which heads/tokens MSCA takes from frames t-1 and t+1.")
    parser.add_argument("--variant", default="KV", choices=MSCA_VARIANTS)
    parser.add_argument("--heads", type=int, default=2, help="heads shifted: h_b + h_f")
    parser.add_argument("--patches", type=int, default=16, help="tokens shifted: N_b + N_f")
    parser.add_argument("--num-heads", type=int, default=12, help="of the model (B/16: 12)")
    parser.add_argument("--num-tokens", type=int, default=197, help="N+1 (224 px: 197)")
    parser.add_argument("--shift-layout", default="paper", choices=LAYOUTS,
                        help="paper text or released code")
    args = parser.parse_args()
    try:
        print(describe_shift(args.variant, args.num_heads, args.num_tokens, args.heads,
                             args.patches, args.shift_layout))
    except ValueError as error:
        parser.error(str(error))
