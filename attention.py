"""Multi-head Self-Attention (MSA, eq. 12-16) and Multi-head Self/Cross-Attention (MSCA, eq. 17-23).

MSCA is MSA in which some of the queries, keys or values of frame t are taken from frames t-1 and t+1.
All 14 variants of the paper are one mechanism with two switches:
- which of Q, K, V are shifted: "Q", "K", "V", "QK", "KV", "QV", "QKV";
- along which axis: heads (eq. 17-18: whole heads come from a neighbour frame) or patches
  (eq. 19-23, variant names with a "p" prefix: whole tokens, all heads, come from a neighbour frame).
With nothing shifted it is exactly MSA, so one class serves both.

Run `python attention.py --variant pKV --patches 16` to print which heads/tokens come from which frame.
"""
import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from shift import temporal_shift

HEAD_VARIANTS = ("Q", "K", "V", "QK", "KV", "QV", "QKV")
PATCH_VARIANTS = tuple("p" + v for v in HEAD_VARIANTS)
MSCA_VARIANTS = HEAD_VARIANTS + PATCH_VARIANTS


@dataclass(frozen=True)
class CrossAttentionShift:
    """Which of Q/K/V are shifted, along which axis, and how many slots backward (t-1) and forward (t+1)."""

    shifted: str = ""  # subset of "qkv"
    axis: str = "head"  # "head" (eq. 17-18) or "patch" (eq. 19-23)
    n_back: int = 0  # h_b heads or N_b tokens taken from frame t-1
    n_fwd: int = 0  # h_f heads or N_f tokens taken from frame t+1

    @classmethod
    def from_variant(cls, variant: str, *, heads: int, patches: int, num_heads: int,
                     num_tokens: int) -> "CrossAttentionShift":
        """MSCA-`variant` shifting `heads` heads (or, for "p" variants, `patches` tokens) in total,
        half from t-1 and half from t+1, in a model of `num_heads` heads and `num_tokens` = N+1 tokens."""
        if variant not in MSCA_VARIANTS:
            raise ValueError(f"unknown MSCA variant {variant!r}; choose one of {', '.join(MSCA_VARIANTS)}")
        if variant.startswith("p"):
            n_back, n_fwd = split_evenly(patches, num_tokens, "patches", "tokens (CLS + patches)")
        else:
            n_back, n_fwd = split_evenly(heads, num_heads, "heads", "heads")
        return cls(variant.removeprefix("p").lower(), "patch" if variant.startswith("p") else "head", n_back, n_fwd)

    def applies_to(self, name: str) -> bool:
        return name in self.shifted and self.n_back + self.n_fwd > 0


NO_SHIFT = CrossAttentionShift()


def split_evenly(amount: int, available: int, what: str, unit: str) -> tuple[int, int]:
    """`heads=2` -> h_b = h_f = 1, `patches=16` -> N_b = N_f = 8: half from t-1, half from t+1.
    `available` is the number of heads, or of tokens per frame (N+1, CLS included)."""
    largest = available - available % 2
    if not isinstance(amount, int) or amount < 0 or amount % 2 or amount > available:
        raise ValueError(f"{what}={amount!r}: must be an even number from 0 to {largest} "
                         f"(the model has {available} {unit} per frame; half shift from t-1, half from t+1)")
    return amount // 2, amount // 2


# Axis of the slots in a `(b, t, h, n, d)` tensor: heads are axis 2, tokens (patches incl. CLS) axis 3.
SLOT_DIM = {"head": 2, "patch": 3}


class Attention(nn.Module):
    """MSA (eq. 12-16), or MSCA (eq. 17-23) when `shift` moves some of Q, K, V to neighbour frames.

    Input and output are `(B, T, N+1, D)`: the frame axis is kept so that the shift can reach t-1, t+1.
    Parameter names follow timm (`qkv`, `proj`), so ViT checkpoints load unchanged.
    """

    def __init__(self, dim: int, num_heads: int, shift: CrossAttentionShift = NO_SHIFT):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        if shift.axis not in SLOT_DIM:
            raise ValueError(f"shift axis must be 'head' or 'patch', not {shift.axis!r}")
        if shift.axis == "head" and shift.n_back + shift.n_fwd > num_heads:
            raise ValueError(f"cannot shift {shift.n_back}+{shift.n_fwd} heads of {num_heads}")
        self.num_heads = num_heads
        self.shift = shift
        self.qkv = nn.Linear(dim, 3 * dim)  # eq. 12: [W_q, W_k, W_v] (timm's order q, k, v)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        # eq. 12 and 15: Q^(t), K^(t), V^(t) of every frame t, split into h heads of D/h channels
        q, k, v = rearrange(self.qkv(x), "b t n (three h d) -> three b t h n d", three=3, h=self.num_heads)
        # eq. 17-18 (heads) and eq. 21 (patches): some heads/tokens of frame t are those of t-1 or t+1.
        # The paper's order: the first h_b heads (N_b tokens) come from t-1, the next h_f (N_f) from t+1.
        # (The authors' released code takes the first heads from t+1; only the labelling differs.)
        q, k, v = (self._shifted(name, tensor) for name, tensor in zip("qkv", (q, k, v)))
        # eq. 13-14: head_i^(t) = softmax(Q_i K_i^T / sqrt(D/h)) V_i. Eq. 14 writes sqrt(D), but ViT (and its
        # pretrained weights) scale by sqrt(D/h) per head; sqrt(D) would sharpen the attention the weights
        # were trained with by sqrt(h). SDPA's default scale is 1/sqrt(last dim) = 1/sqrt(D/h).
        heads = F.scaled_dot_product_attention(*(rearrange(z, "b t h n d -> (b t) h n d") for z in (q, k, v)))
        # eq. 16: stack the heads, then the output projection of ViT's MSA
        return self.proj(rearrange(heads, "(b t) h n d -> b t n (h d)", b=batch))

    def _shifted(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not self.shift.applies_to(name):
            return tensor
        return temporal_shift(tensor, SLOT_DIM[self.shift.axis], self.shift.n_back, self.shift.n_fwd)

    def extra_repr(self) -> str:
        s = self.shift
        return f"heads={self.num_heads}" + (f", shift={s.shifted.upper()} along {s.axis}s "
                                              f"(back {s.n_back}, fwd {s.n_fwd})" if s.shifted else "")


def describe_shift(variant: str, num_heads: int, num_tokens: int, heads: int = 2, patches: int = 16) -> str:
    """A compact map of which heads (or tokens) of Q, K, V in frame t come from frames t-1, t, t+1."""
    shift = CrossAttentionShift.from_variant(variant, heads=heads, patches=patches, num_heads=num_heads,
                                             num_tokens=num_tokens)
    along_heads = shift.axis == "head"
    total = num_heads if along_heads else num_tokens
    back, fwd = range(0, shift.n_back), range(shift.n_back, shift.n_back + shift.n_fwd)
    unit = "head" if along_heads else "token"

    def span(r):
        return f"{unit}s {r.start}..{r.stop - 1}" if len(r) else "none"

    lines = [f"MSCA-{variant}: {shift.n_back} {unit}s from t-1, {shift.n_fwd} from t+1, "
             f"{total - shift.n_back - shift.n_fwd} of {total} stay" + ("" if along_heads else " (token 0 = CLS)")]
    for name in "QKV":
        if shift.applies_to(name.lower()):
            lines.append(f"  {name}: t-1 <- {span(back)} | t+1 <- {span(fwd)} | t: the rest")
        else:
            lines.append(f"  {name}: all {total} {unit}s from frame t")
    if along_heads:
        cells = ["-" if i in back else "+" if i in fwd else "." for i in range(total)]
        lines.append("  heads: " + " ".join(cells) + "   (- from t-1, + from t+1, . from t)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print which heads/tokens MSCA takes from frames t-1 and t+1.")
    parser.add_argument("--variant", default="KV", choices=MSCA_VARIANTS)
    parser.add_argument("--heads", type=int, default=2, help="heads shifted in total (h_b = h_f = heads/2)")
    parser.add_argument("--patches", type=int, default=16, help="tokens shifted in total (N_b = N_f = patches/2)")
    parser.add_argument("--num-heads", type=int, default=12, help="heads of the model (ViT-B/16: 12)")
    parser.add_argument("--num-tokens", type=int, default=197, help="tokens per frame, N+1 (224 px: 197)")
    args = parser.parse_args()
    try:
        print(describe_shift(args.variant, args.num_heads, args.num_tokens, args.heads, args.patches))
    except ValueError as error:
        parser.error(str(error))
