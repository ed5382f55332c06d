"""The prepared copy that `python prepare.py --resize SRC DST` makes with its defaults keeps its
promise (docs/kinetics.md, section 4) on Kinetics-like clips: every frame within 37 dB PSNR of the
original frame at the copy's size, pooled over all frames, and prepared.json records the settings
its JPEGs were made with. OpenCV only (CI has neither PyAV nor decord): one second of each of the
measurement's sources, written by cv2.VideoWriter; the reference is the frames OpenCV decodes from
them, so that the sources' own codec loss does not count.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np

import data
import prepare
from kinetics_like import SOURCES, shrunk, write_opencv

PSNR_GOAL = 37  # dB, pooled over all frames (docs/kinetics.md)
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quantization_tables(jpeg):
    """The DQT segments of a JPEG (its quantization tables: what its quality sets), in order."""
    tables, at = [], 2
    while jpeg[at:at + 2] != b"\xff\xda":  # the scan begins: no table after it
        length = int.from_bytes(jpeg[at + 2:at + 4], "big")
        if jpeg[at:at + 2] == b"\xff\xdb":
            tables.append(jpeg[at + 4:at + 2 + length])
        at += 2 + length
    return tables


def first_jpeg(avi):
    """The bytes of the first frame of an MJPEG .avi, from its start marker to its end marker."""
    content = open(avi, "rb").read()
    start = content.index(b"\xff\xd8\xff")
    return content[start:content.index(b"\xff\xd9", start) + 2]


def squared_error(source, copy, short_side):
    """(sum of squared errors, values) of every frame of `copy` (read by the loader's reader)
    against the frame OpenCV decodes from `source`, shrunk to `short_side`."""
    capture, reader = cv2.VideoCapture(source), data.open_video(copy)[0]
    total, values = 0.0, 0
    for _, frame in iter(capture.read, (False, None)):
        reference, (ok, decoded) = shrunk(frame, short_side), reader.read()
        assert ok and decoded.shape == reference.shape
        total += cv2.norm(reference, decoded, cv2.NORM_L2SQR)
        values += reference.size
    assert values and not reader.read()[0], f"{copy}: not the frames of {source}"
    capture.release()
    reader.release()
    return total, values


def test_a_copy_with_the_defaults_is_within_37_db_of_its_originals_and_records_them(tmp_path):
    sources = [tmp_path / "src" / "a" / f"{k:02d}.mp4" for k in range(len(SOURCES))]
    for k, (path, (width, height, fps)) in enumerate(zip(sources, SOURCES)):
        write_opencv(path, k, width, height, fps, seconds=1)
    result = subprocess.run([sys.executable, "prepare.py", "--resize", tmp_path / "src",
                             tmp_path / "dst"], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / "dst" / "prepared.json").read_text())
    assert recorded == dict(short_side=prepare.SHORT_SIDE, mjpeg_quality=prepare.JPEG_QUALITY,
                            version=prepare.PREPARED_VERSION)
    copies = [tmp_path / "dst" / "a" / f"{k:02d}.avi" for k in range(len(SOURCES))]
    errors = np.array([squared_error(str(source), copy, recorded["short_side"])
                       for source, copy in zip(sources, copies)])
    psnr = 10 * np.log10(255 ** 2 * errors[:, 1].sum() / errors[:, 0].sum())
    assert psnr >= PSNR_GOAL, f"{psnr:.2f} dB"
    quality = [cv2.IMWRITE_JPEG_QUALITY, recorded["mjpeg_quality"]]
    made_so = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8), quality)[1].tobytes()
    for copy in copies:
        assert quantization_tables(first_jpeg(copy)) == quantization_tables(made_so)
