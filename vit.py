"""A hand-written ViT (eq. 1-3) applied frame by frame to a video; frame scores averaged.

Block kinds (one per block, Fig. 1 of the paper):
- ViT:        z' = z + MSA(LN(z));  z = z' + MLP(LN(z'))                  (eq. 2-3)
- TokenShift: the same, with Shift() of the class token before MSA and MLP (eq. 4-7)
- MSCA:       MSCA in place of MSA: heads/tokens from frames t-1, t+1 (eq. 10-11, 17-23)

Parameter names follow timm's `vision_transformer.py`, so timm state dicts load with
`load_state_dict`; `load_pretrained` also reads Google's ImageNet-21k `.npz` files and the
TokShift/MSCA authors' Kinetics checkpoints (`.pth`, `.pth.tar`).
"""
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from attention import MSCA_VARIANTS, NO_SHIFT, Attention, CrossAttentionShift
from shift import LAYOUTS, TokenShift, temporal_shift

PATCH_SIZE = 16
SIZES = {  # name: (embedding dim D, heads h, blocks)
    "Ti/16": (192, 3, 12),
    "S/16": (384, 6, 12),
    "B/16": (768, 12, 12),
    "L/16": (1024, 16, 24),
}
VARIANTS = ("vit", "tokenshift") + MSCA_VARIANTS
AMP = ("auto", "bf16", "fp16", "off")
LAYER_NORM_EPS = 1e-6  # the original ViT's; PyTorch's default 1e-5 would not fit its weights


class Block(nn.Module):
    """A pre-norm encoder block on `(B, T, N+1, D)`; its two shift settings choose its kind."""

    def __init__(self, dim: int, num_heads: int, attn_shift: CrossAttentionShift = NO_SHIFT,
                 token_shift: Optional[TokenShift] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, attn_shift)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Linear(dim, 4 * dim), act=nn.GELU(), fc2=nn.Linear(4 * dim, dim)))
        self.token_shift = token_shift or nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.token_shift(z)  # eq. 4 (identity unless TokenShift)
        z = z + self.attn(self.norm1(z))  # eq. 2 / 5 / 10
        z = self.token_shift(z)  # eq. 6
        return z + self.mlp(self.norm2(z))  # eq. 3 / 7 / 11


class VideoViT(nn.Module):
    """Frame-wise ViT: each frame through the encoder, its class token through the head, the
    frame scores averaged over time (the paper's "ViT" baseline; TokenShift, MSCA on top)."""

    def __init__(self, num_classes: int, dim: int, num_heads: int, img_size: int,
                 attn_shifts: list, token_shift: Optional[TokenShift] = None):
        super().__init__()
        self.img_size = img_size
        num_patches = (img_size // PATCH_SIZE) ** 2
        # x_0^i E of eq. 1 for every P x P patch: a stride-P convolution
        self.patch_embed = nn.Sequential(OrderedDict(
            proj=nn.Conv2d(3, dim, PATCH_SIZE, stride=PATCH_SIZE),
            tokens=Rearrange("bt d gh gw -> bt (gh gw) d")))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, shift, token_shift) for shift in attn_shifts)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, num_classes)
        self.init_weights()

    def init_weights(self):
        """timm's ViT initialisation for training from scratch; pretrained weights replace it."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) in [-1, 1] -> the tokens z_0 (B, T, N+1, D) of eq. 1."""
        size = self.img_size
        if video.dim() != 5 or video.size(1) != 3 or video.shape[-2:] != (size, size):
            raise ValueError(f"expected a video (B, 3, T, {size}, {size}), "
                             f"got {tuple(video.shape)}")
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        patches = self.patch_embed(frames)
        cls = self.cls_token.expand(patches.size(0), -1, -1)
        z = torch.cat([cls, patches], dim=1) + self.pos_embed  # eq. 1
        return rearrange(z, "(b t) n d -> b t n d", b=video.size(0))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) in [-1, 1] -> logits (B, num_classes)."""
        z = self.embed(video)
        for block in self.blocks:
            z = block(z)
        frame_logits = self.head(self.norm(z)[:, :, 0])  # each frame's class token: (B, T, C)
        return frame_logits.mean(dim=1)  # temporal averaging


@torch.no_grad()
def class_token_attention(model: VideoViT, video: torch.Tensor, block: int):
    """Block `block`'s class-token attention as its forward computes it: each frame's CLS softmax
    weights over the N+1 keys (B, T, h, N+1), and each key's frame (T, h, N+1), -1 for zeros."""
    z = model.embed(video)
    for earlier in model.blocks[:block]:
        z = earlier(z)
    chosen = model.blocks[block]
    weights = chosen.attn.class_token_attention(chosen.norm1(chosen.token_shift(z)))
    frame = torch.arange(1, z.size(1) + 1).view(1, -1, 1, 1, 1, 1)  # from 1: a zero reads -1
    numbers = frame.expand(1, z.size(1), 3, weights.size(2), z.size(2), 1)
    shifted = temporal_shift(numbers, chosen.attn.from_previous, chosen.attn.from_next)
    return weights, shifted[0, :, 1, ..., 0] - 1


def build_model(variant: str, num_classes: int, num_frames: int = 8, *, size: str = "B/16",
                img_size: int = 224, heads: int = 2, patches: int = 16, shift_div: int = 4,
                msca_blocks: Optional[int] = None, shift_layout: str = "paper") -> VideoViT:
    """The video model of the paper. Checkpoints store these arguments as `model_args`.

    variant: "vit", "tokenshift", or an MSCA variant: "Q" "K" "V" "QK" "KV" "QV" "QKV"
        (shift along heads) and "pQ" ... "pQKV" (shift along patches).
    num_frames: the clip length T of training and test (the network itself takes any T).
    heads: heads shifted in total along the head axis (2: h_b = h_f = 1, the paper's best).
    patches: tokens shifted in total along the patch axis (16: N_b = N_f = 8; 0 is CLS).
    msca_blocks: MSCA in the last k blocks only, plain MSA before (Table 3); None = all.
    shift_div: TokenShift moves D // shift_div class-token channels each way (4: D/4).
    shift_layout: "paper" (the text's equations) or "released" (the authors' code, which gave
        the paper's numbers): which heads and TokenShift channels look back (see shift.py).
    """
    for what, value, choices in (("variant", variant, VARIANTS), ("size", size, SIZES),
                                 ("shift_layout", shift_layout, LAYOUTS)):
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    if not isinstance(img_size, int) or img_size < PATCH_SIZE or img_size % PATCH_SIZE:
        raise ValueError(f"img_size={img_size!r}: must be a positive multiple "
                         f"of the patch size {PATCH_SIZE}")
    if num_classes < 1 or num_frames < 1:
        raise ValueError(f"num_classes={num_classes} and num_frames={num_frames} "
                         "must both be >= 1")
    dim, num_heads, depth = SIZES[size]
    num_tokens = (img_size // PATCH_SIZE) ** 2 + 1
    attn_shifts, token_shift = [NO_SHIFT] * depth, None
    if variant == "tokenshift":
        if not isinstance(shift_div, int) or not 2 <= shift_div <= dim:  # else a way is empty
            raise ValueError(f"shift_div={shift_div!r}: must be an integer from 2 to {dim} "
                             f"(D // shift_div channels each way, D = {dim})")
        token_shift = TokenShift(dim, shift_div, shift_layout)
    elif variant in MSCA_VARIANTS:
        k = depth if msca_blocks is None else msca_blocks
        if not isinstance(k, int) or not 0 <= k <= depth:
            raise ValueError(f"msca_blocks={msca_blocks!r}: must be None (all) "
                             f"or an integer 0..{depth}")
        msca = CrossAttentionShift.from_variant(variant, heads=heads, patches=patches,
                                                num_heads=num_heads, num_tokens=num_tokens,
                                                layout=shift_layout)
        amounts = {"patches" if msca.axis == "patch" else "heads": msca.n_back, "msca_blocks": k}
        if not all(amounts.values()):
            empty = " and ".join(f"{name}=0" for name, value in amounts.items() if not value)
            raise ValueError(f"{empty}: MSCA-{variant} would shift nothing, which is ViT: use "
                             "variant 'vit'")
        attn_shifts = [NO_SHIFT] * (depth - k) + [msca] * k
    return VideoViT(num_classes, dim, num_heads, img_size, attn_shifts, token_shift)


def compile_blocks(model: VideoViT, **options) -> VideoViT:
    """Regional compilation, in place: blocks of one kind share one compiled graph, so compiling
    costs a block per kind, not the whole model. `options` go to torch.compile (mode, backend)."""
    for block in model.blocks:
        block.compile(**options)
    return model


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The one mixed-precision rule: auto = bf16 on GPUs that have it, else fp16 (train with
    loss scaling), and fp32 (None) on a CPU, where autocast is slower; bf16/fp16 force it."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def usable_device(name: str) -> torch.device:
    """--device's argparse type: the device `name`, ValueError unless this machine can use it."""
    try:
        return torch.empty(0, device=name).device
    except (RuntimeError, AssertionError):  # no such kind or index, or no driver for it
        raise ValueError(name) from None


def video_scores(model: nn.Module, views: torch.Tensor, average: str = "softmax") -> torch.Tensor:
    """(videos, views, 3, T, H, W) -> (videos, classes): the mean of the views' softmax scores
    (the multi-view test of Sec. 4.1), or of their logits (as the authors' released code)."""
    logits = model(views.flatten(0, 1)).float().unflatten(0, views.shape[:2])
    scores = logits if average == "logits" else logits.softmax(-1)
    return scores.mean(1)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (videos,): is the label among the top k scores? k is capped at the class count."""
    top = scores.topk(min(k, scores.size(1)), dim=1).indices
    return (top == labels[:, None]).any(dim=1)


# Pretrained weights: Google's ViT .npz (ImageNet-21k), timm/PyTorch state dicts, the authors' files
class CheckpointError(ValueError):
    """A file that is not a ViT checkpoint, or one that does not fit the model."""


def load_pretrained(model: VideoViT, path, log: Callable[[str], None] = print,
                    classes=None) -> VideoViT:
    """Load ViT weights into `model`: Google's `.npz`, a timm state dict (also `.safetensors`), a
    train.py checkpoint or the authors'. A head of another shape or other `classes` is zeroed, as
    the authors do for fine-tuning; `pos_embed` of another image size is resized."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    expected = model.state_dict()
    state, trained_on = read_checkpoint(path)
    state = {k: v for k, v in state.items() if k in expected}
    pos, want = state.get("pos_embed"), expected["pos_embed"]
    # another width is no image size: load_state names it as a shape error
    if pos is not None and pos.shape != want.shape and pos.shape[-1] == want.shape[-1]:
        state["pos_embed"] = resize_pos_embed(pos, want.shape, path)
    head = ("head.weight", "head.bias")
    same_classes = None in (classes, trained_on) or list(classes) == list(trained_on)
    fits = same_classes and all(k in state and state[k].shape == expected[k].shape for k in head)
    found = state["head.weight"].shape[0] if "head.weight" in state else "no"
    if not fits:
        state.update({k: torch.zeros_like(expected[k]) for k in head})
    load_state(model, state, path)  # before the log: a file that does not fit says only that
    if not fits:
        log(f"{path.name}: checkpoint head has {found} classes, model has "
            f"{len(expected['head.bias'])} (same names: {same_classes}): head initialised to "
            "zeros")
    return model


def load_torch_file(path) -> object:
    """torch.load in its safe mode (tensors and plain containers); errors in one line."""
    try:  # the authors' files hold MultiStepLR's Counter: allowed since torch 2.4 (PR 123775)
        with warnings.catch_warnings():  # a plain pickle gets a protocol warning
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors carry a page of advice; keep the kind
        kind = type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({kind})") from None


def load_state(model: nn.Module, state: dict, path) -> nn.Module:
    """load_state_dict, with an error naming the keys missing, unexpected or of other shapes."""
    expected = model.state_dict()
    other_shapes = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = {"missing": [k for k in expected if k not in state],
                "unexpected": [k for k in state if k not in expected],
                "with other shapes": other_shapes}
    found = []
    for what, keys in problems.items():
        if keys:
            listed = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            found.append(f"{len(keys)} {what} ({listed})")
    if found:
        raise CheckpointError(f"{path}: does not fit the model: keys {'; '.join(found)}")
    model.load_state_dict(state)
    return model


def read_checkpoint(path: Path) -> tuple:
    """(a state dict with timm's names and layouts, the classes of a train.py checkpoint)."""
    if path.suffix == ".npz":
        return npz_to_state_dict(path), None
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional dependency
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs "
                                  "`pip install safetensors`") from None
        return load_file(str(path)), None
    checkpoint = load_torch_file(path)
    names = checkpoint.get("classes") if isinstance(checkpoint, dict) else None
    return state_dict_of(checkpoint, path), names


def state_dict_of(state, path) -> dict:
    """The weights of a loaded PyTorch file with timm's names: the authors' (the ViT `base_model`
    of their VideoNet) renamed, query, key and value concatenated into qkv in that order."""
    for wrapper in ("model", "state_dict", "module"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    renamed = {}
    for key, value in state.items():  # prefixes from DistributedDataParallel and torch.compile
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
        for old, new in RELEASED_NAMES:
            key = key.replace(old, new, 1)
        renamed[key] = value
    for query in [k for k in renamed if ".attn.query." in k]:
        parts = [query.replace("query", part) for part in ("query", "key", "value")]
        if all(part in renamed for part in parts):  # else load_state names the missing qkv
            renamed[query.replace("query", "qkv")] = torch.cat([renamed.pop(p) for p in parts])
    return renamed


# jeonsworld's ViT (TokShift's vit_models/modeling.py; TokShift adds no weights) -> timm's names
RELEASED_NAMES = (("base_model.transformer.", ""), ("base_model.", ""), ("ffn.", "mlp."),
                  ("embeddings.patch_embeddings", "patch_embed.proj"), ("attn.out", "attn.proj"),
                  ("embeddings.position_embeddings", "pos_embed"), ("encoder.layer.", "blocks."),
                  ("embeddings.cls_token", "cls_token"), ("encoder.encoder_norm", "norm"),
                  ("attention_norm", "norm1"), ("ffn_norm", "norm2"))


def npz_to_state_dict(path: Path) -> dict:
    """Google's ViT layout -> timm's. Dense kernels (in, out) become (out, in); attention has
    (D, heads, D/h) for q/k/v and (heads, D/h, D) for out; the patch kernel is HWIO."""
    try:
        arrays = np.load(path)
        names = set(arrays.files)
    except Exception as error:
        problem = f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{path}: not a readable .npz file ({problem})") from None
    pos_embed = "Transformer/posembed_input/pos_embedding"
    if pos_embed not in names:
        raise CheckpointError(f"{path}: not a Google ViT checkpoint (no {pos_embed!r})")

    def get(name: str) -> torch.Tensor:
        if name not in names:
            raise CheckpointError(f"{path}: Google ViT checkpoint lacks key {name!r}")
        return torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))

    def dense(src: str, dst: str) -> dict:
        return {f"{dst}.weight": get(f"{src}/kernel").T, f"{dst}.bias": get(f"{src}/bias")}

    def layer_norm(src: str, dst: str) -> dict:
        return {f"{dst}.weight": get(f"{src}/scale"), f"{dst}.bias": get(f"{src}/bias")}

    state = {
        "patch_embed.proj.weight": get("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": get("embedding/bias"),
        "cls_token": get("cls"),
        "pos_embed": get(pos_embed),
        **layer_norm("Transformer/encoder_norm", "norm"),
    }
    if "head/kernel" in names:  # the in21k release's pre_logits/* are unused in fine-tuning
        state.update(dense("head", "head"))
    depth = sum(1 for n in names if n.startswith("Transformer/encoderblock_")
                and n.endswith("LayerNorm_0/scale"))
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        for google, timm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            state.update(layer_norm(f"{src}/{google}", f"{dst}.{timm}"))
        for google, timm in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            state.update(dense(f"{src}/MlpBlock_3/{google}", f"{dst}.mlp.{timm}"))
        attn = f"{src}/MultiHeadDotProductAttention_1"
        qkv = [f"{attn}/{name}" for name in ("query", "key", "value")]
        state[f"{dst}.attn.qkv.weight"] = torch.cat([get(f"{p}/kernel").flatten(1).T for p in qkv])
        state[f"{dst}.attn.qkv.bias"] = torch.cat([get(f"{p}/bias").flatten() for p in qkv])
        state[f"{dst}.attn.proj.weight"] = get(f"{attn}/out/kernel").flatten(0, 1).T
        state[f"{dst}.attn.proj.bias"] = get(f"{attn}/out/bias")
    return state


def resize_pos_embed(pos_embed: torch.Tensor, shape: torch.Size, path: Path) -> torch.Tensor:
    """Bicubic interpolation of the patch part of pos_embed on its 2-D grid; CLS is kept."""
    old_grid, new_grid = math.isqrt(pos_embed.shape[1] - 1), math.isqrt(shape[1] - 1)
    if (pos_embed.dim() != 3 or pos_embed.shape[2] != shape[2]
            or old_grid ** 2 != pos_embed.shape[1] - 1):
        raise CheckpointError(f"{path}: pos_embed {tuple(pos_embed.shape)} "
                              f"cannot be resized to {tuple(shape)}")
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = rearrange(grid, "1 (gh gw) d -> 1 d gh gw", gh=old_grid).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = rearrange(grid, "1 d gh gw -> 1 (gh gw) d").to(cls.dtype)
    return torch.cat([cls, grid], dim=1)
