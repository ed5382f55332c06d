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
