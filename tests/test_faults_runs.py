"""Fault injection, second run (issue 21): concurrent and mixed runs, resume flags, torchrun,
--video reports.

Real processes where the fault needs them: two train.py at once, torchrun with 2 processes, SIGINT
to a process group.
"""
import csv
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import train
from conftest import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def last_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


def train_py(*argv):
    return [sys.executable, os.path.join(ROOT, "train.py"), *argv]


def torchrun(*argv):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(ROOT, "train.py"), *argv]


def wait_for(path, process, seconds=240):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert process.poll() is None and time.time() < deadline, "the first run ended or hung"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def run_one(videos, tmp_path_factory):
    """One epoch of the tiny run (paper layout)."""
    out = tmp_path_factory.mktemp("runs") / "one"
    assert train.main(tiny_args(videos, out, "--epochs", "1")) == 0
    return out


def test_a_second_run_into_a_busy_out_is_refused_and_a_killed_run_leaves_nothing_stuck(videos,
                                                                                       tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_py(*tiny_args(videos, out, "--epochs", "500")), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(out / "last.pt", first)
        for extra in ((), ("--resume",)):
            argv = train_py(*tiny_args(videos, out, "--epochs", "500", *extra))
            second = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and second.stderr.strip().splitlines() == [
                f"train.py: error: --out {out}: another train.py is running into it"], second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    epoch = load(out / "last.pt")["epoch"]
    # nothing stuck
    assert train.main(tiny_args(videos, out, "--epochs", str(epoch + 1), "--resume")) == 0


def test_best_pt_keeps_its_score_when_log_csv_is_gone(videos, run_one, tmp_path, capsys):
    with open(run_one / "log.csv", newline="") as f:
        logged = float(next(csv.DictReader(f))["val_top1"])
    assert load(run_one / "best.pt")["val_top1"] == logged  # best.pt carries its own score
    out = tmp_path / "run"
    shutil.copytree(run_one, out)
    os.remove(out / "log.csv")
    best = load(out / "best.pt")
    best["val_top1"] = 100.0  # an earlier epoch that no later one can beat (it must be better)
    torch.save(best, out / "best.pt")
    before = digest(out / "best.pt")
    capsys.readouterr()
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 0
    assert digest(out / "best.pt") == before and "(best 100.00%" in capsys.readouterr().out


def test_a_last_pt_of_another_run_beside_a_runs_files_is_refused(videos, run_one, tmp_path, capsys):
    released = tmp_path / "released"
    argv = tiny_args(videos, released, "--epochs", "1", "--shift-layout", "released")
    assert train.main(argv) == 0
    out = tmp_path / "mixed"
    shutil.copytree(run_one, out)
    shutil.copy(released / "last.pt", out / "last.pt")
    before = {name: digest(out / name) for name in ("last.pt", "best.pt", "log.csv")}
    capsys.readouterr()
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 2
    line = last_error(capsys)
    assert f"{out}/log.csv and {out}/best.pt of another run than {out}/last.pt" in line, line
    assert {name: digest(out / name) for name in before} == before
    # best.pt alone of another run is named alone
    shutil.copy(run_one / "last.pt", out / "last.pt")
    shutil.copy(released / "best.pt", out / "best.pt")
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume")) == 2
    assert f"{out}/best.pt of another run" in last_error(capsys)


@pytest.mark.parametrize("flags", [
    ["--batch-size", "1"], ["--seed", "4"], ["--stride", "1"], ["--short-side", "200", "300"],
    ["--lr", "0.5"], ["--amp", "bf16"], ["--label-smoothing", "0"], ["--optimizer", "adamw"],
    ["--heads", "0"]])
def test_resume_refuses_flags_that_break_continues_exactly(videos, run_one, tmp_path, capsys,
                                                           flags):
    out = tmp_path / "run"
    shutil.copytree(run_one, out)
    capsys.readouterr()
    assert train.main(tiny_args(videos, out, "--epochs", "2", "--resume", *flags)) == 2
    line = last_error(capsys)
    assert line.startswith("train.py: error: --resume continues") and " ".join(flags) in line
    assert load(out / "last.pt")["epoch"] == 1


def test_resume_may_change_epochs_lr_steps_and_workers(videos, run_one, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_one, out)
    argv = tiny_args(videos, out, "--epochs", "2", "--resume", "--lr-steps", "5", "--workers", "1")
    assert train.main(argv) == 0
    assert load(out / "last.pt")["epoch"] == 2 and load(out / "last.pt")["args"]["lr_steps"] == [5]


def test_resume_with_another_number_of_processes_names_the_accumulation(videos, run_one, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(run_one, out)
    # effective batch 2 clips x 2 accumulation x 1 process = 4: 2 processes need --accum-steps 1
    result = subprocess.run(torchrun(*tiny_args(videos, out, "--epochs", "2", "--resume")), env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (f"--resume: {out} was trained with an effective batch of 4; 2 processes x 2 clips x 2 "
            "accumulation make 8: --accum-steps 1 keeps it") in result.stderr, result.stderr[-3000:]
    assert load(out / "last.pt")["epoch"] == 1
    given = train.parse_flags(tiny_args(videos, out, "--epochs", "2", "--resume",
                                        "--accum-steps", "1"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: the named value is accepted
    assert train.configure(given)[0].accum_steps == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="no --accum-steps keeps it with 3 processes"):
        train.configure(given)


def test_ctrl_c_under_torchrun_is_one_line_from_rank_0(videos, tmp_path):
    out = tmp_path / "run"
    argv = torchrun(*tiny_args(videos, out, "--epochs", "500", "--accum-steps", "1"))
    with open(tmp_path / "stderr.txt", "w+") as stderr:  # a file: it never fills up as a pipe can
        process = subprocess.Popen(argv, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, start_new_session=True)
        try:
            # rank 0 logs an epoch once it has recorded the checkpoint it saved
            line = next((line for line in process.stdout if line.startswith("epoch ")), "")
            assert line, "the run ended before its first epoch"
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: every process of the group
            process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        stderr.seek(0)
        err = stderr.read()
    lines = [line for line in err.splitlines() if "train.py: interrupted" in line]
    assert len(lines) == 1 and "epoch none" not in lines[0], err[-6000:]


class RunsCode:
    """Unpickled, runs `code`: what a malicious checkpoint does."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_checkpoint_holding_code_is_refused_in_one_line_without_running_it(videos, tmp_path, writer):
    marker = tmp_path / "the code ran"
    payload = {"model": RunsCode(f"open({str(marker)!r}, 'w').close()")}
    evil = tmp_path / "evil.pt"
    if writer == "pickle":  # protocol 4, which torch.load warns about
        with open(evil, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, evil)
    commands = [train_py(*tiny_args(videos, tmp_path / "run", "--epochs", "1", "--pretrained", str(evil))),
                [sys.executable, os.path.join(ROOT, "evaluate.py"), "--checkpoint", str(evil)]]
    for argv in commands:
        result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
        err = result.stderr.splitlines()
        assert result.returncode == 2 and len(err) == 1 and str(evil) in err[0], result.stderr
        assert err[0].startswith(f"{os.path.basename(argv[1])}: error: ") and not marker.exists()
    # the file is what it claims: an unsafe load runs its code
    if writer == "pickle":
        with open(evil, "rb") as f:
            pickle.load(f)
    else:
        torch.load(evil, weights_only=False)
    assert marker.exists()


def test_an_explicit_validation_list_that_matches_nothing_is_an_error(videos, tmp_path, capsys):
    (tmp_path / "val.txt").write_text("val/nowhere/1.mp4 0\nval/nowhere/2.mp4 1\n")
    out = tmp_path / "run"
    argv = tiny_args(videos, out, "--epochs", "1", "--val-annotations", str(tmp_path / "val.txt"))
    assert train.main(argv) == 2
    assert "val.txt" in last_error(capsys) and not (out / "last.pt").exists()


def test_a_tokenshift_that_shifts_no_channel_is_refused(videos, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_args(videos, out, "--variant", "tokenshift", "--shift-div",
                                "1000")) == 2
    assert "shift_div=1000: must be an integer from 2 to 192" in last_error(capsys)
    assert not (out / "last.pt").exists()


def test_a_relative_data_is_stored_absolute_for_evaluate_elsewhere(videos, tmp_path, monkeypatch):
    monkeypatch.chdir(videos.parent)
    out = tmp_path / "run"
    assert train.main(tiny_args(videos.name, out, "--epochs", "1")) == 0
    assert json.load(open(out / "args.json"))["data"] == str(videos)
    assert load(out / "best.pt")["args"]["data"] == str(videos)
    monkeypatch.chdir(tmp_path)  # another folder: no videos.name here
    report = evaluate.main(["--checkpoint", str(out / "best.pt"), "--clips", "1", "--crops", "1",
                            "--workers", "0", "--device", "cpu"])
    assert report["videos"] == 2 and report["data"] == str(videos)


def test_evaluate_video_writes_json_and_refuses_dataset_flags(videos, run_one, tmp_path, capsys):
    video = str(next((videos / "val").rglob("*.mp4")))
    common = ["--checkpoint", str(run_one / "best.pt"), "--video", video, "--clips", "2",
              "--crops", "1", "--device", "cpu"]
    report = evaluate.main(common + ["--json", str(tmp_path / "top5.json")])
    assert json.load(open(tmp_path / "top5.json")) == report
    assert set(report) == {"video", "top5", "frame_order"} and report["frame_order"] == "original"
    assert sum(report["top5"].values()) == pytest.approx(1.0)  # softmax over the 2 classes
    for flag, value in (("--per-class", str(tmp_path / "c.csv")), ("--data", str(videos)),
                        ("--annotations", str(tmp_path / "a.txt")), ("--split", "train")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            evaluate.main(common + [flag, value])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        expected = f"evaluate.py: error: --video tests one file: {flag} apply to a dataset only"
        assert err == [expected], err
    assert not (tmp_path / "c.csv").exists()
