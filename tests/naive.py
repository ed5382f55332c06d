"""Obviously-correct references written straight from the paper's equations: plain Python loops over
frames t, heads i and tokens n, float64, no einops and no code from the project. Slow, small inputs only."""
import math

import numpy as np
import torch


def source_frame(t: int, slot: int, n_back: int, n_fwd: int, frames: int, layout="paper", num_slots=None):
    """Frame whose value slot `slot` of frame t holds, or None at the clip ends (zeros).
    paper (eq. 8, 17, 21): slots [0, n_back) from t-1, [n_back, n_back + n_fwd) from t+1.
    released (the authors' MSCA.diff for heads: `shift[:, :-1, 0:fold] = x[:, 1:, 0:fold]` and
    `shift[:, 1:, h-fold:] = x[:, :-1, h-fold:]`): slots [0, n_fwd) from t+1, the last n_back from t-1."""
    if layout == "released":
        back, fwd = slot >= num_slots - n_back, slot < n_fwd
    else:
        back, fwd = slot < n_back, n_back <= slot < n_back + n_fwd
    if back:
        return t - 1 if t >= 1 else None
    if fwd:
        return t + 1 if t + 1 < frames else None
    return t


def shift(x: torch.Tensor, dim: int, n_back: int, n_fwd: int) -> torch.Tensor:
    """x: (B, T, ...); slot axis `dim`. Element by element along (t, slot)."""
    out = torch.zeros_like(x)
    frames = x.shape[1]
    for t in range(frames):
        for slot in range(x.shape[dim]):
            src = source_frame(t, slot, n_back, n_fwd, frames)
            if src is not None:
                out.select(1, t).select(dim - 1, slot).copy_(x.select(1, src).select(dim - 1, slot))
    return out


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attention(z, qkv_w, qkv_b, proj_w, proj_b, num_heads, shifted="", axis="head", n_back=0, n_fwd=0,
              layout="paper"):
    """MSA / MSCA on z: (B, T, N+1, D). shifted: subset of "qkv"; axis: "head" (eq. 17-18) or "patch" (eq. 21-23);
    layout "released" moves other heads (source_frame); patches have no released code: always the paper's."""
    batch, frames, tokens, dim = z.shape
    d = dim // num_heads
    q_all = z @ qkv_w[:dim].T + qkv_b[:dim]  # eq. 12
    k_all = z @ qkv_w[dim:2 * dim].T + qkv_b[dim:2 * dim]
    v_all = z @ qkv_w[2 * dim:].T + qkv_b[2 * dim:]

    def head_matrix(m, name, b, t, i):
        """M_i^(t) of eq. 15 (N+1, D/h), after the shift of eq. 17/18 or eq. 21."""
        cols = slice(i * d, (i + 1) * d)
        if name not in shifted:
            return m[b, t, :, cols]
        if axis == "head":
            src = source_frame(t, i, n_back, n_fwd, frames, layout, num_heads)
            return torch.zeros(tokens, d, dtype=z.dtype) if src is None else m[b, src, :, cols]
        rows = []
        for n in range(tokens):
            src = source_frame(t, n, n_back, n_fwd, frames)
            rows.append(torch.zeros(d, dtype=z.dtype) if src is None else m[b, src, n, cols])
        return torch.stack(rows)

    heads = torch.zeros(batch, frames, tokens, dim, dtype=z.dtype)
    for b in range(batch):
        for t in range(frames):
            for i in range(num_heads):
                q = head_matrix(q_all, "q", b, t, i)
                k = head_matrix(k_all, "k", b, t, i)
                v = head_matrix(v_all, "v", b, t, i)
                a = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)  # eq. 14 with the per-head scale
                heads[b, t, :, i * d:(i + 1) * d] = a @ v  # eq. 13, stacked as eq. 16
    return heads @ proj_w.T + proj_b


def token_shift(z, n_channels, layout="paper"):
    """Eq. 8-9: class-token channels [0, D_b) from t-1, [D_b, D_b + D_f) from t+1, D_b = D_f = n_channels.
    released (TokenShift's code: `out[:, :-1, 0, :fold] = x[:, 1:, 0, :fold]`, then
    `out[:, 1:, 0, fold:2*fold] = x[:, :-1, 0, fold:2*fold]`): [0, D_f) from t+1, [D_f, D_f + D_b) from t-1."""
    out = z.clone()
    frames, dim = z.shape[1], z.shape[3]
    for t in range(frames):
        for c in range(dim):
            if layout == "released":
                src = (t + 1 if t + 1 < frames else None) if c < n_channels else \
                    (t - 1 if t >= 1 else None) if c < 2 * n_channels else t
            else:
                src = source_frame(t, c, n_channels, n_channels, frames)
            out[:, t, 0, c] = 0 if src is None else z[:, src, 0, c]
    return out


def patchify(frames, patch):
    """(F, 3, H, W) -> (F, N, 3*P*P): patch i in row-major order, pixels in (channel, row, col) order."""
    count, _, height, width = frames.shape
    out = []
    for gy in range(height // patch):
        for gx in range(width // patch):
            out.append(frames[:, :, gy * patch:(gy + 1) * patch, gx * patch:(gx + 1) * patch].reshape(count, -1))
    return torch.stack(out, dim=1)


def video_model(state, video, num_heads, blocks, patch=16):
    """The whole video model from a timm-named state dict. blocks: per block a dict with keys
    `shifted`, `axis`, `n_back`, `n_fwd`, `layout` (MSCA) and/or `token_shift` (channels each way) and
    `layout`."""
    s = {k: v.double() for k, v in state.items()}
    z = encode(state, video, num_heads, blocks, patch)
    cls = layer_norm(z[:, :, 0], s["norm.weight"], s["norm.bias"])
    return (cls @ s["head.weight"].T + s["head.bias"]).mean(dim=1)


def encode(state, video, num_heads, blocks, patch=16):
    """The tokens z (B, T, N+1, D) after eq. 1 and the given blocks (as in video_model), float64."""
    s = {k: v.double() for k, v in state.items()}
    batch, _, frames, _, _ = video.shape
    images = video.double().permute(0, 2, 1, 3, 4).reshape(batch * frames, *video.shape[1:2], *video.shape[3:])
    dim = s["cls_token"].shape[-1]
    embed = patchify(images, patch) @ s["patch_embed.proj.weight"].reshape(dim, -1).T + s["patch_embed.proj.bias"]
    z = torch.cat([s["cls_token"].expand(batch * frames, 1, dim), embed], dim=1) + s["pos_embed"]  # eq. 1
    z = z.reshape(batch, frames, -1, dim)
    for i, kind in enumerate(blocks):
        p = f"blocks.{i}."
        if kind.get("token_shift"):
            z = token_shift(z, kind["token_shift"], kind.get("layout", "paper"))  # eq. 4
        z = z + attention(layer_norm(z, s[p + "norm1.weight"], s[p + "norm1.bias"]),
                          s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"], s[p + "attn.proj.weight"],
                          s[p + "attn.proj.bias"], num_heads, kind.get("shifted", ""), kind.get("axis", "head"),
                          kind.get("n_back", 0), kind.get("n_fwd", 0), kind.get("layout", "paper"))  # eq. 2 / 5 / 10
        if kind.get("token_shift"):
            z = token_shift(z, kind["token_shift"], kind.get("layout", "paper"))  # eq. 6
        hidden = gelu(layer_norm(z, s[p + "norm2.weight"], s[p + "norm2.bias"]) @ s[p + "mlp.fc1.weight"].T
                      + s[p + "mlp.fc1.bias"])
        z = z + hidden @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]  # eq. 3 / 7 / 11
    return z


def google_vit_frames(arrays: dict, images: np.ndarray, patch=16) -> np.ndarray:
    """ViT on single images straight from Google's .npz layout (numpy, float64): images (F, H, W, 3) -> logits."""
    a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    count, height, width, _ = images.shape
    grid_h, grid_w = height // patch, width // patch
    patches = images.reshape(count, grid_h, patch, grid_w, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("fyxhwc,hwcd->fyxd", patches, a["embedding/kernel"]).reshape(count, grid_h * grid_w, -1)
    x = x + a["embedding/bias"]
    x = np.concatenate([np.repeat(a["cls"], count, axis=0), x], axis=1) + a["Transformer/posembed_input/pos_embedding"]

    def ln(v, prefix):
        mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-6) * a[prefix + "/scale"] + a[prefix + "/bias"]

    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in a:
        p = f"Transformer/encoderblock_{i}/"
        m = p + "MultiHeadDotProductAttention_1/"
        y = ln(x, p + "LayerNorm_0")
        q, k, v = (np.einsum("fnD,Dhd->fhnd", y, a[m + n + "/kernel"]) + a[m + n + "/bias"][None, :, None]
                   for n in ("query", "key", "value"))
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + np.einsum("fhnd,hdD->fnD", weights @ v, a[m + "out/kernel"]) + a[m + "out/bias"]
        y = ln(x, p + "LayerNorm_2") @ a[p + "MlpBlock_3/Dense_0/kernel"] + a[p + "MlpBlock_3/Dense_0/bias"]
        y = gelu(torch.from_numpy(y)).numpy()
        x = x + y @ a[p + "MlpBlock_3/Dense_1/kernel"] + a[p + "MlpBlock_3/Dense_1/bias"]
        i += 1
    return ln(x[:, 0], "Transformer/encoder_norm") @ a["head/kernel"] + a["head/bias"]
