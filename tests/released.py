"""The authors' model and checkpoint format, re-stated small from TokShift-Transformer's code:
jeonsworld's ViT (vit_models/modeling.py) with TokShift's class-token shift (modeling_tokshift.py)
as `base_model` of VideoNet (model/video_net.py), whose frame logits are averaged, saved as
main_ddp_shift_v3.py's save_checkpoint does from DistributedDataParallel. Their names and their
equations; no project code."""
import math
from collections import Counter

import torch
from torch import nn


class Attention(nn.Module):
    """Separate query, key, value and out Linear layers; heads are consecutive channel groups."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (layer(x).view(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)
                   for layer in (self.query, self.key, self.value))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1)
        return self.out((probs @ v).permute(0, 2, 1, 3).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    """frames > 0: TokShift's block, shift_tk before the attention and before the MLP."""

    def __init__(self, dim, heads, frames=0, fold_div=4):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.ffn = Attention(dim, heads), Mlp(dim)
        self.frames, self.fold_div = frames, fold_div

    def shift_tk(self, x):
        """Class token channels [0, fold) from frame t+1, [fold, 2 fold) from t-1, zeros past
        the clip's ends."""
        if not self.frames:
            return x
        bt, n, c = x.shape
        x = x.view(bt // self.frames, self.frames, n, c)
        fold = c // self.fold_div
        out = x.clone()
        out[:, :, 0, :2 * fold] = 0
        out[:, :-1, 0, :fold] = x[:, 1:, 0, :fold]
        out[:, 1:, 0, fold:2 * fold] = x[:, :-1, 0, fold:2 * fold]
        return out.view(bt, n, c)

    def forward(self, x):
        x = self.shift_tk(x)
        x = x + self.attn(self.attention_norm(x))
        x = self.shift_tk(x)
        return x + self.ffn(self.ffn_norm(x))


class VideoNet(nn.Module):
    """base_model.transformer.{embeddings, encoder} and base_model.head; frame logits averaged."""

    def __init__(self, dim, heads, depth, img_size, classes, frames, tokshift=False, seed=0):
        super().__init__()
        vit = nn.Module()
        vit.transformer, vit.head = nn.Module(), nn.Linear(dim, classes)
        embeddings = vit.transformer.embeddings = nn.Module()
        embeddings.patch_embeddings = nn.Conv2d(3, dim, 16, stride=16)
        tokens = (img_size // 16) ** 2 + 1
        embeddings.position_embeddings = nn.Parameter(torch.zeros(1, tokens, dim))
        embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        encoder = vit.transformer.encoder = nn.Module()
        shifted = frames if tokshift else 0
        encoder.layer = nn.ModuleList(Block(dim, heads, shifted) for _ in range(depth))
        encoder.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.base_model, self.frames = vit, frames
        torch.manual_seed(seed)
        for p in self.parameters():  # every weight random, LayerNorm's too: a wrong name shows
            nn.init.normal_(p, std=0.2)

    def forward(self, video):
        """video: (B, 3, T, H, W) as the project's; theirs comes as (B, T, 3, H, W)."""
        frames = video.transpose(1, 2).reshape(-1, 3, *video.shape[-2:])
        embeddings = self.base_model.transformer.embeddings
        encoder = self.base_model.transformer.encoder
        x = embeddings.patch_embeddings(frames).flatten(2).transpose(-1, -2)
        x = torch.cat([embeddings.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + embeddings.position_embeddings
        for block in encoder.layer:
            x = block(x)
        logits = self.base_model.head(encoder.encoder_norm(x)[:, 0])
        return logits.view(video.size(0), self.frames, -1).mean(1)


def save_their_checkpoint(net, path):
    """torch.save of {epoch, arch, state_dict, best_prec1, optimizer, scheduler}: DDP's `module.`
    keys, SGD's state and MultiStepLR's, whose milestones are a collections.Counter."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[10, 15, 18])
    assert isinstance(scheduler.state_dict()["milestones"], Counter)
    torch.save({"epoch": 18, "arch": "ViT-B_16",
                "state_dict": {"module." + k: v for k, v in net.state_dict().items()},
                "best_prec1": 77.28, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, path)
    return path
