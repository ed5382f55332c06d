"""train.py: gradient accumulation, a tiny end-to-end run, exact resume (with loader workers too),
bad input and NaN handling.

Runs go through `train.main(argv)` in-process (fast) on a few tiny videos written here with cv2; one
bad-input case goes through a real subprocess to check the exit status and the single stderr line.
"""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

import train
import vit
from conftest import CLASSES, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")  # one_epoch asks for it too: resume must be bit-exact


@pytest.fixture(scope="module")
def one_epoch(videos, tmp_path_factory, one_thread):
    """OUT folder of a finished 1-epoch run; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("runs") / "one"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rebuild(ckpt):
    """The model as the checkpoint contract says any script rebuilds it."""
    model = vit.build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model


@pytest.fixture(scope="module")
def two_epochs(videos, tmp_path_factory, one_thread):
    """OUT folder of a finished 2-epoch run, clips loaded in the main process (--workers 0)."""
    out = tmp_path_factory.mktemp("runs") / "two"
    assert train.main(tiny_args(videos, out, "--epochs", "2")) == 0
    return out


@pytest.fixture(scope="module")
def two_epochs_with_workers(videos, tmp_path_factory, one_thread):
    """The same run with 2 loader workers, which persist from epoch 1 to epoch 2."""
    out = tmp_path_factory.mktemp("runs") / "two-workers"
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--workers", "2")) == 0
    return out


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def log_rows(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def untimed_log(out):
    """log.csv less the columns that hold timings (clips_per_s, seconds)."""
    kept = ("epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "skipped")
    return [{column: row[column] for column in kept} for row in log_rows(out)]


def same_weights(a, b):
    model_a, model_b = load(a / "last.pt")["model"], load(b / "last.pt")["model"]
    return model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k])
                                                    for k in model_a)


# ---------------------------------------------------------------------------------------------------------
# Gradient accumulation


class RecordingSGD(torch.optim.SGD):
    """SGD with lr 0 that keeps a copy of the gradients it is asked to step with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


def smoothed_cross_entropy(logits, labels, eps):
    """Label-smoothed cross-entropy from its definition: target (1 - eps) one-hot + eps / C, batch mean."""
    classes = logits.size(1)
    target = torch.full_like(logits, eps / classes)
    target[torch.arange(len(labels)), labels] += 1 - eps
    return -(target * logits.log_softmax(1)).sum(1).mean()


@pytest.mark.parametrize("clips, accum, windows",
                         [(8, 4, [range(0, 8)]), (10, 4, [range(0, 8), range(8, 10)])])
def test_accumulated_gradients_equal_one_big_batch(clips, accum, windows):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    videos, labels = torch.randn(clips, 3, 2, 4, 4), torch.randint(0, 5, (clips,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(videos, labels), batch_size=2)
    optimizer = RecordingSGD(model.parameters())
    train.train_one_epoch(model, loader, optimizer, torch.nn.CrossEntropyLoss(label_smoothing=0.1),
                          accum_steps=accum, scaler=torch.amp.GradScaler("cpu", enabled=False))

    assert len(optimizer.seen) == len(windows)
    for seen, window in zip(optimizer.seen, windows):
        big = list(window)
        model.zero_grad()
        smoothed_cross_entropy(model(videos[big]), labels[big], 0.1).backward()
        for got, param in zip(seen, model.parameters()):
            torch.testing.assert_close(got, param.grad, rtol=1e-5, atol=1e-7)


def test_the_training_loss_is_label_smoothed_by_the_flag(videos, tmp_path):
    """An epoch of train.py at lr 0 logs the mean smoothed cross-entropy (from its formula) of
    its clips, not the unsmoothed one: a criterion that ignores --label-smoothing fails here."""
    args, _ = train.configure(train.parse_flags(tiny_args(videos, tmp_path / "run", "--lr", "0",
                                                          "--label-smoothing", "0.3")))
    run = train.build_run(args, None, 0, 1, torch.device("cpu"))
    logged = float(train.train_epoch(run, args, 0)["train_loss"])
    run.train_loader.sampler.set_epoch(0)
    run.train_set.set_epoch(args.seed, 0)  # the same clips, the same augmentation
    losses = {0.3: [], 0.0: []}
    with torch.no_grad():
        for clips, labels in run.train_loader:
            logits = run.model(clips)
            for eps, kept in losses.items():
                kept.append(smoothed_cross_entropy(logits, labels, eps).item())
    smoothed, plain = (sum(kept) / len(kept) for kept in losses.values())
    assert logged == pytest.approx(smoothed, abs=1e-4) and abs(smoothed - plain) > 1e-2


# ---------------------------------------------------------------------------------------------------------
# Runs


def test_one_epoch_writes_log_args_and_loadable_checkpoints(one_epoch):
    rows = log_rows(one_epoch)
    assert len(rows) == 1
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5",
                             "clips_per_s", "skipped", "seconds"]
    # 6 train videos in batches of 2 -> 3 micro-batches, an optimizer step after the 2nd and the 3rd
    assert rows[0]["epoch"] == "1" and rows[0]["step"] == "2" and float(rows[0]["lr"]) == 0.05
    assert rows[0]["skipped"] == "0" and rows[0]["val_top1"] != ""

    ckpt = load(one_epoch / "last.pt")  # weights_only: evaluate.py can use torch.load's safe mode
    assert {"model", "optimizer", "scaler", "epoch", "step", "args", "model_args", "classes"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2 and ckpt["classes"] == sorted(CLASSES)
    assert ckpt["scaler"] is None  # fp32 on CPU
    assert ckpt["model_args"] == dict(variant="KV", num_classes=2, num_frames=2, size="Ti/16",
                                      img_size=32, heads=2, patches=16, msca_blocks=None,
                                      shift_div=4, shift_layout="paper")
    assert ckpt["args"]["stride"] == 2 and ckpt["args"]["data"] and ckpt["args"]["annotations"] is None
    model = rebuild(ckpt).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 2, 32, 32)).shape == (1, 2)
    assert load(one_epoch / "best.pt")["epoch"] == 1
    assert json.load(open(one_epoch / "args.json"))["batch_size"] == 2
    assert not list(one_epoch.glob(".tmp-*"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(videos, one_epoch, two_epochs,
                                                               tmp_path):
    straight = two_epochs
    resumed = tmp_path / "resumed"
    shutil.copytree(one_epoch, resumed)
    assert train.main(tiny_args(videos, resumed, "--epochs", "2", "--resume")) == 0

    a, b = load(straight / "last.pt"), load(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    assert not torch.equal(a["model"]["head.weight"], load(one_epoch / "last.pt")["model"]["head.weight"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    # --lr-steps 1: the second epoch runs at lr / 10 in both
    assert [float(r["lr"]) for r in log_rows(resumed)] == [0.05, pytest.approx(0.005)]
    assert [r["train_loss"] for r in log_rows(resumed)] == [r["train_loss"] for r in log_rows(straight)]


def test_loader_workers_change_nothing(two_epochs, two_epochs_with_workers):
    # each clip's augmentation is drawn from (seed, epoch, item) alone, and set_epoch reaches the
    # persistent workers: a stale epoch 1 seed there would change epoch 2's clips and losses
    assert untimed_log(two_epochs_with_workers) == untimed_log(two_epochs)
    assert len(log_rows(two_epochs)) == 2 and same_weights(two_epochs_with_workers, two_epochs)


def test_resume_with_persistent_workers_is_exact(videos, two_epochs_with_workers, tmp_path):
    resumed = tmp_path / "resumed"
    workers = ("--workers", "2")
    assert train.main(tiny_args(videos, resumed, "--epochs", "1", *workers)) == 0
    assert train.main(tiny_args(videos, resumed, "--epochs", "2", *workers, "--resume")) == 0
    assert untimed_log(resumed) == untimed_log(two_epochs_with_workers)
    assert len(log_rows(resumed)) == 2 and same_weights(resumed, two_epochs_with_workers)


def test_nan_loss_stops_and_leaves_the_last_checkpoint_intact(videos, one_epoch, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / "nan"
    shutil.copytree(one_epoch, out)
    before = {name: digest(out / name) for name in ("last.pt", "best.pt", "log.csv")}
    build_model = vit.build_model

    def build_model_with_nan_logits(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(vit, "build_model", build_model_with_nan_logits)
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 1
    assert "nan" in capsys.readouterr().err.lower()
    assert {name: digest(out / name) for name in before} == before
    rebuild(load(out / "last.pt"))


# ---------------------------------------------------------------------------------------------------------
# Defaults


def test_recipes_paper_with_data_small_without_and_set_flags_win(videos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paper, _ = train.configure(train.parse_flags(["--data", str(videos), "--variant", "pKV"]))
    assert (paper.size, paper.img_size, paper.frames, paper.stride) == ("B/16", 224, 8, 32)
    assert (paper.epochs, paper.lr, paper.lr_steps, paper.momentum, paper.weight_decay) == (
        12, 0.1, [10], 0.9, 0)
    assert (paper.batch_size, paper.accum_steps, paper.heads, paper.patches) == (21, 10, 2, 16)
    assert (paper.label_smoothing, paper.clip_grad, paper.out) == (
        0.1, 1.0, os.path.join("runs", "pKV"))
    assert paper.short_side == [224, 330] and paper.shift_layout == "paper"

    small, _ = train.configure(train.parse_flags(["--variant", "vit", "--epochs", "3",
                                                  "--img-size", "48"]))
    assert small.synthetic and small.data == train.SYNTHETIC_DIR
    assert (small.size, small.epochs, small.img_size, small.out) == (
        "Ti/16", 3, 48, os.path.join("runs", "synthetic-vit"))


def test_lr_is_divided_by_ten_at_each_step():
    args = Namespace(lr=0.1, lr_steps=[8, 11])
    assert [train.lr_at(args, e) for e in range(12)] == pytest.approx([0.1] * 8 + [0.01] * 3 + [0.001])


# ---------------------------------------------------------------------------------------------------------
# Bad input: exit status 2 and one line naming the flag or file


def bad_inputs(videos, tmp):
    (tmp / "empty" / "train" / "a").mkdir(parents=True)
    (tmp / "garbage.npz").write_bytes(b"not a checkpoint")
    (tmp / "taken").mkdir()
    (tmp / "taken" / "last.pt").write_bytes(b"an earlier run")
    return {
        "missing data": (["--data", str(tmp / "nowhere")], "nowhere"),
        "empty dataset": (["--data", str(tmp / "empty")], "empty"),
        "unknown variant": (["--variant", "XYZ"], "XYZ"),
        "odd heads": (["--heads", "3"], "heads"),
        "too many patches": (["--variant", "pKV", "--patches", "40"], "patches"),
        "unreadable pretrained": (["--pretrained", str(tmp / "garbage.npz")], "garbage.npz"),
        "missing pretrained": (["--pretrained", str(tmp / "missing.npz")], "missing.npz"),
        "zero batch": (["--batch-size", "0"], "--batch-size"),
        "not a number": (["--epochs", "two"], "--epochs"),
        "would clobber": (["--out", str(tmp / "taken")], "--resume"),
        "nothing to resume": (["--resume"], "last.pt"),
        "damaged checkpoint": (["--out", str(tmp / "taken"), "--resume"], "last.pt"),
    }


@pytest.mark.parametrize("case", ["missing data", "empty dataset", "unknown variant", "odd heads",
                                  "too many patches", "unreadable pretrained", "missing pretrained",
                                  "zero batch", "not a number", "would clobber",
                                  "nothing to resume", "damaged checkpoint"])
def test_bad_input_exits_2_with_one_line(case, videos, tmp_path, capsys):
    extra, named = bad_inputs(videos, tmp_path)[case]
    argv = tiny_args(videos, tmp_path / "out", "--epochs", "1") + extra  # later flags win
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and named in err[0], err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_bad_input_from_the_command_line(videos, tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"not a checkpoint")
    argv = tiny_args(videos, tmp_path / "out", "--pretrained", str(tmp_path / "garbage.npz"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "garbage.npz" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_fp16_runs_with_a_loss_scaler_and_checkpoints_its_state(videos, tmp_path):
    # CPU autocast has fp16 too, so the GradScaler path that GPUs without bf16 take runs here
    assert train.main(tiny_args(videos, tmp_path / "fp16", "--epochs", "1", "--amp", "fp16")) == 0
    ckpt = load(tmp_path / "fp16" / "last.pt")
    assert ckpt["scaler"]["scale"] > 0
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
