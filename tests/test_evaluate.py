"""Tests for evaluate.py: multi-view scoring, top-k, the 30-view layout, the reports."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import data
import evaluate
import released
import vit
from conftest import write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive_softmax(logits):
    exps = [math.exp(x) for x in logits]
    return [e / sum(exps) for e in exps]


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


# -----------------------------------------------------------------------------
# scoring

class Identity(nn.Module):
    """A 'model' whose logits are its input: view (3,) -> logits (3,)."""

    def forward(self, views):
        return views


def test_video_scores_are_softmax_then_mean_over_views():
    logits = [[[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]],
              [[1.0, 1.0, 1.0], [-2.0, 0.5, 4.0]]]
    got = vit.video_scores(Identity(), torch.tensor(logits))
    for video, views in enumerate(logits):
        probs = [naive_softmax(view) for view in views]
        want = [sum(p[c] for p in probs) / len(probs) for c in range(3)]
        assert got[video].tolist() == pytest.approx(want, abs=1e-6)
    # averaging softmax scores is not softmax of averaged logits: video 0 would pick class 0 by mean logits
    assert got[0].argmax() == 1
    mean_logits = vit.video_scores(Identity(), torch.tensor(logits), average="logits")  # the released code's way
    assert mean_logits[0].tolist() == pytest.approx([1.0, 1.5, -0.5]) and mean_logits[0].argmax() == 1


def test_topk_against_hand_made_ranking():
    scores = torch.tensor([
        [0.10, 0.50, 0.20, 0.05, 0.05, 0.04, 0.06],  # label 1 ranks 1st
        [0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03],  # label 4 ranks 5th
        [0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03],  # label 5 ranks 6th
        [0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.55],  # label 0 ranks 7th
    ])
    labels = torch.tensor([1, 4, 5, 0])
    assert vit.topk_hits(scores, labels, 1).tolist() == [True, False, False, False]
    assert vit.topk_hits(scores, labels, 5).tolist() == [True, True, False, False]
    assert vit.topk_hits(scores, labels, 6).tolist() == [True, True, True, False]
    # with fewer classes than k every label is within the top k
    assert vit.topk_hits(scores[:, :3], torch.tensor([0, 1, 2, 2]), 5).all()


def test_per_class_accuracy_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 0, 1, 1])  # class a: 2 of 3 right, class b: 2 of 2 right, class c: no videos
    lines = evaluate.per_class_csv(scores, labels, ["a", "b", "c"]).splitlines()
    assert lines == ["class,videos,top1,top5", "a,3,66.67,100.00", "b,2,100.00,100.00", "c,0,nan,nan"]


class ConstantViews(torch.utils.data.Dataset):
    """KineticsDataset's test items: video i has views filled with the constants values[i]; None: broken."""

    def __init__(self, values, labels):
        self.values, self.labels = values, labels

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        if self.values[i] is None:
            return None
        return torch.tensor(self.values[i]).view(-1, 1, 1, 1, 1).expand(-1, 3, 2, 4, 4).clone(), self.labels[i]


class LogitsFromPixel(nn.Module):
    """A view filled with c gets logits (c, -c, c*c)."""

    def forward(self, video):
        c = video[:, 0, 0, 0, 0]
        return torch.stack([c, -c, c * c], dim=1)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_views_are_averaged_within_each_video_and_broken_videos_are_skipped(batch_size):
    values = [[2.0, -1.0, 0.5], None, [0.0, 0.0, -3.0], [1.5, 1.0, -0.5], [-0.2, 2.2, 0.1]]
    labels = [0, 1, 1, 2, 2]
    dataset = ConstantViews(values, labels)
    scores, got_labels, skipped = evaluate.predict_videos(
        LogitsFromPixel(), dataset, device=torch.device("cpu"), batch_size=batch_size)
    assert skipped == 1
    assert got_labels.tolist() == [0, 1, 2, 2]
    readable = [v for v in values if v is not None]
    for got, views in zip(scores, readable):
        probs = [naive_softmax([c, -c, c * c]) for c in views]
        want = [sum(p[k] for p in probs) / len(probs) for k in range(3)]
        assert got.tolist() == pytest.approx(want, abs=1e-6)


# -----------------------------------------------------------------------------
# the 30-view layout, on a real video through data.KineticsDataset

CROP_RED = (40, 128, 216)  # left, centre, right thirds of the frame


def frame_index_video(num_frames, size):
    """A 3*size wide video; green encodes the frame index, red which third of the width a pixel is in."""
    frames = []
    for t in range(num_frames):
        frame = np.zeros((size, 3 * size, 3), np.uint8)
        for third, red in enumerate(CROP_RED):
            frame[:, third * size:(third + 1) * size, 0] = red
        frame[..., 1] = 8 + 10 * t
        frame[..., 2] = 128
        frames.append(frame)
    return frames


def test_thirty_views_are_ten_temporal_by_three_spatial_positions(tmp_path):
    size, num_frames = 32, 24
    (tmp_path / "val" / "a").mkdir(parents=True)
    write_video(tmp_path / "val" / "a" / "clip.mp4", frame_index_video(num_frames, size))
    dataset = data.KineticsDataset(str(tmp_path), "val", num_frames=2, stride=2, img_size=size, clips=10, crops=3)
    views, label = dataset[0]
    assert views.shape == (30, 3, 2, size, size) and label == 0
    pixels = (views + 1) * 127.5
    # the middle of each view, away from the colour edges that compression blurs
    centre = pixels[:, :, :, size // 4:-size // 4, size // 4:-size // 4].mean(dim=(-1, -2))  # (30, 3, T)
    crop = [int(np.argmin([abs(float(centre[i, 0, 0]) - r) for r in CROP_RED])) for i in range(30)]
    start = [round((float(centre[i, 1, 0]) - 8) / 10) for i in range(30)]
    assert all(0 <= s < num_frames for s in start)
    pairs = set(zip(start, crop))
    assert len(pairs) == 30, "every view must be a distinct (temporal, spatial) position"
    assert sorted(set(crop)) == [0, 1, 2] and len(set(start)) == 10
    assert all(crop.count(c) == 10 for c in range(3)) and all(start.count(s) == 3 for s in set(start))
    # each clip's second frame is `stride` frames after its first
    second = [round((float(centre[i, 1, 1]) - 8) / 10) for i in range(30)]
    assert [b - a for a, b in zip(start, second)] == [2] * 30


# -----------------------------------------------------------------------------
# the test run from a checkpoint: reports and errors

TINY = dict(size="Ti/16", img_size=32, heads=2, patches=2)  # 2 x 2 patches per frame: fast on a CPU


def save_checkpoint(path, classes, variant="KV", frames=2, stride=2):
    """A checkpoint as train.py writes it: evaluate.py needs `model`, `model_args`, `classes` and the stride."""
    torch.manual_seed(0)
    model_args = dict(variant=variant, num_classes=len(classes), num_frames=frames, **TINY)
    model = vit.build_model(**model_args)
    torch.save({"model": model.state_dict(), "model_args": model_args, "classes": classes, "epoch": 1,
                "args": {"stride": stride, "data": None}}, path)
    return model


def make_split(root, classes, per_class, broken=0):
    """root/val/<class>/*.mp4 of coloured frames, plus `broken` undecodable files in the first class."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / "val" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(0, 200, size=3)
            frames = [np.full((40, 48, 3), base + 5 * t, np.uint8) for t in range(12)]
            write_video(folder / f"{i}.mp4", frames)
    for i in range(broken):
        (root / "val" / classes[0] / f"broken{i}.mp4").write_bytes(b"not a video" * 100)


def test_test_run_reports_match_a_naive_per_view_loop(tmp_path):
    classes = ["a", "b", "c"]
    make_split(tmp_path / "set", classes, per_class=2, broken=1)
    model = save_checkpoint(tmp_path / "ck.pt", classes)
    report = evaluate.main(["--checkpoint", str(tmp_path / "ck.pt"), "--data", str(tmp_path / "set"),
                            "--clips", "2", "--crops", "3", "--workers", "0", "--device", "cpu",
                            "--json", str(tmp_path / "out" / "eval.json"), "--per-class", str(tmp_path / "pc.csv")])
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    for key in ("top1", "top5", "views", "videos", "skipped", "variant", "checkpoint"):
        assert key in saved
    assert saved == json.loads(json.dumps(report))
    assert (saved["views"], saved["videos"], saved["skipped"], saved["variant"]) == (6, 6, 1, "KV")
    assert saved["top5"] is None  # 3 classes: always within the top 5, so not reported

    # reference: every readable video on its own, every view on its own, plain Python averaging
    dataset = data.KineticsDataset(str(tmp_path / "set"), "val", train=False, num_frames=2, stride=2,
                                   img_size=32, clips=2, crops=3)
    model.eval()
    right, per_class = 0, {c: [0, 0] for c in range(3)}
    for i in range(len(dataset)):
        if "broken" in dataset.videos[i]:
            continue
        views, label = dataset[i]
        with torch.no_grad():
            probs = [naive_softmax(model(view[None])[0].tolist()) for view in views]
        mean = [sum(p[k] for p in probs) / len(probs) for k in range(3)]
        hit = int(max(range(3), key=lambda k: mean[k]) == label)
        right += hit
        per_class[label][0] += 1
        per_class[label][1] += hit
    assert saved["top1"] == pytest.approx(100 * right / 6)
    table = evaluate.results_table([str(tmp_path / "out" / "eval.json")]).splitlines()
    assert table[2].startswith(f"| KV | original | {saved['top1']:.1f} | - | 6 | 6 | 1 |")
    lines = (tmp_path / "pc.csv").read_text().splitlines()
    assert lines[0] == "class,videos,top1,top5"
    for c, line in enumerate(lines[1:]):
        name, videos, top1, _ = line.split(",")
        assert (name, int(videos)) == (classes[c], per_class[c][0])
        assert float(top1) == pytest.approx(100 * per_class[c][1] / per_class[c][0], abs=0.01)


def test_the_authors_checkpoint_gives_the_top1_of_its_weights_in_train_py_form(tmp_path, capsys):
    """A file that does not describe its model (the authors' format, tests/released.py), described
    by the flags, classes from their integer labels: the report of its weights saved by train.py."""
    make_split(tmp_path / "set", ["a", "b", "c"], per_class=1)
    listing = tmp_path / "val.txt"
    listing.write_text("a/0 0\nb/0 1\nc/0 2\n")
    net = released.VideoNet(192, 3, 12, 32, classes=3, frames=2, tokshift=True)
    theirs = released.save_their_checkpoint(net, tmp_path / "tokshift_k400.pth.tar")
    model_args = dict(variant="tokenshift", num_classes=3, num_frames=2, size="Ti/16", img_size=32,
                      heads=2, patches=16, shift_div=4, msca_blocks=None, shift_layout="released")
    model = vit.load_pretrained(vit.build_model(**model_args), theirs)
    torch.save({"model": model.state_dict(), "model_args": model_args, "classes": ["0", "1", "2"],
                "args": {"stride": 2, "data": None}}, tmp_path / "ck.pt")
    common = ["--data", str(tmp_path / "set"), "--annotations", str(listing), "--clips", "2",
              "--crops", "1", "--workers", "0", "--device", "cpu"]
    flags = ["--variant", "tokenshift", "--shift-layout", "released", "--size", "Ti/16",
             "--img-size", "32", "--frames", "2", "--stride", "2"]
    reports = [evaluate.main(["--checkpoint", str(path), *extra, *common,
                              "--per-class", str(path) + ".csv"])
               for path, extra in ((tmp_path / "ck.pt", []), (theirs, flags))]
    assert reports[0]["top1"] == reports[1]["top1"] and reports[1]["videos"] == 3
    assert open(str(theirs) + ".csv").read() == open(tmp_path / "ck.pt.csv").read()
    capsys.readouterr()
    for argv, named in (([str(theirs), *flags], "--annotations"),
                        ([str(tmp_path / "ck.pt"), "--frames", "4", *common], "--frames 4")):
        with pytest.raises(SystemExit) as exit_status:
            evaluate.main(["--checkpoint", *argv])
        stderr = capsys.readouterr().err
        assert exit_status.value.code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert named in stderr


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    save_checkpoint(tmp_path / "ck.pt", ["a", "b"])
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
        (["--checkpoint", str(tmp_path / "garbage.pt")], "garbage.pt"),
        (["--checkpoint", str(tmp_path / "ck.pt"), "--data", str(tmp_path / "nowhere")], "nowhere"),
        (["--checkpoint", str(tmp_path / "ck.pt"), "--clips", "0"], "--clips"),
        ([], "--checkpoint"),
    ]
    for argv, named in cases:
        result = run_cli(*argv)
        assert result.returncode != 0, argv
        assert "Traceback" not in result.stderr, argv
        assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr, (argv, result.stderr)


SYNTHETIC_VARIANTS = ("vit", "tokenshift", "KV", "pKV")


def kept_reports(order):
    """results/ as the README's --table commands list them: variant by variant, seeds 0, 1, 2."""
    suffix = "" if order == "original" else f"-{order}"
    return [os.path.join(REPO, "results", f"synthetic-{v}-s{seed}{suffix}.json")
            for v in SYNTHETIC_VARIANTS for seed in range(3)]


def readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("order", ["original", "reversed"])
def test_the_readme_results_tables_are_what_table_makes_of_the_kept_reports(order):
    """README's synthetic results come from results/*.json by the commands the README gives."""
    reports = kept_reports(order)
    assert all(os.path.isfile(path) for path in reports)
    assert evaluate.results_table(reports) in readme()


def test_the_readme_ranges_over_seeds_are_those_of_the_kept_reports():
    """The README's summary: per variant, the lowest and highest 30-view top-1 over the seeds."""
    rows = []
    for v in SYNTHETIC_VARIANTS:
        ranges = []
        for order in ("original", "reversed"):
            top1 = []
            for path in kept_reports(order):
                with open(path) as f:
                    report = json.load(f)
                if report["variant"] == v:
                    assert report["frame_order"] == order
                    top1.append(report["top1"])
            ranges.append(f"{min(top1):.1f}-{max(top1):.1f}")
        rows.append(f"| {v} | 0, 1, 2 | {ranges[0]} | {ranges[1]} |")
    assert "\n".join(rows) in readme()


def test_one_video_prints_its_top_classes_as_a_naive_30_view_loop_does(tmp_path):
    classes = ["a", "b", "c", "d", "e", "f", "g"]
    model = save_checkpoint(tmp_path / "ck.pt", classes)
    frames = [np.full((40, 72, 3), 20 * t, np.uint8) for t in range(12)]
    write_video(tmp_path / "clip.mp4", frames)
    result = run_cli("--checkpoint", str(tmp_path / "ck.pt"), "--video", str(tmp_path / "clip.mp4"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    printed = [line.split() for line in result.stdout.strip().splitlines()]
    views = data.test_views(tmp_path / "clip.mp4", num_frames=2, stride=2, img_size=32)  # 10 clips x 3 crops
    assert views.shape[0] == 30
    model.eval()
    with torch.no_grad():
        probs = [naive_softmax(model(view[None])[0].tolist()) for view in views]
    mean = [sum(p[k] for p in probs) / 30 for k in range(7)]
    top5 = sorted(range(7), key=lambda k: -mean[k])[:5]
    assert [name for _, name in printed] == [classes[k] for k in top5]
    assert [float(p) for p, _ in printed] == pytest.approx([mean[k] for k in top5], abs=1e-4)
    for bad in ("missing.mp4", "clip.txt"):
        (tmp_path / "clip.txt").write_text("not a video")
        result = run_cli("--checkpoint", str(tmp_path / "ck.pt"), "--video", str(tmp_path / bad))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and bad in result.stderr


# -----------------------------------------------------------------------------
# flags that would lose a file or be ignored

def refused(capsys, *argv):
    """evaluate.py's one-line error (exit status 2) for these flags."""
    with pytest.raises(SystemExit) as exit_status:
        evaluate.main([str(arg) for arg in argv])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def snapshot(folder):
    """{path: bytes} of every file under `folder`, and every folder as None."""
    found = {}
    for root, folders, files in os.walk(folder):
        found.update({os.path.join(root, name): None for name in folders})
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.join(root, name)] = f.read()
    return found


def test_an_output_that_is_an_input_or_another_output_is_refused_with_nothing_written(tmp_path,
                                                                                       capsys):
    save_checkpoint(tmp_path / "ck.pt", ["a", "b", "c"])
    make_split(tmp_path / "set", ["a", "b", "c"], per_class=1)
    clip = tmp_path / "set" / "val" / "a" / "0.mp4"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.csv").write_text("epoch,train_loss,train_top1,val_top1\n1,1,2,3\n")
    os.symlink(tmp_path / "ck.pt", tmp_path / "link.json")
    os.link(tmp_path / "ck.pt", tmp_path / "hard.json")
    checkpoint, test = ["--checkpoint", tmp_path / "ck.pt"], ["--video", clip, "--device", "cpu"]
    cases = [
        ([*checkpoint, *test, "--json", f"{tmp_path}/run/../ck.pt"], "--checkpoint"),
        ([*checkpoint, *test, "--json", tmp_path / "link.json"], "--checkpoint"),
        ([*checkpoint, *test, "--json", tmp_path / "hard.json"], "--checkpoint"),
        ([*checkpoint, *test, "--json", clip], "--video"),
        (["--plot", tmp_path / "run" / "log.csv", "--png", tmp_path / "run" / "log.csv"], "--plot"),
        ([*checkpoint, "--data", tmp_path / "set", "--workers", "0", "--device", "cpu",
          "--json", tmp_path / "new" / "r.json", "--per-class", tmp_path / "new" / "r.json"],
         "--json"),
        ([*checkpoint, *test, "--attention", tmp_path / "new" / "x.npz"], "--attention"),
    ]
    before = snapshot(tmp_path)
    for argv, other in cases:
        error = refused(capsys, *argv)
        assert "the same file as" in error and other in error, (argv, error)
        assert snapshot(tmp_path) == before, argv  # nor a folder made for an output


def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys):
    save_checkpoint(tmp_path / "ck.pt", ["a", "b", "c"])
    make_split(tmp_path / "set", ["a"], per_class=1)
    clip = tmp_path / "set" / "val" / "a" / "0.mp4"
    common = ["--checkpoint", tmp_path / "ck.pt", "--video", clip, "--device", "cpu"]
    before = snapshot(tmp_path)
    for block in ("0", "3"):
        assert "--block needs --attention" in refused(capsys, *common, "--block", block)
    error = refused(capsys, *common, "--attention", tmp_path / "a.png",
                    "--json", tmp_path / "a.json")
    assert "--json" in error and "--attention" in error
    assert snapshot(tmp_path) == before
    assert "no such file" in refused(capsys, "--table", tmp_path / "missing.json")


def test_the_authors_checkpoint_takes_its_classes_from_class_folders(tmp_path, capsys):
    """A file without classes on a folder layout (root/val/<class>/...): the classes are the
    folders', as train.py's checkpoint of the same weights with those classes has them."""
    classes = ["a", "b", "c"]
    make_split(tmp_path / "set", classes, per_class=1)
    net = released.VideoNet(192, 3, 12, 32, classes=3, frames=2, tokshift=True)
    theirs = released.save_their_checkpoint(net, tmp_path / "tokshift.pth.tar")
    model_args = dict(variant="tokenshift", num_classes=3, num_frames=2, size="Ti/16", img_size=32,
                      heads=2, patches=16, shift_div=4, msca_blocks=None, shift_layout="released")
    model = vit.load_pretrained(vit.build_model(**model_args), theirs)
    torch.save({"model": model.state_dict(), "model_args": model_args, "classes": classes,
                "args": {"stride": 2, "data": None}}, tmp_path / "ck.pt")
    common = ["--data", str(tmp_path / "set"), "--clips", "2", "--crops", "1", "--workers", "0",
              "--device", "cpu"]
    flags = ["--variant", "tokenshift", "--shift-layout", "released", "--size", "Ti/16",
             "--img-size", "32", "--frames", "2", "--stride", "2"]
    for path, extra in ((tmp_path / "ck.pt", []), (theirs, flags)):
        evaluate.main(["--checkpoint", str(path), *extra, *common, "--per-class", f"{path}.csv"])
    assert (tmp_path / "ck.pt.csv").read_text() == open(f"{theirs}.csv").read()
    assert (tmp_path / "ck.pt.csv").read_text().splitlines()[1].startswith("a,1,")
    os.rename(tmp_path / "set" / "val", tmp_path / "set" / "videos")  # no folder names classes
    capsys.readouterr()
    error = refused(capsys, "--checkpoint", theirs, *flags, *common)
    assert "--annotations" in error and "tokshift.pth.tar" in error
