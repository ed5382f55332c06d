"""vit.py: every block kind of the paper against the loop reference, the ViT identities, and weight loading."""
import numpy as np
import pytest
import torch

import naive
import released
import vit

IMG, FRAMES = 32, 3  # 2x2 patches + CLS = 5 tokens per frame


def video(batch=2, frames=FRAMES, img=IMG, seed=1):
    torch.manual_seed(seed)
    return torch.rand(batch, 3, frames, img, img, dtype=torch.double) * 2 - 1


def reference_blocks(variant, size, heads=2, patches=16, msca_blocks=None, shift_div=4, shift_layout="paper"):
    """The per-block settings of naive.video_model for a build_model call."""
    dim, _, depth = vit.SIZES[size]
    k = depth if msca_blocks is None else msca_blocks
    if variant == "vit":
        return [{}] * depth
    if variant == "tokenshift":
        return [{"token_shift": dim // shift_div, "layout": shift_layout}] * depth
    amount = patches if variant.startswith("p") else heads
    kind = {"shifted": variant.removeprefix("p").lower(), "axis": "patch" if variant.startswith("p") else "head",
            "n_back": amount // 2, "n_fwd": amount // 2, "layout": shift_layout}
    return [{}] * (depth - k) + [kind] * k


def model_and_reference(variant, size="S/16", **kwargs):
    torch.manual_seed(0)
    model = vit.build_model(variant, 5, FRAMES, size=size, img_size=IMG, **kwargs).double().eval()
    blocks = reference_blocks(variant, size, **kwargs)
    return model, lambda x: naive.video_model(model.state_dict(), x, vit.SIZES[size][1], blocks)


SETTINGS = [  # (variant, kwargs): all 16 block kinds, several heads / patches / msca_blocks / shift_div
    ("vit", {}), ("tokenshift", {}), ("tokenshift", {"shift_div": 8}),
    *[(v, {"heads": 2}) for v in ("Q", "K", "V", "QK", "KV", "QV", "QKV")],
    ("KV", {"heads": 4}), ("KV", {"heads": 6, "msca_blocks": 5}), ("QKV", {"heads": 4, "msca_blocks": 1}),
    *[(v, {"patches": 2}) for v in ("pQ", "pK", "pV", "pQK", "pKV", "pQV", "pQKV")],
    ("pKV", {"patches": 4}), ("pKV", {"patches": 4, "msca_blocks": 8}), ("pQ", {"patches": 4, "msca_blocks": 3}),
    *[(v, {"heads": 2, "shift_layout": "released"}) for v in ("K", "V", "KV", "QKV")],  # the authors' code
    ("KV", {"heads": 4, "shift_layout": "released", "msca_blocks": 6}), ("tokenshift", {"shift_layout": "released"}),
    ("pKV", {"patches": 4, "shift_layout": "released"}),
]


@pytest.mark.parametrize("variant,kwargs", SETTINGS, ids=[f"{v}-{k}" for v, k in SETTINGS])
def test_block_kinds_match_reference(variant, kwargs):
    model, reference = model_and_reference(variant, **kwargs)
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant,kwargs", [("KV", {"heads": 2}), ("QKV", {"heads": 2, "msca_blocks": 6}), ("Q", {"heads": 2}),
                                            ("pQKV", {"patches": 4}), ("pKV", {"patches": 2}), ("tokenshift", {})])
def test_gradients_match_reference(variant, kwargs):
    """Backward through every shift: each parameter's gradient equals that of the reference."""
    model, _ = model_and_reference(variant, size="Ti/16", **kwargs)
    params = dict(model.named_parameters())  # the reference computes with these very tensors
    x = video()
    ours = torch.autograd.grad(model(x).logsumexp(-1).sum(), list(params.values()))
    reference = naive.video_model(params, x, vit.SIZES["Ti/16"][1], reference_blocks(variant, "Ti/16", **kwargs))
    theirs = torch.autograd.grad(reference.logsumexp(-1).sum(), list(params.values()))
    for name, a, b in zip(params, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


def renumber_heads(state, i, j, heads):
    """The same network with heads i and j of every block swapped (rows of qkv, columns of proj)."""
    state = {k: v.clone() for k, v in state.items()}
    dim = state["cls_token"].shape[-1]
    d, order = dim // heads, list(range(heads))
    order[i], order[j] = j, i
    channels = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order])
    rows = torch.cat([channels + part * dim for part in range(3)])
    for name in state:
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            state[name] = state[name][rows]
        elif name.endswith("attn.proj.weight"):
            state[name] = state[name][:, channels]
    return state


@pytest.mark.parametrize("variant,swap", [("KV", True), ("QKV", True), ("V", True), ("tokenshift", False)])
def test_released_model_is_the_paper_model_on_reversed_time(variant, swap):
    """released(x) == paper(x reversed in time), with heads 1 and h-1 renumbered (TokenShift: as it is)."""
    torch.manual_seed(0)
    released = vit.build_model(variant, 5, FRAMES, size="S/16", img_size=IMG, shift_layout="released").double()
    paper = vit.build_model(variant, 5, FRAMES, size="S/16", img_size=IMG).double()
    heads = vit.SIZES["S/16"][1]
    paper.load_state_dict(renumber_heads(released.state_dict(), 1, heads - 1, heads) if swap else released.state_dict())
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(released(x), paper(x.flip(2)), rtol=1e-10, atol=1e-10)
        paper.load_state_dict(released.state_dict())
        assert not torch.allclose(released(x), paper(x), rtol=1e-6, atol=1e-6)


def test_reference_sees_the_temporal_interaction():
    """Guards the test above: on the same weights MSCA-KV, TokenShift and ViT give different scores."""
    x = video()
    kv, _ = model_and_reference("KV")
    _, vit_reference = model_and_reference("vit")
    _, tokenshift_reference = model_and_reference("tokenshift")
    with torch.no_grad():
        scores = kv(x)
    assert not torch.allclose(scores, vit_reference(x)) and not torch.allclose(scores, tokenshift_reference(x))


def empty_shift_model(variant, kwargs):
    """What build_model now refuses (it shifts nothing), built from its parts: Ti/16 at IMG px."""
    dim, heads, depth = vit.SIZES["Ti/16"]
    if variant == "tokenshift":
        token_shift = vit.TokenShift(dim, kwargs["shift_div"])
        return vit.VideoViT(5, dim, heads, IMG, [vit.NO_SHIFT] * depth, token_shift)
    msca = vit.CrossAttentionShift.from_variant(
        variant, heads=kwargs.get("heads", 2), patches=kwargs.get("patches", 2), num_heads=heads,
        num_tokens=(IMG // 16) ** 2 + 1)
    k = kwargs.get("msca_blocks", depth)
    return vit.VideoViT(5, dim, heads, IMG, [vit.NO_SHIFT] * (depth - k) + [msca] * k, None)


@pytest.mark.parametrize("variant,kwargs", [("KV", {"heads": 0}), ("pKV", {"patches": 0}), ("QKV", {"msca_blocks": 0}),
                                            ("tokenshift", {"shift_div": 10_000})])
def test_shifting_nothing_is_plain_vit(variant, kwargs):
    torch.manual_seed(0)
    plain = vit.build_model("vit", 5, FRAMES, size="Ti/16", img_size=IMG).double()
    model = empty_shift_model(variant, kwargs).double()
    with pytest.raises(ValueError, match="vit|shift_div"):  # so build_model refuses it
        vit.build_model(variant, 5, FRAMES, size="Ti/16", img_size=IMG, **kwargs)
    model.load_state_dict(plain.state_dict())
    x = video()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize("variant", vit.VARIANTS)
def test_only_vit_is_blind_to_frame_order(variant):
    """Frame-wise ViT + temporal averaging scores a reversed clip the same; every temporal model does not."""
    torch.manual_seed(0)
    model = vit.build_model(variant, 5, FRAMES, size="Ti/16", img_size=IMG, patches=4).double()
    x = video()
    with torch.no_grad():
        same = torch.allclose(model(x), model(x.flip(2)), rtol=1e-12, atol=1e-12)
    assert same == (variant == "vit")


@pytest.mark.parametrize("variant", vit.VARIANTS)
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)
    model = vit.build_model(variant, 4, 4, size="Ti/16", img_size=IMG, patches=4)
    model(torch.randn(2, 3, 4, IMG, IMG)).logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


def test_state_dict_uses_timm_names():
    model = vit.build_model("pKV", 10, size="Ti/16", img_size=IMG, patches=4)
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias", "head.weight", "head.bias", *(f"blocks.{i}.{n}" for i in range(12) for n in per_block)}
    assert set(model.state_dict()) == expected
    assert model.state_dict()["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    assert model.state_dict()["pos_embed"].shape == (1, 5, 192)


@pytest.mark.parametrize("size,dim,heads,depth", [("Ti/16", 192, 3, 12), ("S/16", 384, 6, 12), ("B/16", 768, 12, 12),
                                                  ("L/16", 1024, 16, 24)])
def test_sizes(size, dim, heads, depth):
    with torch.device("meta"):
        model = vit.build_model("KV", 400, size=size)
    assert len(model.blocks) == depth and model.cls_token.shape[-1] == dim
    assert model.blocks[0].attn.num_heads == heads and model.pos_embed.shape[1] == 197


def test_msca_only_in_the_last_blocks():
    model = vit.build_model("KV", 3, size="Ti/16", img_size=IMG, msca_blocks=4)
    kinds = [block.attn.shift.shifted for block in model.blocks]
    assert kinds == [""] * 8 + ["kv"] * 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="KV", heads=3), "heads"),
    (dict(variant="KV", heads=4), "heads"),  # Ti/16 has 3 heads
    (dict(variant="pKV", patches=7), "patches"),
    (dict(variant="pKV", patches=6), "patches"),  # 5 tokens per frame at 32 px
    (dict(variant="vitt"), "variant"),
    (dict(variant="KV", size="H/14"), "size"),
    (dict(variant="KV", msca_blocks=13), "msca_blocks"),
    (dict(variant="KV", img_size=40), "img_size"),
    (dict(variant="tokenshift", shift_div=0), "shift_div"),
    # 192 // 1000 = 0 channels
    (dict(variant="tokenshift", shift_div=1000), "shift_div=1000: must be an integer from 2 to"),
    (dict(variant="tokenshift", shift_div=1), "shift_div"),  # nothing left to come from t+1
    (dict(variant="KV", heads=0), "heads=0: MSCA-KV would shift nothing, which is ViT: use "
                                  "variant 'vit'"),
    (dict(variant="pKV", patches=0), "patches=0: .*'vit'"),
    (dict(variant="KV", msca_blocks=0), "msca_blocks=0: .*'vit'"),
])
def test_invalid_arguments_raise_value_error(kwargs, match):
    kwargs = {"num_classes": 3, "size": "Ti/16", "img_size": IMG, **kwargs}
    with pytest.raises(ValueError, match=match):
        vit.build_model(**kwargs)


def test_settings_that_do_not_apply_are_ignored():
    vit.build_model("vit", 3, size="Ti/16", img_size=IMG, patches=100, heads=5)  # patches/heads unused by ViT


# --- loading weights --------------------------------------------------------------------------------------


def google_checkpoint(path, dim=192, heads=3, depth=12, grid=2, classes=5, seed=0):
    """A random checkpoint in the layout of Google's ViT-B_16.npz (ImageNet-21k release, with pre_logits)."""
    rng = np.random.default_rng(seed)
    d, mlp = dim // heads, 4 * dim

    def r(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arrays = {"embedding/kernel": r(16, 16, 3, dim), "embedding/bias": r(dim), "cls": r(1, 1, dim),
              "Transformer/posembed_input/pos_embedding": r(1, grid * grid + 1, dim),
              "Transformer/encoder_norm/scale": 1 + r(dim), "Transformer/encoder_norm/bias": r(dim),
              "head/kernel": r(dim, classes, scale=0.5), "head/bias": r(classes),
              "pre_logits/kernel": r(dim, dim), "pre_logits/bias": r(dim)}
    for i in range(depth):
        p = f"Transformer/encoderblock_{i}/"
        m = p + "MultiHeadDotProductAttention_1/"
        arrays.update({p + "LayerNorm_0/scale": 1 + r(dim), p + "LayerNorm_0/bias": r(dim),
                       p + "LayerNorm_2/scale": 1 + r(dim), p + "LayerNorm_2/bias": r(dim),
                       p + "MlpBlock_3/Dense_0/kernel": r(dim, mlp), p + "MlpBlock_3/Dense_0/bias": r(mlp),
                       p + "MlpBlock_3/Dense_1/kernel": r(mlp, dim), p + "MlpBlock_3/Dense_1/bias": r(dim),
                       m + "out/kernel": r(heads, d, dim), m + "out/bias": r(dim)})
        for name in ("query", "key", "value"):
            arrays.update({m + name + "/kernel": r(dim, heads, d, scale=0.3), m + name + "/bias": r(heads, d)})
    np.savez(path, **arrays)
    return arrays


def test_google_npz_loads_and_matches_an_independent_forward(tmp_path):
    arrays = google_checkpoint(tmp_path / "ViT-Ti_16.npz")
    model = vit.load_pretrained(vit.build_model("vit", 5, FRAMES, size="Ti/16", img_size=IMG),
                                tmp_path / "ViT-Ti_16.npz").double()
    x = video()
    images = x.permute(0, 2, 3, 4, 1).reshape(-1, IMG, IMG, 3).numpy()  # (B*T, H, W, 3), as Google's code takes
    expected = naive.google_vit_frames(arrays, images).reshape(2, FRAMES, 5).mean(1)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-7, atol=1e-7)


def test_head_of_other_shape_is_zeroed_and_logged(tmp_path):
    google_checkpoint(tmp_path / "in21k.npz", classes=7)
    lines = []
    model = vit.build_model("KV", 5, size="Ti/16", img_size=IMG)
    vit.load_pretrained(model, tmp_path / "in21k.npz", log=lines.append)
    assert torch.all(model.head.weight == 0) and torch.all(model.head.bias == 0)
    assert len(lines) == 1 and "in21k.npz" in lines[0] and "zeros" in lines[0]


@pytest.mark.parametrize("kind", ["train.py checkpoint", "google npz"])
def test_weights_of_another_size_are_refused_before_anything_is_logged(tmp_path, kind):
    path = tmp_path / "s16.pt"
    if kind == "google npz":
        path = tmp_path / "ViT-S_16.npz"
        google_checkpoint(path, dim=384, heads=6, classes=7)
    else:
        small = vit.build_model("KV", 7, FRAMES, size="S/16", img_size=IMG)
        torch.save(dict(model=small.state_dict(), classes=list("abcdefg")), path)
    model = vit.build_model("KV", 5, FRAMES, size="Ti/16", img_size=IMG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    with pytest.raises(vit.CheckpointError) as error:
        vit.load_pretrained(model, path, log=lines.append, classes=list("vwxyz"))
    assert lines == [] and str(path) in str(error.value) and "\n" not in str(error.value)
    assert "(1, 1, 384) vs model (1, 1, 192)" in str(error.value)  # the checkpoint's width 384, Ti's 192
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pos_embed_is_interpolated_on_the_grid_keeping_cls(tmp_path):
    arrays = google_checkpoint(tmp_path / "grid4.npz", grid=4)
    pos = arrays["Transformer/posembed_input/pos_embedding"]
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    pos[0, 1:, 0], pos[0, 1:, 1], pos[0, 1:, 2] = rows.ravel(), cols.ravel(), 3.0  # row, column, constant
    arrays["Transformer/posembed_input/pos_embedding"] = pos
    np.savez(tmp_path / "grid4.npz", **arrays)
    model = vit.load_pretrained(vit.build_model("vit", 5, size="Ti/16", img_size=48), tmp_path / "grid4.npz")
    new = model.pos_embed.detach()[0]
    assert new.shape == (10, 192)
    torch.testing.assert_close(new[0], torch.from_numpy(pos[0, 0]))  # CLS kept as is
    grid = new[1:].reshape(3, 3, 192)
    assert torch.all(grid[1:, :, 0] > grid[:-1, :, 0]) and torch.allclose(grid[:, :1, 0].expand(3, 3), grid[:, :, 0])
    assert torch.all(grid[:, 1:, 1] > grid[:, :-1, 1]) and torch.allclose(grid[:1, :, 1].expand(3, 3), grid[:, :, 1])
    torch.testing.assert_close(grid[:, :, 2], torch.full((3, 3), 3.0))


def test_timm_state_dict_round_trips(tmp_path):
    torch.manual_seed(0)
    source = vit.build_model("vit", 5, size="Ti/16", img_size=IMG)
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "ddp.pt")
    x = video().float()
    for name in ("timm.pth", "ddp.pt"):
        torch.manual_seed(1)
        target = vit.load_pretrained(empty_shift_model("pKV", {"patches": 0}), tmp_path / name)
        with torch.no_grad():
            assert torch.equal(target(x), source(x))
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_state_dict_that_does_not_fit_names_its_keys():
    model = vit.build_model("vit", 5, size="Ti/16", img_size=IMG)
    state = dict(model.state_dict())
    del state["blocks.3.norm1.bias"]
    state["blocks.12.attn.qkv.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(7, 192)
    with pytest.raises(vit.CheckpointError) as error:
        vit.load_state(model, state, "ck.pt")
    message = str(error.value)
    assert message.startswith("ck.pt:") and "1 missing (blocks.3.norm1.bias)" in message
    assert "1 unexpected (blocks.12.attn.qkv.weight)" in message and "head.weight (7, 192) vs model (5, 192)" in message


def test_timm_checkpoint_loads_with_plain_load_state_dict():
    source = vit.build_model("vit", 5, size="Ti/16", img_size=IMG)
    vit.build_model("KV", 5, size="Ti/16", img_size=IMG).load_state_dict(source.state_dict())


def test_bad_checkpoints_name_the_file_and_the_problem(tmp_path):
    model = vit.build_model("vit", 5, size="Ti/16", img_size=IMG)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        vit.load_pretrained(model, tmp_path / "missing.npz")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(vit.CheckpointError, match="junk.pth"):
        vit.load_pretrained(model, tmp_path / "junk.pth")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(vit.CheckpointError, match="other.npz.*not a Google ViT"):
        vit.load_pretrained(model, tmp_path / "other.npz")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(vit.CheckpointError, match="resnet.pth.*missing.*cls_token"):
        vit.load_pretrained(model, tmp_path / "resnet.pth")
    torch.save(vit.build_model("vit", 5, size="S/16", img_size=IMG).state_dict(), tmp_path / "small.pth")
    with pytest.raises(vit.CheckpointError, match="small.pth.*other shapes.*cls_token"):
        vit.load_pretrained(model, tmp_path / "small.pth")
    (tmp_path / "notes.pt").write_text("these are my notes, not weights\n")
    with pytest.raises(vit.CheckpointError) as error:
        vit.load_pretrained(model, tmp_path / "notes.pt")
    assert "notes.pt" in str(error.value) and "weights_only" not in str(error.value)
    assert len(str(error.value).splitlines()) == 1
    google_checkpoint(tmp_path / "shallow.npz", depth=2)
    with pytest.raises(vit.CheckpointError, match="shallow.npz.*missing.*blocks.2"):
        vit.load_pretrained(model, tmp_path / "shallow.npz")


@pytest.mark.parametrize("variant", ["vit", "tokenshift"])
def test_the_authors_checkpoints_give_the_logits_they_were_saved_with(tmp_path, variant):
    """A .pth.tar as TokShift-Transformer saves it (tests/released.py re-states their model): the
    same logits through load_pretrained, head kept; TokenShift in the released layout only."""
    tokshift = variant == "tokenshift"
    theirs = released.VideoNet(192, 3, 12, IMG, classes=5, frames=4, tokshift=tokshift)
    path = released.save_their_checkpoint(theirs, tmp_path / "best_k400.pth.tar")
    clip = video(frames=4).float()
    messages = []
    model = vit.build_model(variant, 5, 4, size="Ti/16", img_size=IMG, shift_layout="released")
    vit.load_pretrained(model, path, log=messages.append)
    with torch.no_grad():
        expected = theirs(clip)
        torch.testing.assert_close(model(clip), expected, rtol=0, atol=1e-5)
        assert messages == [] and expected.std() > 0.1
        if tokshift:  # the authors' channels, not the text's: another model
            paper = vit.build_model(variant, 5, 4, size="Ti/16", img_size=IMG)
            vit.load_pretrained(paper, path)
            assert (paper(clip) - expected).abs().max() > 1e-3
