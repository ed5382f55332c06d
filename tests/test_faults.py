"""Fault injection: every case here once gave a wrong answer without a word, a traceback, or a lost/unreadable file.

Runs go through train.main / evaluate.main in-process on tiny videos written here; the broken inputs are built here.
"""
import csv
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import prepare
import train
import vit
from conftest import CLASSES, ramp_frames, tiny_args, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def log_rows(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def one_error_line(capsys, *named):
    """The error: the last line on stderr (after any progress bars), naming what is wrong, and no traceback."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("train.py: ") and all(n in last for n in named), err[-2000:]
    return last


def header_only_video(path):
    """An AVI whose header reads (it says 12 frames) but from which no frame decodes: cut after its header."""
    whole = open(write_video(str(path) + ".whole.avi", ramp_frames(0, np.random.default_rng(0)), "MJPG"), "rb").read()
    os.remove(str(path) + ".whole.avi")
    with open(path, "wb") as f:
        f.write(whole[:whole.find(b"movi") + 4])


def kinetics_flat(root, rng):
    """All videos in one flat folder named as the Kinetics CSVs name them, plus train.csv and validate.csv."""
    rows = {"train": [], "val": []}
    for split, count in (("train", 3), ("val", 1)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                youtube_id = f"{split}{label}{i}x"
                write_video(root / f"{youtube_id}_000010_000020.mp4", ramp_frames(label, rng))
                rows[split].append(f"{name},{youtube_id},10,20,{split},0\n")
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    (root / "train.csv").write_text(header + "".join(rows["train"]))
    (root / "validate.csv").write_text(header + "".join(rows["val"]))
    (root / "both.csv").write_text(header + "".join(rows["train"] + rows["val"]))
    (root / "no_split.csv").write_text("label,youtube_id,time_start,time_end\n" + "".join(
        ",".join(r.split(",")[:4]) + "\n" for r in rows["train"] + rows["val"]))
    return root


# ---------------------------------------------------------------------------------------------------------
# wrong answers without a word


def test_kinetics_csvs_train_and_validate_on_their_own_lists(tmp_path, capsys):
    root = kinetics_flat(tmp_path / "k", np.random.default_rng(0))
    out = tmp_path / "run"
    assert train.main(tiny_args(root, out, "--epochs", "1", "--annotations", str(root / "train.csv"),
                                "--val-annotations", str(root / "validate.csv"))) == 0
    assert "6 train / 2 val videos" in capsys.readouterr().out
    # one CSV with a split column gives the same two sets; the validation videos are never training videos
    assert train.main(tiny_args(root, tmp_path / "both", "--epochs", "1", "--annotations", str(root / "both.csv"))) == 0
    assert "6 train / 2 val videos" in capsys.readouterr().out
    train_set = data.KineticsDataset(root, "train", annotations=root / "both.csv")
    val_set = data.KineticsDataset(root, "val", train=False, annotations=root / "both.csv")
    assert all("train" in os.path.basename(p) for p in train_set.videos)
    assert all("val" in os.path.basename(p) for p in val_set.videos) and len(val_set) == 2


def test_a_validation_set_that_shares_videos_with_training_is_refused(tmp_path, capsys):
    root = kinetics_flat(tmp_path / "k", np.random.default_rng(0))
    assert train.main(tiny_args(root, tmp_path / "run", "--epochs", "1", "--annotations",
                                str(root / "no_split.csv"))) == 2
    one_error_line(capsys, "validation videos are training videos too", "--val-annotations")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_start_line_names_the_sampling_in_use(videos, tmp_path, capsys):
    for sampling, named, unnamed in (("dense", "stride 2", "uniform"), ("uniform", "uniform", "stride")):
        assert train.main(tiny_args(videos, tmp_path / sampling, "--epochs", "1", "--sampling", sampling)) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data: "))
        assert named in line and unnamed not in line, line


def list_dataset(root, val_labels):
    """Videos in one folder, train.txt of labels 0, 1, 2 (two videos each) and val.txt of `val_labels`."""
    rng = np.random.default_rng(0)
    for split, labels, count in (("train", (0, 1, 2), 2), ("val", val_labels, 1)):
        rows = []
        for label in labels:
            for i in range(count):
                write_video(root / "videos" / f"{split}{label}{i}.mp4", ramp_frames(label % 2, rng))
                rows.append(f"{split}{label}{i}.mp4 {label}\n")
        (root / f"{split}.txt").write_text("".join(rows))
    return root


def test_a_validation_list_lacking_a_class_names_it_and_the_remedy(tmp_path, capsys):
    root = list_dataset(tmp_path, val_labels=(0, 1))  # no video of class 2 to validate on
    out = tmp_path / "run"
    argv = tiny_args(root / "videos", out, "--epochs", "1", "--annotations", str(root / "train.txt"),
                     "--val-annotations", str(root / "val.txt"))
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and not (out / "last.pt").exists()
    assert str(root / "val.txt") in err[0] and "lacks 2" in err[0] and "classes.txt" in err[0], err
    (root / "classes.txt").write_text("walk\nrun\njump\n")  # the remedy the line gives
    assert train.main(argv) == 0
    assert load(out / "best.pt")["classes"] == ["walk", "run", "jump"]


def test_a_validation_csv_lacking_a_class_names_it(tmp_path, capsys):
    root = kinetics_flat(tmp_path / "k", np.random.default_rng(0))
    lines = (root / "validate.csv").read_text().splitlines(keepends=True)
    (root / "validate.csv").write_text("".join(line for line in lines if not line.startswith(CLASSES[1])))
    assert train.main(tiny_args(root, tmp_path / "run", "--epochs", "1", "--annotations", str(root / "train.csv"),
                                "--val-annotations", str(root / "validate.csv"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validate.csv" in err[0] and f"lacks {CLASSES[1]}" in err[0], err


def test_pretrained_weights_of_another_size_are_refused_in_one_line_and_nothing_else(videos, tmp_path, capsys):
    small = vit.build_model("KV", 5, 2, size="S/16", img_size=32)  # the run below is a Ti/16
    torch.save(dict(model=small.state_dict(), classes=list("abcde")), tmp_path / "s16.pt")
    capsys.readouterr()
    assert train.main(tiny_args(videos, tmp_path / "run", "--pretrained", str(tmp_path / "s16.pt"))) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and "s16.pt" in err[0], err
    assert "zeros" not in captured.out and captured.out == "", captured.out


class ConstantClassifier(torch.nn.Module):
    """Always predicts class 0."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, video):
        return self.bias.expand(video.shape[0], 2)


def test_validation_counts_only_readable_videos(tmp_path):
    rng = np.random.default_rng(0)
    write_video(tmp_path / "val" / "a" / "1.mp4", ramp_frames(0, rng))  # class 0: right
    header_only_video(tmp_path / "val" / "a" / "2.avi")  # broken: must not be counted, nor replaced by the next
    write_video(tmp_path / "val" / "b" / "3.mp4", ramp_frames(1, rng))  # class 1: wrong
    val_set = data.KineticsDataset(tmp_path, "val", train=False, num_frames=2, stride=2, img_size=32, clips=1,
                                   crops=1)
    loader = torch.utils.data.DataLoader(val_set, batch_size=2, collate_fn=data.collate_readable)
    top1, top5, videos = train.validate(ConstantClassifier(), loader, None)
    assert (top1, top5, videos) == (1, 2, 2) and sum(val_set.broken) == 1  # 1 of 2 readable: 50%, not 1 of 3


def test_resuming_on_other_classes_is_refused(videos, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    renamed, more = tmp_path / "renamed", tmp_path / "more"
    shutil.copytree(videos, renamed)
    os.rename(renamed / "train" / CLASSES[1], renamed / "train" / "bb")
    os.rename(renamed / "val" / CLASSES[1], renamed / "val" / "bb")
    shutil.copytree(videos, more)
    shutil.copytree(more / "train" / CLASSES[0], more / "train" / "zz")
    shutil.copytree(more / "val" / CLASSES[0], more / "val" / "zz")
    capsys.readouterr()
    before = load(out / "last.pt")["model"]["head.weight"]
    for other, named in ((renamed, "bb"), (more, "zz")):
        assert train.main(tiny_args(other, out, "--epochs", "2", "--resume")) == 2
        one_error_line(capsys, "--resume", "differ", named)
    assert torch.equal(load(out / "last.pt")["model"]["head.weight"], before)


def test_resume_is_exact_when_a_header_reads_but_no_frame_decodes(videos, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(videos, root)
    header_only_video(root / "train" / CLASSES[0] / "00broken.avi")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(tiny_args(root, straight, "--epochs", "2", "--workers", "2")) == 0
    assert train.main(tiny_args(root, resumed, "--epochs", "1", "--workers", "2")) == 0
    assert train.main(tiny_args(root, resumed, "--epochs", "2", "--workers", "2", "--resume")) == 0
    a, b = load(straight / "last.pt"), load(resumed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in log_rows(straight)] == [r["train_loss"] for r in log_rows(resumed)]


# ---------------------------------------------------------------------------------------------------------
# one line, exit status 2, instead of a traceback


@pytest.mark.parametrize("flags,named", [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 40)], "--seed"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--short-side", "330", "224"], "--short-side"),
])
def test_impossible_numbers_are_one_line(videos, tmp_path, capsys, flags, named):
    assert train.main(tiny_args(videos, tmp_path / "run", "--epochs", "1", *flags)) == 2
    one_error_line(capsys, named)


def test_a_dataset_of_broken_videos_is_one_line(tmp_path, capsys):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    for i in range(40):
        (tmp_path / "d" / "train" / "a" / f"{i:02d}.mp4").write_bytes(b"garbage" * 10)
    assert train.main(tiny_args(tmp_path / "d", tmp_path / "run", "--epochs", "1", "--batch-size", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "32 broken videos in a row" in err[-1] and err[-1].startswith("train.py: error:")
    assert not any("Traceback" in line for line in err)


def test_an_unreadable_validation_split_stops_after_saving_the_epoch(videos, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(videos, root)
    for path in (root / "val").rglob("*.mp4"):
        path.write_bytes(b"garbage")
    assert train.main(tiny_args(root, tmp_path / "run", "--epochs", "1")) == 2
    assert "none of the 2 validation videos can be decoded" in capsys.readouterr().err
    assert load(tmp_path / "run" / "last.pt")["epoch"] == 1  # the epoch of training is kept


def test_unwritable_out_is_one_line_before_any_training(videos, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("I am a file")
    assert train.main(tiny_args(videos, tmp_path / "file", "--epochs", "1")) == 2
    one_error_line(capsys, "file", "cannot be written")

    def read_only(*args, **kwargs):  # as a read-only folder answers (root ignores chmod, so no chmod here)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(data.tempfile, "TemporaryFile", read_only)
    assert train.main(tiny_args(videos, tmp_path / "ro", "--epochs", "1")) == 2
    one_error_line(capsys, "ro", "permission denied")


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(videos, tmp_path,
                                                                             capsys):
    first = tmp_path / "first"
    assert train.main(tiny_args(videos, first, "--epochs", "1")) == 0
    out = tmp_path / "full"
    out.mkdir()
    # a real small filesystem: room for one checkpoint and log.csv, not for a second one beside it
    size_k = os.path.getsize(first / "last.pt") // 1024 + 128
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(out)]
    if subprocess.run(mount).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        for name in ("last.pt", "log.csv", "args.json"):
            shutil.copy(first / name, out / name)
        before = (out / "last.pt").read_bytes()
        capsys.readouterr()
        assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 2
        one_error_line(capsys, "last.pt", "no space left on device")
        assert (out / "last.pt").read_bytes() == before and not list(out.glob(".tmp-*"))
        # log.csv fitted; a resume drops its row 2
        assert [row["epoch"] for row in log_rows(out)] == ["1", "2"]
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_a_corrupt_log_on_resume_is_one_line(videos, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    (out / "log.csv").write_bytes(b"\x00\xff\xfe binary junk\n\x01,\x02\n")
    capsys.readouterr()
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 2
    one_error_line(capsys, "log.csv")


def test_bad_files_are_one_line(videos, tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("these are my notes\n" * 10)
    assert train.main(tiny_args(videos, tmp_path / "a", "--pretrained", str(tmp_path / "notes.pt"))) == 2
    line = one_error_line(capsys, "notes.pt")
    assert "weights_only" not in line
    (tmp_path / "list.bin").write_bytes(bytes(range(256)) * 4)
    assert train.main(tiny_args(videos, tmp_path / "b", "--annotations", str(tmp_path / "list.bin"))) == 2
    one_error_line(capsys, "list.bin", "not a text file")


def test_ctrl_c_is_one_line_with_the_last_saved_epoch(videos, tmp_path, capsys, monkeypatch):
    epochs = []
    original = train.train_one_epoch

    def interrupted_in_the_second_epoch(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_in_the_second_epoch)
    assert train.main(tiny_args(videos, tmp_path / "run", "--epochs", "3")) == 130
    assert one_error_line(capsys) == "train.py: interrupted; last checkpoint epoch 1"


# ---------------------------------------------------------------------------------------------------------
# files


def test_leftovers_of_killed_runs_are_cleaned_up(videos, tmp_path):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    (out / ".tmp-k1ll3d-last.pt").write_bytes(b"\x00" * 1000)  # what a SIGKILL during a save leaves
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 0
    assert not list(out.glob(".tmp-*"))
    staging = tmp_path / "cache" / ".tmp-k1ll3d-syn"  # what a SIGKILL while making the synthetic data leaves
    staging.mkdir(parents=True)
    prepare.make_synthetic(tmp_path / "cache" / "syn", train_per_class=1, val_per_class=1, num_frames=4, size=32)
    assert not staging.exists()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with data.atomic_path(tmp_path / "report.json") as tmp, open(tmp, "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_resume_leaves_args_json_as_the_checkpoint_has_it(videos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    before = (out / "args.json").read_text()
    build_model = vit.build_model

    def nan_model(**kwargs):
        model = build_model(**kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(vit, "build_model", nan_model)
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume", "--workers", "1")) == 1
    assert (out / "args.json").read_text() == before
    assert json.loads(before)["lr"] == load(out / "last.pt")["args"]["lr"] == 0.05
    assert json.loads(before)["workers"] == load(out / "last.pt")["args"]["workers"] == 0


# ---------------------------------------------------------------------------------------------------------
# evaluate.py and data.py


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_evaluate_checks_its_report_paths_before_testing(videos, tmp_path):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    (tmp_path / "file").write_text("a file")
    for flag in ("--json", "--per-class"):
        result = run("evaluate.py", "--checkpoint", str(out / "best.pt"), flag, str(tmp_path / "file" / "r.json"))
        assert result.returncode == 2 and "cannot be written" in result.stderr and "r.json" in result.stderr
        assert "test:" not in result.stderr and len(result.stderr.strip().splitlines()) == 1  # before the test


def test_evaluate_names_the_keys_of_a_checkpoint_that_does_not_fit(videos, tmp_path):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    ckpt = load(out / "best.pt")
    del ckpt["model"]["blocks.2.mlp.fc1.bias"]
    torch.save(ckpt, tmp_path / "cut.pt")
    result = run("evaluate.py", "--checkpoint", str(tmp_path / "cut.pt"))
    assert result.returncode == 2 and "blocks.2.mlp.fc1.bias" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_benchmark_survives_broken_videos(videos, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(videos, root)
    (root / "train" / CLASSES[0] / "broken.mp4").write_bytes(b"garbage")
    header_only_video(root / "train" / CLASSES[1] / "empty.avi")
    result = run("bench.py", "--loader", str(root), "--clips", "4", "--workers", "0", "--img-size", "32",
                 "--frames", "2", "--stride", "2")
    assert result.returncode == 0, result.stderr
    assert "clips/s" in result.stdout and "Traceback" not in result.stderr
