"""evaluate.py --frame-order: the views' frames fed as sampled, reversed, or shuffled by one
permutation per video, against views reordered here by torch.flip and numpy's generator; a
frame-wise ViT that cannot tell; a KV model built to tell up from down, whose answers swap."""
import json

import numpy as np
import pytest
import torch

import data
import evaluate
import prepare
import vit
from conftest import write_video

TINY = dict(size="Ti/16", img_size=32, heads=2, patches=2)
FRAMES, STRIDE = 4, 2


@pytest.fixture(autouse=True)
def single_thread(one_thread):
    """The 2 CI cores are shared; these models are tiny."""


def random_model(variant):
    torch.manual_seed(0)
    model_args = dict(variant=variant, num_classes=3, num_frames=FRAMES, **TINY)
    return vit.build_model(**model_args).eval(), model_args


@pytest.fixture(scope="module")
def noise_videos(tmp_path_factory):
    """root/val/<class>/*.mp4 of random frames (every frame unlike the others), and one file that
    does not decode, so that a video's index in the dataset is not its place among the scores."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        blocks = rng.integers(0, 256, (2, 12, 5, 6, 3)).astype(np.uint8)  # 8 x 8 squares
        for i, video in enumerate(blocks):
            write_video(root / "val" / name / f"{i}.mp4", video.repeat(8, 1).repeat(8, 2))
    (root / "val" / "a" / "0.mp4").write_bytes(b"not a video" * 100)
    return root


def views_dataset(root, size=32, clips=2, crops=2):
    return data.KineticsDataset(str(root), "val", train=False, num_frames=FRAMES, stride=STRIDE,
                                img_size=size, clips=clips, crops=crops, report=False)


def naive_scores(model, views):
    """The mean over views of each view's softmax, one view at a time."""
    with torch.no_grad():
        return torch.stack([model(view[None])[0].softmax(-1) for view in views]).mean(0)


def predict(model, root, order, workers=0, seed=0):
    return evaluate.predict_videos(model, views_dataset(root), device=torch.device("cpu"),
                                   workers=workers, frame_order=order, seed=seed, batch_size=2)


def test_a_frame_wise_vit_scores_every_frame_order_alike(noise_videos):
    model, _ = random_model("vit")
    original, labels, skipped = predict(model, noise_videos, "original")
    assert skipped == 1 and len(labels) == 5
    for order in ("reversed", "shuffled"):
        scores, _, _ = predict(model, noise_videos, order)
        torch.testing.assert_close(scores, original, rtol=1e-5, atol=1e-6)  # summation order


def test_a_shifted_model_gets_each_video_flipped_or_shuffled_along_time(noise_videos):
    """Two workers load the videos: the permutation of video i must be that of index i."""
    model, _ = random_model("KV")
    dataset, seed = views_dataset(noise_videos), 7
    readable = [i for i in range(len(dataset)) if dataset[i] is not None]
    assert readable == [1, 2, 3, 4, 5]
    views = [dataset[i][0] for i in readable]  # (views, 3, T, S, S)
    permutations = [np.random.default_rng([seed, i]).permutation(FRAMES) for i in readable]
    assert len({tuple(p) for p in permutations}) > 1  # one permutation per video, not one for all
    want = {"original": views, "reversed": [torch.flip(v, dims=[2]) for v in views],
            "shuffled": [v[:, :, list(p)] for v, p in zip(views, permutations)]}
    got = {order: predict(model, noise_videos, order, workers=2, seed=seed)[0] for order in want}
    for order, reordered in want.items():
        reference = torch.stack([naive_scores(model, v) for v in reordered])
        torch.testing.assert_close(got[order], reference, rtol=1e-5, atol=1e-6)
    for order in ("reversed", "shuffled"):  # the KV model does see the order
        assert (got[order] - got["original"]).abs().max() > 1e-3


def save_checkpoint(path, model, model_args, classes, stride=STRIDE):
    torch.save({"model": model.state_dict(), "model_args": model_args, "classes": classes,
                "epoch": 1, "args": {"stride": stride, "data": None}}, path)


def test_video_json_and_table_record_the_frame_order(noise_videos, tmp_path, capsys):
    model, model_args = random_model("KV")
    save_checkpoint(tmp_path / "ck.pt", model, model_args, ["a", "b", "c"])
    clip = str(noise_videos / "val" / "b" / "1.mp4")
    views = data.test_views(clip, FRAMES, STRIDE, 32)
    reordered = {"reversed": torch.flip(views, dims=[2]),
                 "shuffled": views[:, :, list(np.random.default_rng([3, 0]).permutation(FRAMES))]}
    for order, fed in reordered.items():
        capsys.readouterr()
        report = evaluate.main(["--checkpoint", str(tmp_path / "ck.pt"), "--video", clip,
                                "--frame-order", order, "--seed", "3", "--device", "cpu",
                                "--json", str(tmp_path / f"{order}.json")])
        printed = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
        want = naive_scores(model, fed)
        assert [float(p) for p, _ in printed] == pytest.approx(sorted(want.tolist())[::-1],
                                                               abs=1e-4)
        assert report["frame_order"] == order
    saved = json.loads((tmp_path / "shuffled.json").read_text())
    assert (saved["frame_order"], saved["seed"]) == ("shuffled", 3)
    assert "seed" not in json.loads((tmp_path / "reversed.json").read_text())

    common = ["--checkpoint", str(tmp_path / "ck.pt"), "--data", str(noise_videos), "--clips",
              "1", "--crops", "1", "--workers", "0", "--device", "cpu"]
    for order in ("reversed", "shuffled"):
        evaluate.main([*common, "--frame-order", order, "--json", str(tmp_path / f"{order}.json")])
    old = json.loads((tmp_path / "reversed.json").read_text())
    del old["frame_order"]  # a report from before --frame-order
    (tmp_path / "old.json").write_text(json.dumps(old))
    table = evaluate.results_table([str(tmp_path / f"{name}.json")
                                    for name in ("reversed", "shuffled", "old")]).splitlines()
    assert table[0].startswith("| variant | frame order | top-1 % |")
    assert [row.split(" | ")[1] for row in table[2:]] == ["reversed", "shuffled (seed 0)",
                                                          "original"]


def up_down_kv(frames):
    """A KV model (ViT-Ti, 64 px: 4 x 4 patches) built by hand to say whether a bright object
    moves up or down. Blocks 0-10 add nothing (their output projections are zero); in block 11
    the class token of frame t looks, in head 0 at the keys of frame t-1 and in head 1 at those
    of t+1 (the paper's KV layout), at the brightest patch (key: the patch's mean brightness,
    query: a constant) and reads its row (value). The head takes row(t+1) - row(t-1), zero
    beyond the clip, which summed over the frames is row(T-1) - row(0): > 0, down."""
    model_args = dict(variant="KV", num_classes=2, num_frames=frames, size="Ti/16", img_size=64)
    model = vit.build_model(**model_args)
    state = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    for name in state:
        if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            state[name].fill_(1)
    dim, d = 192, 64  # Ti: 3 heads of 64 channels
    # channels: 0, 1: +-brightness; 2, 3: +-row; 4, 5: +-the motion; 8..: +-1, so that
    # LayerNorm, over channels summing to 0, divides each token by about the same number
    state["patch_embed.proj.weight"][0] = 1 / (3 * 16 * 16)
    state["patch_embed.proj.weight"][1] = -1 / (3 * 16 * 16)
    pos = state["pos_embed"][0]
    pos[:, 8:] = torch.tensor([1.0, -1.0]).repeat((dim - 8) // 2)
    pos[0, 0], pos[0, 1] = -10, 10  # the class token's own key: never looked at
    rows = torch.arange(16) // 4 - 1.5
    pos[1:, 2], pos[1:, 3] = rows, -rows
    qkv = state["blocks.11.attn.qkv.weight"]
    for head in (0, 1):
        qkv[head * d, 8] = 30 * d ** 0.5  # query: 30 / brightness unit after SDPA's scale
        qkv[dim + head * d, 0] = 1  # key: brightness
        qkv[2 * dim + head * d, 2] = 1  # value: row
    proj = state["blocks.11.attn.proj.weight"]
    proj[4, d], proj[4, 0] = 1, -1  # head 1 (t+1) - head 0 (t-1)
    proj[5, d], proj[5, 0] = -1, 1
    state["head.weight"][0, 4], state["head.weight"][1, 4] = 5, -5  # classes: down, up
    model.load_state_dict(state)
    return model, model_args


def test_a_kv_model_that_tells_up_from_down_swaps_its_answers_reversed(tmp_path, capsys):
    """prepare.make_synthetic's videos: up/k is down/k backwards. Reversed, KV calls every up
    video down and every down video up."""
    classes = prepare.make_synthetic(tmp_path / "syn", train_per_class=1, val_per_class=4,
                                     num_frames=8, size=64)
    model, model_args = up_down_kv(FRAMES)
    save_checkpoint(tmp_path / "kv.pt", model, model_args, classes)
    common = ["--checkpoint", str(tmp_path / "kv.pt"), "--data", str(tmp_path / "syn"),
              "--clips", "2", "--crops", "1", "--workers", "0", "--device", "cpu"]
    per_class = {}
    for order in ("original", "reversed"):
        report = evaluate.main([*common, "--frame-order", order,
                                "--per-class", str(tmp_path / f"{order}.csv")])
        assert report["videos"] == 8
        per_class[order] = (tmp_path / f"{order}.csv").read_text().splitlines()[1:]
    assert per_class["original"] == ["down,4,100.00,100.00", "up,4,100.00,100.00"]
    assert per_class["reversed"] == ["down,4,0.00,100.00", "up,4,0.00,100.00"]
    clip = str(tmp_path / "syn" / "val" / "up" / "0002.avi")
    for order, answer in (("original", "up"), ("reversed", "down")):
        capsys.readouterr()
        evaluate.main(["--checkpoint", str(tmp_path / "kv.pt"), "--video", clip, "--clips", "2",
                       "--crops", "1", "--frame-order", order, "--device", "cpu"])
        assert capsys.readouterr().out.split()[1] == answer


def test_attention_draws_the_centre_view_in_the_frame_order(noise_videos, tmp_path):
    """The npz holds the frames as fed: reversed, those of the original run backwards, and the
    attention the model gives that reversed clip."""
    model, model_args = random_model("KV")
    save_checkpoint(tmp_path / "ck.pt", model, model_args, ["a", "b", "c"])
    saved = {}
    for order in ("original", "reversed"):
        evaluate.main(["--checkpoint", str(tmp_path / "ck.pt"), "--device", "cpu",
                       "--video", str(noise_videos / "val" / "c" / "0.mp4"), "--frame-order",
                       order, "--attention", str(tmp_path / f"{order}.png")])
        saved[order] = np.load(tmp_path / f"{order}.npz")
    backwards = saved["original"]["frames"][::-1]
    assert np.array_equal(saved["reversed"]["frames"], backwards)
    video = torch.from_numpy(backwards.copy()).permute(3, 0, 1, 2)[None] / 255.0 * 2 - 1
    weights, _ = vit.class_token_attention(model, video, len(model.blocks) - 1)
    np.testing.assert_allclose(saved["reversed"]["attention"], weights[0].numpy(), atol=1e-5)
    assert not np.allclose(saved["reversed"]["attention"], saved["original"]["attention"][::-1])
