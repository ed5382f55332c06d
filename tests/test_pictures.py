"""evaluate.py --attention and --plot: the class-token attention against a loop from eq. 12-21,
the frames each key comes from against the shift rules of naive.py, the npz's centre view against
a decode of every frame, and the PNGs as images."""
import math
import os

import cv2
import numpy as np
import pytest
import torch

import evaluate
import naive
import pictures
import vit
from conftest import write_video
from test_vit import reference_blocks

TINY = dict(size="Ti/16", img_size=32, heads=2, patches=4)  # 2 x 2 patches + CLS: 5 keys per head


def refused(capsys, *args):
    """evaluate.py's one-line error (exit status 2) for these flags."""
    with pytest.raises(SystemExit) as exit_status:
        evaluate.main(list(args))
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    return error


def random_model(variant, frames=3, layout="paper"):
    """A tiny model whose attention is far from uniform: q and k weights 20x timm's init."""
    torch.manual_seed(0)
    model_args = dict(variant=variant, num_classes=2, num_frames=frames, shift_layout=layout,
                      **TINY)
    model = vit.build_model(**model_args).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:2 * block.attn.qkv.in_features] *= 20
    return model, model_args


def reference_attention(state, video, variant, layout, block):
    """Softmax of the CLS query of each frame t and head i over its N+1 keys (eq. 13-14, scale
    sqrt(D/h)) after the shift of eq. 17-21, looped in float64; and the frame of every key, -1 for
    zeros."""
    blocks = reference_blocks(variant, TINY["size"], TINY["heads"], TINY["patches"],
                              shift_layout=layout)
    num_heads = vit.SIZES[TINY["size"]][1]
    z = naive.encode(state, video, num_heads, blocks[:block])
    s, p, kind = {k: v.double() for k, v in state.items()}, f"blocks.{block}.", blocks[block]
    x = naive.layer_norm(z, s[p + "norm1.weight"], s[p + "norm1.bias"])
    batch, frames, tokens, dim = x.shape
    d = dim // num_heads
    q_all = x @ s[p + "attn.qkv.weight"][:dim].T + s[p + "attn.qkv.bias"][:dim]  # eq. 12
    k_all = x @ s[p + "attn.qkv.weight"][dim:2 * dim].T + s[p + "attn.qkv.bias"][dim:2 * dim]
    weights = torch.zeros(batch, frames, num_heads, tokens, dtype=torch.double)
    zeros = torch.zeros(d, dtype=torch.double)
    back, fwd = kind.get("n_back", 0), kind.get("n_fwd", 0)
    key_frame = np.zeros((frames, num_heads, tokens), np.int64)
    for b in range(batch):
        for t in range(frames):
            for i in range(num_heads):
                def source(name, n):  # the frame token n of head i holds; None: zeros
                    if name not in kind.get("shifted", ""):
                        return t
                    if kind["axis"] == "head":
                        return naive.source_frame(t, i, back, fwd, frames, layout, num_heads)
                    return naive.source_frame(t, n, back, fwd, frames)

                cols = slice(i * d, (i + 1) * d)
                q_src = source("q", 0)
                query = zeros if q_src is None else q_all[b, q_src, 0, cols]
                logits = []
                for n in range(tokens):
                    src = source("k", n)
                    key = zeros if src is None else k_all[b, src, n, cols]
                    logits.append(query @ key / math.sqrt(d))
                    key_frame[t, i, n] = -1 if src is None else src
                exps = [math.exp(v) for v in logits]
                weights[b, t, i] = torch.tensor([e / sum(exps) for e in exps],
                                                dtype=torch.double)
    return weights, key_frame


CASES = [("KV", "paper"), ("KV", "released"), ("pKV", "paper"), ("pKV", "released"), ("Q", "paper"),
         ("pQ", "paper"), ("vit", "paper")]


@pytest.mark.parametrize("variant,layout", CASES)
def test_class_token_attention_matches_a_loop_from_the_equations(variant, layout, one_thread):
    model, _ = random_model(variant, layout=layout)
    model = model.double()
    torch.manual_seed(1)
    video = torch.rand(2, 3, 3, 32, 32, dtype=torch.double) * 2 - 1
    for block in (len(model.blocks) - 1, 2):
        weights, key_frame = vit.class_token_attention(model, video, block)
        want_weights, want_frames = reference_attention(model.state_dict(), video, variant,
                                                        layout, block)
        torch.testing.assert_close(weights, want_weights, rtol=1e-9, atol=1e-12)
        assert key_frame.tolist() == want_frames.tolist()
    assert weights.max() > 0.9  # peaked: a wrong key would show


def test_key_frames_written_out_by_hand_for_three_frames():
    """Ti/16: 3 heads, 5 tokens. paper: head 0 from t-1, head 1 from t+1 (eq. 17); released: head
    2 from t-1, head 0 from t+1; pKV (N_b = N_f = 2): tokens 0, 1 (CLS is 0) from t-1, tokens 2, 3
    from t+1."""
    paper = [[[-1] * 5, [1] * 5, [0] * 5], [[0] * 5, [2] * 5, [1] * 5],
             [[1] * 5, [-1] * 5, [2] * 5]]
    released = [[heads[1], heads[2], heads[0]] for heads in paper]
    patches = [[[-1, -1, 1, 1, 0]] * 3, [[0, 0, 2, 2, 1]] * 3, [[1, 1, -1, -1, 2]] * 3]
    video = torch.zeros(1, 3, 3, 32, 32)
    for variant, layout, want in (("KV", "paper", paper), ("K", "released", released),
                                  ("pKV", "released", patches), ("pK", "paper", patches)):
        model, _ = random_model(variant, layout=layout)
        assert vit.class_token_attention(model, video, 11)[1].tolist() == want, (variant, layout)
    for variant in ("vit", "tokenshift", "V", "QV", "pQ", "pV"):  # no key moves
        model, _ = random_model(variant)
        own_frame = [[[t] * 5] * 3 for t in range(3)]
        assert vit.class_token_attention(model, video, 11)[1].tolist() == own_frame, variant


def centre_view(path, frames, stride, size):
    """Every frame decoded, the centre clip of `frames` frames `stride` apart as today's mmaction2
    places one test clip (at half of F - ((T - 1) * stride + 1)), the centre square of the full
    short side, resized to size x size (area averaging)."""
    capture, decoded = cv2.VideoCapture(str(path)), []
    ok, frame = capture.read()
    while ok:
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ok, frame = capture.read()
    start = max(len(decoded) - (stride * (frames - 1) + 1), 0) // 2
    height, width = decoded[0].shape[:2]
    x = round((width - height) / 2)
    return np.stack([cv2.resize(decoded[start + stride * t][:, x:x + height], (size, size),
                                interpolation=cv2.INTER_AREA) for t in range(frames)])


@pytest.mark.parametrize("variant,layout", [("KV", "paper"), ("pKV", "released")])
def test_attention_cli_writes_the_centre_view_its_attention_and_a_picture(tmp_path, capsys,
                                                                         variant, layout):
    model, model_args = random_model(variant, layout=layout)
    torch.save({"model": model.state_dict(), "model_args": model_args, "classes": ["a", "b"],
                "epoch": 1, "args": {"stride": 2, "data": None}}, tmp_path / "ck.pt")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (12, 5, 9, 3)).astype(np.uint8)  # 8 x 8 pixel squares
    write_video(tmp_path / "clip.mp4", blocks.repeat(8, axis=1).repeat(8, axis=2))  # 40 x 72
    out = tmp_path / "maps" / "att.png"
    evaluate.main(["--checkpoint", str(tmp_path / "ck.pt"), "--video", str(tmp_path / "clip.mp4"),
                   "--attention", str(out), "--device", "cpu"])
    saved = np.load(tmp_path / "maps" / "att.npz")
    assert saved["frames"].dtype == np.uint8 and saved["frames"].shape == (3, 32, 32, 3)
    assert np.array_equal(saved["frames"], centre_view(tmp_path / "clip.mp4", 3, 2, 32))
    video = torch.from_numpy(saved["frames"]).permute(3, 0, 1, 2)[None].double() / 255 * 2 - 1
    want_weights, want_frames = reference_attention(model.state_dict(), video, variant, layout, 11)
    assert saved["attention"].shape == (3, 3, 5) and saved["key_frame"].shape == (3, 3, 5)
    # float32 through 12 blocks of sharp attention against float64: a wrong key would be off by ~0.1
    np.testing.assert_allclose(saved["attention"], want_weights[0].numpy(), rtol=0, atol=1e-3)
    assert saved["key_frame"].tolist() == want_frames.tolist()
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] == 3 * (128 + 4)  # a column per frame
    assert picture.shape[0] > 4 * 128  # the frames and 3 heads
    os.remove(out)
    assert "--block 12" in refused(capsys, "--checkpoint", str(tmp_path / "ck.pt"),
                                   "--video", str(tmp_path / "clip.mp4"), "--attention", str(out),
                                   "--block", "12")
    assert not out.exists()  # blocks 0..11


LOG_HEADER = "epoch,step,lr,train_loss,train_top1,val_top1,val_top5,clips_per_s,skipped,seconds\n"


def test_plot_draws_both_runs_in_their_colours(tmp_path, capsys):
    runs = {"a": ["1,10,0.1,0.9,40.0,50.00,100,1,0,1", "2,20,0.1,0.5,70.0,,,1,0,1",  # no val
                  "3,30,0.1,0.2,95.0,90.00,100,1,0,1"],
            "b": ["1,10,0.1,0.8,45.0,55.00,100,1,0,1", "2,20,0.1,0.7,50.0,60.00,100,1,0,1"]}
    for name, rows in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.csv").write_text(LOG_HEADER + "\n".join(rows) + "\n")
    logs = [str(tmp_path / name / "log.csv") for name in "ab"]
    evaluate.main(["--plot", *logs, "--png", str(tmp_path / "curves.png")])
    picture = cv2.imread(str(tmp_path / "curves.png"))
    assert picture is not None and picture.shape[1] == 3 * 420 and 300 < picture.shape[0] < 500
    for colour in pictures.COLOURS[:2]:  # each run's line
        assert (picture == colour).all(-1).sum() > 300
    (tmp_path / "bad.csv").write_text("not,a\nlog,file\n")
    assert "--plot needs --png" in refused(capsys, "--plot", logs[0])
    assert "bad.csv" in refused(capsys, "--plot", str(tmp_path / "bad.csv"),
                                "--png", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def panel_pixels(picture, colour):
    """Pixels of exactly `colour` in each of the three panels (the legend below left out)."""
    panels = picture[:330]  # a title band and 300 rows of plot; the legend starts below
    return [int((panels[:, i * 420:(i + 1) * 420] == colour).all(-1).sum()) for i in range(3)]


@pytest.mark.parametrize("loss", ["nan", "inf", "-inf", "1e30", "-1e30", "1e39"])
def test_plot_draws_the_finite_values_of_a_log_with_nan_inf_or_huge_losses(tmp_path, loss):
    """A real log.csv whose epoch-2 loss is `loss`; 1e39 is beyond float32, where a float32
    loss is inf. The picture shows every run's finite values."""
    rows = ["1,10,0.1,0.9,40.0,50.00,100,1,0,1", f"2,20,0.1,{loss},70.0,60.00,100,1,0,1",
            "3,30,0.1,0.2,95.0,90.00,100,1,0,1"]
    (tmp_path / "log.csv").write_text(LOG_HEADER + "\n".join(rows) + "\n")
    evaluate.main(["--plot", str(tmp_path / "log.csv"), "--png", str(tmp_path / "curves.png")])
    picture = cv2.imread(str(tmp_path / "curves.png"))
    assert picture is not None and picture.shape[1] == 3 * 420
    assert min(panel_pixels(picture, pictures.COLOURS[0])) > 300  # a line in every panel


def test_plot_of_one_epoch_marks_the_lone_point_and_refuses_a_log_of_nan_only(tmp_path, capsys):
    (tmp_path / "one.csv").write_text(LOG_HEADER + "1,10,0.1,0.9,40.0,50.00,100,1,0,1\n")
    evaluate.main(["--plot", str(tmp_path / "one.csv"), "--png", str(tmp_path / "one.png")])
    picture = cv2.imread(str(tmp_path / "one.png"))
    assert min(panel_pixels(picture, pictures.COLOURS[0])) > 20
    (tmp_path / "nan.csv").write_text(LOG_HEADER + "1,10,0.1,nan,nan,nan,,1,0,1\n")
    error = refused(capsys, "--plot", str(tmp_path / "nan.csv"), "--png", str(tmp_path / "x.png"))
    assert "nan.csv" in error and "finite" in error and not (tmp_path / "x.png").exists()
