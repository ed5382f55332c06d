"""Fixtures and helpers shared by the tests (imported as `from conftest import ...`)."""
import os

import cv2
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The tensors in these tests are tiny: extra threads only add overhead, and the 2 CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_video(path, frames_rgb, fourcc="mp4v", fps=25):
    """Writes uint8 RGB frames (T, H, W, 3) with cv2.VideoWriter; returns the path as a string."""
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    height, width = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cv2 cannot write {fourcc} here"
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR)))
    writer.release()
    return str(path)


CLASSES = ("brightening", "darkening")


def ramp_frames(label, rng, frames=12, height=40, width=48):
    """A clip that brightens (label 0) or darkens (label 1), with noise: only the frame order tells them apart."""
    ramp = np.linspace(40, 215, frames)[::1 if label == 0 else -1]
    return np.clip(ramp[:, None, None, None] + rng.normal(0, 20, (frames, height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """root/{train,val}/<class>/*.mp4: 3 train and 1 val video per class, 12 frames of 40x48 px."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                write_video(root / split / name / f"{i}.mp4", ramp_frames(label, rng))
    return root


def tiny_args(data, out, *extra):
    """train.py flags for a run of seconds: ViT-Ti on 2 frames of 32 px, batches of 2, 2 accumulation steps."""
    return ["--data", str(data), "--out", str(out), "--size", "Ti/16", "--img-size", "32", "--frames", "2",
            "--stride", "2", "--batch-size", "2", "--accum-steps", "2", "--workers", "0", "--lr", "0.05",
            "--lr-steps", "1", "--seed", "3", *extra]
