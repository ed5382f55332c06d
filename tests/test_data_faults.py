"""Faults of data.py and prepare.py (issue 21), each made real: a full tmpfs, a read-only folder, a file without
read permission, a real SIGINT to the process group and SIGKILL of the main process, symlinks,
repeated rows and cut files written here."""
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import bench
import data
import prepare
import train
from conftest import tiny_args, write_video

PREPARE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prepare.py")


def noise_video(path, frames, seed=0, height=96, width=128):
    """mp4v noise: its MJPEG copy takes about 18 kB per frame."""
    rng = np.random.default_rng(seed)
    return write_video(path, rng.integers(0, 256, (frames, height, width, 3), np.uint8))


def decoded_frames(path):
    """The frames OpenCV decodes walking the whole file: the reference count."""
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def without_file_permission_override():
    """Root reads and writes past file modes; without these two capabilities it cannot."""
    if os.geteuid() == 0:
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            assert ctypes.CDLL(None).prctl(24, capability, 0, 0, 0) == 0  # PR_CAPBSET_DROP


def prepare_py(*args, **popen):
    """prepare.py run as a command, as a user whose file modes are obeyed."""
    return subprocess.run([sys.executable, PREPARE_PY, *map(str, args)], capture_output=True,
                          text=True, preexec_fn=without_file_permission_override, **popen)


def one_line_error(result, *named, script="prepare.py"):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith(f"{script}: error: ") and all(n in lines[-1] for n in named), lines
    return lines[-1]


def main_error(capsys, argv, *named, script=prepare):
    """prepare.main (or bench.main) in this process (a command costs seconds to start): exit
    status 2, one line."""
    with pytest.raises(SystemExit) as exit_status:
        script.main(list(map(str, argv)))
    result = subprocess.CompletedProcess(argv, exit_status.value.code, *capsys.readouterr())
    return result, one_line_error(result, *named, script=f"{script.__name__}.py")


@contextlib.contextmanager
def tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def assert_every_avi_whole(source, target):
    """Every .avi in the copy has all the frames of its source; no partial file is left."""
    for avi in target.rglob("*.avi"):
        mp4 = source / avi.relative_to(target).with_suffix(".mp4")
        assert data.open_video(avi)[1] == decoded_frames(mp4) == len(data.read_frames(
            avi, range(decoded_frames(mp4)))), avi
    assert not list(target.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """8 videos of 60 noise frames: a 7 MB prepared copy."""
    source = tmp_path_factory.mktemp("big") / "src"
    for k in range(8):
        noise_video(source / "train" / "ab"[k % 2] / f"{k}.mp4", 60, seed=k)
    return source


# --------------------------------------------------------------------------------------------------
# --resize: nothing lost, nothing half-written


def test_resize_onto_a_full_disk_fails_naming_the_file_and_resumes_when_space_is_freed(
        big_source, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m") as disk:  # the copy takes about 2.5 MB
        argv = ["--resize", big_source, disk / "dst", "--short-side", 96, "--workers", 2]
        result, named = main_error(capsys, argv, str(disk / "dst"), ".avi")
        assert "broken" not in result.stderr and "prepared" not in result.stdout, named
        done = list((disk / "dst").rglob("*.avi"))
        assert 0 < len(done) < 8  # what fitted is there, and whole
        assert_every_avi_whole(big_source, disk / "dst")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert prepare.resize_dataset(big_source, disk / "dst", 96, workers=2) == []
        assert len(list((disk / "dst").rglob("*.avi"))) == 8
        assert_every_avi_whole(big_source, disk / "dst")


def test_resize_copies_an_annotation_file_whole_or_not_at_all(tmp_path, capsys):
    source = tmp_path / "src"
    noise_video(source / "train" / "a" / "0.mp4", 4)
    rows = "".join(f"a,video{k:07d},0,10,train\n" for k in range(200_000))
    (source / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n" + rows)
    assert os.path.getsize(source / "train.csv") > 5e6
    with tmpfs(tmp_path / "disk", "3m") as disk:
        main_error(capsys, ["--resize", source, disk / "dst"], str(disk / "dst" / "train.csv"))
        assert not (disk / "dst" / "train.csv").exists() and not list(disk.rglob(".tmp-*"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert prepare.resize_dataset(source, disk / "dst", prepare.SHORT_SIDE, workers=1) == []
        assert (disk / "dst" / "train.csv").read_bytes() == (source / "train.csv").read_bytes()
        with open(disk / "dst" / "train.csv", "r+b") as f:  # a copy an older version cut short
            f.truncate(1000)
        assert prepare.resize_dataset(source, disk / "dst", prepare.SHORT_SIDE, workers=1) == []
        assert (disk / "dst" / "train.csv").read_bytes() == (source / "train.csv").read_bytes()


def test_sources_that_would_become_one_avi_are_refused(tmp_path, capsys):
    noise_video(tmp_path / "src" / "a" / "clip.mp4", 3)
    noise_video(tmp_path / "src" / "a" / "clip.mkv", 3)
    main_error(capsys, ["--resize", tmp_path / "src", tmp_path / "dst"], "clip.mp4", "clip.mkv")
    assert not list(tmp_path.glob("dst/**/*.avi"))


def test_a_target_that_links_into_the_source_is_refused(tmp_path):
    noise_video(tmp_path / "src" / "a" / "0.mp4", 3)
    (tmp_path / "dst").symlink_to(tmp_path / "src" / "copy")
    with pytest.raises(ValueError, match="outside"):
        prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 48, workers=1)
    assert sorted(p.name for p in (tmp_path / "src").rglob("*")) == ["0.mp4", "a"]


def test_a_copy_is_resumed_only_with_its_own_settings(tmp_path):
    noise_video(tmp_path / "src" / "a" / "0.mp4", 3)
    assert prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 48, workers=1) == []
    noise_video(tmp_path / "src" / "a" / "1.mp4", 3)
    with pytest.raises(ValueError, match="prepared.json.*48.*32"):
        prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 32, workers=1)
    assert not (tmp_path / "dst" / "a" / "1.avi").exists()
    assert prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 48, workers=1) == []
    assert data.read_frames(tmp_path / "dst" / "a" / "1.avi", [0]).shape == (1, 48, 64, 3)
    (tmp_path / "other" / "a").mkdir(parents=True)  # not made by --resize: no settings to match
    with pytest.raises(ValueError, match="no prepared.json"):
        prepare.resize_dataset(tmp_path / "src", tmp_path / "other", 48, workers=1)


def default_ctrl_c():
    """Ctrl-C as in a terminal, even if the test runner was started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def workers_of(session):
    """The processes of a session but its leader: the --resize command's pool workers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
            if int(fields[3]) == session and int(pid) != session:
                found.append(int(pid))
    return found


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def writing_a_partial_file(pid):
    """Whether `pid` holds a file still named .tmp-*: atomic_path has not renamed it yet."""
    with contextlib.suppress(OSError):
        return any("/.tmp-" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


def resize_held_mid_write(source, target):
    """A --resize command in its own session, one of its workers stopped (SIGSTOP) while it writes a
    partial file: that video is never done, so the command is mid-work whenever a signal lands.
    Returns the command and the stopped worker."""
    process = subprocess.Popen([sys.executable, PREPARE_PY, "--resize", source, target, "--short-side", "96",
                                "--workers", "2"], start_new_session=True, preexec_fn=default_ctrl_c,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        for worker in workers_of(process.pid):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.kill(worker, signal.SIGSTOP)
                while proc_state(worker) not in "TZ":  # stopped (or gone): its open files stay
                    time.sleep(0.001)
                if writing_a_partial_file(worker):
                    return process, worker
                os.kill(worker, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"finished before a worker could be held: {process.communicate()}")


def test_ctrl_c_is_one_line_and_leaves_no_partial_file(big_source, tmp_path):
    target = tmp_path / "dst"
    process, worker = resize_held_mid_write(big_source, target)
    try:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        # the held video is unfinished, so the command cannot have ended before the signal; it
        # lets the videos begun end, so the worker goes on
        os.kill(worker, signal.SIGCONT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and "Traceback" not in err and "Error" not in err, err
    assert err.strip().splitlines()[-1] == "prepare.py: interrupted; no partial file left"
    assert len(list(target.rglob("*.avi"))) < 8
    assert_every_avi_whole(big_source, target)


def test_after_a_sigkill_the_next_run_removes_the_partial_files(big_source, tmp_path):
    target = tmp_path / "dst"
    process, _ = resize_held_mid_write(big_source, target)
    os.kill(process.pid, signal.SIGKILL)  # the main process only: its workers are left behind
    _, err = process.communicate(timeout=120)  # the pipe closes when the workers are gone too
    assert "Traceback" not in err and "Error" not in err, err
    assert list(target.rglob(".tmp-*")), "the kill left no partial file to clean up"
    assert prepare.resize_dataset(big_source, target, 96, workers=2) == []
    assert len(list(target.rglob("*.avi"))) == 8
    assert_every_avi_whole(big_source, target)


def test_a_truncated_source_is_prepared_and_reported(tmp_path, capsys):
    whole = tmp_path / "whole.avi"
    prepare.write_mjpeg(str(whole), iter(np.random.default_rng(0).integers(
        0, 256, (120, 48, 64, 3), np.uint8)), 25)
    content = whole.read_bytes()
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "cut.avi").write_bytes(content[:len(content) * 57 // 120])
    decodable = decoded_frames(tmp_path / "src" / "a" / "cut.avi")
    assert 0 < decodable < 120
    assert prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 48, workers=1) == []
    assert data.open_video(tmp_path / "dst" / "a" / "cut.avi")[1] == decodable
    err = capsys.readouterr().err
    assert f"cut.avi: {decodable} frames decode where its header says 120 (truncated?)" in err


def test_a_read_only_target_folder_is_one_line_naming_it(tmp_path):
    noise_video(tmp_path / "src" / "a" / "0.mp4", 3)
    noise_video(tmp_path / "src" / "b" / "0.mp4", 3)
    assert prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", 48, workers=1) == []
    os.remove(tmp_path / "dst" / "b" / "0.avi")
    os.chmod(tmp_path / "dst" / "b", 0o555)
    try:
        result = prepare_py("--resize", tmp_path / "src", tmp_path / "dst", "--short-side", 48)
    finally:
        os.chmod(tmp_path / "dst" / "b", 0o755)
    one_line_error(result, str(tmp_path / "dst" / "b"), "cannot be written")
    assert "broken" not in result.stderr


UNREADABLE = """if 1:
    import os, sys, data, prepare
    root = sys.argv[1]
    dataset = data.KineticsDataset(root + "/src", num_frames=2, stride=1, img_size=16)
    print(len(dataset), [dataset[i][1] for i in range(2)], sum(dataset.broken), flush=True)
    prepare.main(["--resize", root + "/src", root + "/dst", "--short-side", "48"])
    with open(root + "/src/notes.txt", "w") as notes:
        notes.write("a file the copy cannot read")
    os.chmod(root + "/src/notes.txt", 0)
    prepare.main(["--resize", root + "/src", root + "/dst", "--short-side", "48"])
"""


def test_unreadable_files_name_the_source_and_a_video_is_skipped_as_broken(tmp_path):
    noise_video(tmp_path / "src" / "train" / "a" / "0.mp4", 3)
    secret = noise_video(tmp_path / "src" / "train" / "a" / "1.mp4", 3)
    os.chmod(secret, 0)
    result = subprocess.run([sys.executable, "-c", UNREADABLE, str(tmp_path)], text=True,
                            capture_output=True, preexec_fn=without_file_permission_override,
                            cwd=os.path.dirname(PREPARE_PY))
    # training: skipped as a broken video, the next one taken
    assert result.stdout.split()[:4] == ["2", "[0,", "0]", "1"], result.stderr
    # --resize: the same, reported by the source's name; an unreadable other file: an error
    skipped = f"skipping broken video: {secret}: cannot be read (permission denied)"
    assert result.stderr.count(skipped) == 2 and "dst/train" not in result.stderr
    last = one_line_error(result, str(tmp_path / "src" / "notes.txt"), "ermission denied")
    assert str(tmp_path / "dst") not in last and "prepared 1 videos" in result.stdout


# --------------------------------------------------------------------------------------------------
# the loader


def test_a_symlink_loop_in_a_class_folder_adds_no_video(tmp_path):
    for k in range(3):
        noise_video(tmp_path / "train" / "fwd" / f"{k}.mp4", 2)
    noise_video(tmp_path / "train" / "bwd" / "0.mp4", 2)
    noise_video(tmp_path / "elsewhere" / "linked.mp4", 2)
    (tmp_path / "train" / "fwd" / "loop").symlink_to("..")
    (tmp_path / "train" / "bwd" / "linked.mp4").symlink_to(tmp_path / "elsewhere" / "linked.mp4")
    dataset = data.KineticsDataset(tmp_path, num_frames=2, stride=1, img_size=16)
    assert [os.path.relpath(p, tmp_path) for p in dataset.videos] == [
        "train/bwd/0.mp4", "train/bwd/linked.mp4", "train/fwd/0.mp4", "train/fwd/1.mp4",
        "train/fwd/2.mp4"]
    assert dataset.labels == [0, 0, 1, 1, 1] and dataset[1][0].shape == (3, 2, 16, 16)


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


def kinetics_videos(root, names):
    for name in names:
        noise_video(root / f"{name}_000000_000010.mp4", 2)
    return [f"{'ab'[k % 2]},{name},0,10,train\n" for k, name in enumerate(names)]


def test_repeated_rows_are_dropped_with_a_count(tmp_path, capsys):
    rows = kinetics_videos(tmp_path, [f"v{k}" for k in range(8)])
    (tmp_path / "k.csv").write_text(KINETICS_HEADER + "".join(rows + rows[2:5]))
    dataset = data.KineticsDataset(tmp_path, annotations=tmp_path / "k.csv")
    assert len(dataset) == 8 and sorted(dataset.videos) == sorted(map(str, tmp_path.glob("*.mp4")))
    assert "dropped 3 repeated rows" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("v0_000000_000010.mp4 0\nv1_000000_000010.mp4 1\n" * 2)
    assert len(data.KineticsDataset(tmp_path, annotations=tmp_path / "list.txt")) == 2
    assert "dropped 2 repeated rows" in capsys.readouterr().err
    (tmp_path / "clash.txt").write_text("v0_000000_000010.mp4 0\nv0_000000_000010.mp4 1\n")
    with pytest.raises(ValueError, match="v0_000000_000010 is listed with two labels"):
        data.KineticsDataset(tmp_path, annotations=tmp_path / "clash.txt")


def test_a_bom_before_the_header_and_rows_of_another_split(tmp_path):
    rows = kinetics_videos(tmp_path, ["v0", "v1", "v2", "v3"])
    (tmp_path / "bom.csv").write_bytes(("\ufeff" + KINETICS_HEADER + "".join(rows)).encode())
    assert len(data.KineticsDataset(tmp_path, annotations=tmp_path / "bom.csv")) == 4
    with pytest.raises(ValueError, match="no row of split 'val'; its split column holds 'train'"):
        data.KineticsDataset(tmp_path, "val", annotations=tmp_path / "bom.csv")


def test_an_avi_without_frames_is_one_video_error_without_opencvs_own_message(tmp_path, capfd):
    writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.CAP_FFMPEG,
                             cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    writer.release()  # a header and an empty index
    whole = open(write_video(tmp_path / "whole.avi", np.zeros((4, 48, 64, 3), np.uint8), "MJPG"),
                 "rb").read()
    cut = bytearray(whole[:whole.find(b"movi") + 4])  # a header only, its RIFF length made right
    cut[4:8] = (len(cut) - 8).to_bytes(4, "little")
    (tmp_path / "header.avi").write_bytes(bytes(cut))
    for name in ("empty.avi", "header.avi"):
        with pytest.raises(data.VideoError, match=f"{name}: no frame could be decoded"):
            data.read_frames(tmp_path / name, [0])
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# impossible numbers


def test_a_short_side_that_scales_to_zero_is_one_line(videos, tmp_path, capsys):
    with pytest.raises(ValueError, match="short_side"):
        data.KineticsDataset(videos, img_size=64, short_side=(1, 1))
    flags = ("--epochs", "1", "--short-side", "1", "1")  # tiny_args' --img-size 32
    assert train.main(tiny_args(videos, tmp_path / "run", *flags)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--short-side" in err.strip().splitlines()[-1]


def test_benchmark_of_no_clips_is_one_line(videos, capsys):
    main_error(capsys, ["--loader", videos, "--clips", 0], "--clips", script=bench)
