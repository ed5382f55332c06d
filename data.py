"""
Video data for MSCA: read Kinetics mp4 files directly with OpenCV, sample and augment clips as the paper does,
survive broken videos, and make a small synthetic dataset that only a temporal model can learn.

Sampling (paper, sec. 4.1; all in frames of the decoded video):
- training: `num_frames` frames `stride` apart from a uniformly random start (8 x 32 in the paper);
- test: `clips` such clips with starts spread evenly from the first to the last possible start, each cut into
  `crops` square crops along the long side (left/center/right, or top/center/bottom for portrait videos);
  item = (clips * crops) views, view v = clip (v // crops), crop (v % crops).
- videos shorter than a clip: the stride shrinks to the largest one that fits, ((n - 1) // (num_frames - 1));
  videos with fewer frames than `num_frames` are stretched, frame k of the clip being frame k * n // num_frames
  (frames repeat, order is kept). Nothing crashes, whatever the length.

Augmentation (training, parameters drawn once per clip): short side resized to a random integer in
[244, 330] * size / 224 keeping the aspect ratio and a random size x size crop (done as: crop the matching
square from the decoded frame, then resize only that square), horizontal flip with p = 0.5, then brightness,
saturation, gamma and hue jitter, each with p = 0.1 and the ranges of TokenShift's code, whose settings the
paper uses. Test: short side resized to `size`, square crops. Pixels end in [-1, 1] (the ViT checkpoints'
normalisation). Random numbers come from torch, so torch.manual_seed and DataLoader worker seeding govern them.

Layouts (KineticsDataset detects them):
- folder per class: root/{split}/{class}/*.mp4 (any container OpenCV reads); classes are the sorted class
  folder names found in root/train and root/{split}, so train and val agree on the label indices;
- Kinetics CSV (annotations=..., header label,youtube_id,time_start,time_end[,split]): videos named
  {youtube_id}_{time_start:06d}_{time_end:06d}.<ext> anywhere under root/{split}; classes are the sorted labels
  of the CSV; every row of the file is used (Kinetics ships one CSV per split);
- list file (annotations=..., lines "relative/path label_index", as mmaction2): paths relative to
  root/{split}; classes are "0", "1", ... up to the largest index (the file has no names).
For listed layouts root/{split} falls back to root when that folder does not exist, videos are matched ignoring
their extension (so a `--resize`d copy, always .mp4, still matches) and missing ones are reported once with a count.

Command line:
    python data.py --make-synthetic DIR [--seed 0]
    python data.py --resize SRC DST [--short-side 320] [--workers N]
    python data.py --benchmark ROOT [--split train] [--workers 1] [--clips 40] [--size 224] [--frames 8] [--stride 32]
"""

import argparse
import contextlib
import csv
import errno
import glob
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

# OpenCV and FFmpeg print their own warnings for every damaged packet; data.py reports broken videos itself,
# once, with the file name. setdefault keeps whatever the user asked for.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
FLIP_PROB = 0.5
JITTER_PROB = 0.1
BRIGHTNESS = (0.5, 2.0)  # multiplicative factor
SATURATION = (0.5, 3.0)  # blend factor with the grey image
GAMMA = (0.8, 1.2)  # exponent on [0, 1] pixels
HUE = (-0.5, 0.5)  # shift as a fraction of the hue circle
MAX_BROKEN_IN_A_ROW = 32  # this many broken videos in a row: the dataset is broken, not a file
SYNTHETIC_CLASSES = ("down", "up")
SYNTHETIC_VERSION = 2  # of synthetic_clip: a cached dataset made by another version is not reused

# -----------------------------------------------------------------------------
# frame reading


class VideoError(Exception):
    """A video that cannot be decoded as asked; the message names the file and the problem."""


class VideoTooShortError(VideoError):
    """A frame past the last decodable one was asked for; `decodable` says how many frames could be decoded."""

    def __init__(self, message, decodable=0):
        super().__init__(message)
        self.decodable = decodable


def open_video(path):
    """An opened cv2.VideoCapture and the frame count its header claims (0 when unknown)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file")
    # one decoding thread per video: the parallelism comes from DataLoader workers, and FFmpeg's own threads
    # would oversubscribe the cores (and are slower for small frames anyway)
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        raise VideoError(f"{path}: not a video OpenCV can open (unknown format, or damaged or missing header)")
    return capture, max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def decode_frames(capture, path, indices, header_frames=0):
    """RGB frames `indices` (any order, repeats allowed) of an opened video, decoded in one forward walk.

    Frames before a wanted one are only grabbed (decoded, not colour-converted). No seeking: OpenCV's
    CAP_PROP_POS_FRAMES is not frame-accurate for every codec (B-frames); re-encoded Kinetics clips have few
    keyframes (x264's default is one per 250 frames), so a seek decodes about as much as the walk; and on
    12-frame-GOP mp4v files, where seeking was exact, it was only ~1.5x faster for 8 x 32 clips.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and indices.min() < 0:
        raise ValueError(f"{path}: negative frame index {indices.min()}")
    wanted = {}
    position = 0  # index of the frame the decoder produces next
    for target in np.unique(indices):
        while position <= target:
            if not capture.grab():
                raise stream_ended(path, position, int(target), header_frames)
            position += 1
        ok, bgr = capture.retrieve()  # the grabbed frame is the target
        if not ok:
            raise stream_ended(path, position - 1, int(target), header_frames)
        wanted[int(target)] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not len(indices):
        height, width = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack([wanted[int(i)] for i in indices])


def stream_ended(path, decodable, target, header_frames):
    if decodable == 0:
        return VideoTooShortError(f"{path}: no frame could be decoded (unreadable video stream)", 0)
    if header_frames > decodable:
        reason = f"stream ends after {decodable} decodable frames although the header says {header_frames} (truncated?)"
    else:
        reason = f"the video has {decodable} frames"
    return VideoTooShortError(f"{path}: frame {target} asked for, but {reason}", decodable)


def read_frames(path, indices):
    """uint8 RGB array (len(indices), H, W, 3): frame i is the i-th decoded frame. Raises VideoError."""
    capture, header_frames = open_video(path)
    try:
        return decode_frames(capture, os.fspath(path), indices, header_frames)
    finally:
        capture.release()


def count_frames(capture):
    count = 0
    while capture.grab():
        count += 1
    return count


def read_clip(path, choose_indices):
    """Frames at choose_indices(num_frames) (an int array of any shape) -> array of shape indices.shape + (H, W, 3).

    Headers only estimate the length (often by a frame or two), so when the walk ends early the indices are
    chosen again for the length actually decoded; a header without a count is counted by decoding.
    """
    capture, header_frames = open_video(path)
    try:
        num_frames = header_frames
        if num_frames == 0:
            num_frames = count_frames(capture)
            capture.release()
            capture, _ = open_video(path)
        if num_frames == 0:
            raise VideoError(f"{path}: no frame could be decoded (unreadable video stream)")
        indices = choose_indices(num_frames)
        try:
            frames = decode_frames(capture, path, indices, header_frames)
        except VideoTooShortError as error:
            if error.decodable == 0:
                raise
            capture.release()
            capture, _ = open_video(path)
            indices = choose_indices(error.decodable)
            frames = decode_frames(capture, path, indices, header_frames)
        return frames.reshape(indices.shape + frames.shape[1:])
    finally:
        capture.release()


# -----------------------------------------------------------------------------
# sampling: every random number comes from the generator passed in (see KineticsDataset.__getitem__)


def fitting_stride(video_frames, num_frames, stride):
    """The largest stride <= `stride` whose clip fits in the video; 0 when even stride 1 does not fit."""
    if num_frames == 1:
        return stride
    return min(stride, (video_frames - 1) // (num_frames - 1))


def stretched_clip(video_frames, num_frames):
    """A video shorter than the clip: every frame, in order, some repeated."""
    return np.arange(num_frames) * video_frames // num_frames


def train_clip_indices(video_frames, num_frames, stride, rng):
    """`num_frames` frames `stride` apart from a uniformly random start."""
    step = fitting_stride(video_frames, num_frames, stride)
    if step == 0:
        return stretched_clip(video_frames, num_frames)
    return rng.integers(0, video_frames - step * (num_frames - 1)) + step * np.arange(num_frames)


def multiview_clip_indices(video_frames, num_frames, stride, clips):
    """(clips, num_frames) indices as mmaction2's SampleFrames(test_mode=True): the possible starts cut into
    `clips` equal segments, a clip starting at the middle of each (one clip: the centre of the video)."""
    step = fitting_stride(video_frames, num_frames, stride)
    if step == 0:
        return np.tile(stretched_clip(video_frames, num_frames), (clips, 1))
    segment = (video_frames - step * (num_frames - 1)) / clips
    starts = (np.arange(clips) * segment + segment / 2).astype(np.int64)  # mmaction2's arithmetic, to the frame
    return starts[:, None] + step * np.arange(num_frames)


# -----------------------------------------------------------------------------
# augmentation


def random_train_box(height, width, img_size, short_side, rng):
    """(y, x, side) of the square in the frame that equals: short side resized to a random S in `short_side`
    (for 224-pixel crops, scaled for others), then a random img_size x img_size crop."""
    low, high = (round(img_size * s / 224) for s in short_side)
    side = min(height, width, max(1, round(min(height, width) * img_size / rng.integers(low, high + 1))))
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side


def multiview_crop_boxes(height, width, crops):
    """`crops` squares of the full short side spread along the long side (left/center/right for 3)."""
    side = min(height, width)
    slack = max(height, width) - side
    offsets = np.round(np.linspace(0, slack, crops)).astype(int) if crops > 1 else [slack // 2]
    return [(0, int(x), side) if width >= height else (int(x), 0, side) for x in offsets]


def crop_resize(frames, box, img_size):
    """uint8 (T, H, W, 3) -> (T, img_size, img_size, 3): the square `box` resized to img_size x img_size."""
    y, x, side = box
    interpolation = cv2.INTER_AREA if side > img_size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f[y:y + side, x:x + side], (img_size, img_size), interpolation=interpolation)
                     for f in frames])


def adjust_saturation(clip, factor):
    grey = clip @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(grey[..., None] + factor * (clip - grey[..., None]), 0, 1)


def adjust_hue(clip, shift):
    shifted = []
    for frame in clip:
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)  # float input: hue in degrees [0, 360)
        hsv[..., 0] = (hsv[..., 0] + 360 * shift) % 360
        shifted.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    return np.clip(np.stack(shifted), 0, 1)


def colour_jitter(clip, rng):
    """float32 (T, H, W, 3) RGB in [0, 1]; each jitter with p = JITTER_PROB, same parameters for every frame."""
    if rng.random() < JITTER_PROB:
        clip = np.clip(clip * rng.uniform(*BRIGHTNESS), 0, 1)
    if rng.random() < JITTER_PROB:
        clip = adjust_saturation(clip, rng.uniform(*SATURATION))
    if rng.random() < JITTER_PROB:
        clip = clip ** rng.uniform(*GAMMA)
    if rng.random() < JITTER_PROB:
        clip = adjust_hue(clip, rng.uniform(*HUE))
    return clip.astype(np.float32)


def to_tensor(clip):
    """float (T, H, W, 3) in [0, 1] -> float32 tensor (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2), dtype=np.float32)) * 2 - 1


def train_transform(frames, img_size, short_side, rng):
    clip = crop_resize(frames, random_train_box(*frames.shape[1:3], img_size, short_side, rng), img_size)
    if rng.random() < FLIP_PROB:
        clip = clip[:, :, ::-1]
    return to_tensor(colour_jitter(clip.astype(np.float32) / 255, rng))


def multiview_transform(clips, img_size, crops):
    """uint8 (clips, T, H, W, 3) -> (clips * crops, 3, T, img_size, img_size), clip-major."""
    boxes = multiview_crop_boxes(*clips.shape[2:4], crops)
    return torch.stack([to_tensor(crop_resize(clip, box, img_size) / 255.0) for clip in clips for box in boxes])


# -----------------------------------------------------------------------------
# dataset layouts


def is_video(name):
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def scan_videos(directory):
    """Sorted paths of the video files under `directory` (hidden files, e.g. unfinished --resize output, skipped)."""
    found = []
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        found += [os.path.join(folder, name) for name in sorted(names) if is_video(name)]
    return found


def class_folders(directory):
    if not os.path.isdir(directory):
        return set()
    return {entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith(".")}


def folder_layout(root, split):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise ValueError(f"{split_dir}: folder not found (expected {root}/{split}/<class>/<video>, "
                         f"or pass annotations= for a CSV or list file)")
    classes = sorted(class_folders(split_dir) | class_folders(os.path.join(root, "train")))
    videos, labels = [], []
    for label, name in enumerate(classes):
        paths = scan_videos(os.path.join(split_dir, name))
        videos += paths
        labels += [label] * len(paths)
    return videos, labels, classes


def kinetics_csv_rows(lines, annotations, split):
    """[(video name without extension, class name)] of an official Kinetics CSV; with a `split` column, the rows
    of `split` only (Kinetics writes "val" or "validate" for the validation split)."""
    reader = csv.DictReader(lines)
    missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{annotations}: Kinetics CSV without column(s) {', '.join(sorted(missing))}")
    wanted = {split, "validate", "validation"} if split == "val" else {split}
    try:
        return [(f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}",
                 row["label"]) for row in reader if row.get("split") in wanted or "split" not in row]
    except (TypeError, ValueError):
        raise ValueError(f"{annotations}: line {reader.line_num}: time_start/time_end are not numbers") from None


def list_file_rows(lines, annotations):
    """[(relative path without extension, label index)] of an mmaction2-style list file."""
    rows = []
    for number, line in enumerate(lines, 1):
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].isdigit():
            rows.append((os.path.normpath(os.path.splitext(parts[0])[0]), int(parts[1])))
        elif parts:
            raise ValueError(f"{annotations}: line {number}: expected 'relative/path label_index', got {line.strip()!r}")
    return rows


def listed_layout(root, split, annotations):
    try:
        with open(annotations, newline="") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{annotations}: not a text file (a Kinetics CSV or a list file is)") from None
    video_dir = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    is_kinetics_csv = bool(lines) and "youtube_id" in lines[0]
    on_disk = {}
    for path in scan_videos(video_dir):
        name = os.path.basename(path) if is_kinetics_csv else os.path.relpath(path, video_dir)
        on_disk.setdefault(os.path.normpath(os.path.splitext(name)[0]), path)
    if is_kinetics_csv:
        rows = kinetics_csv_rows(lines, annotations, split)
        classes = sorted({name for _, name in rows})
        rows = [(key, classes.index(name)) for key, name in rows]
    else:
        rows = list_file_rows(lines, annotations)
        classes = [str(i) for i in range(max((label for _, label in rows), default=-1) + 1)]
    found = [(on_disk[key], label) for key, label in rows if key in on_disk]
    if not found:
        raise ValueError(f"{annotations}: none of its {len(rows)} videos of split {split!r} is under {video_dir}")
    if len(found) < len(rows):
        print(f"data: {len(rows) - len(found)} of {len(rows)} videos listed in {annotations} are missing "
              f"under {video_dir}; using the {len(found)} found", file=sys.stderr)
    return [path for path, _ in found], [label for _, label in found], classes


class KineticsDataset(Dataset):
    """(video, label) items: train (3, T, img_size, img_size), test (clips * crops, 3, T, img_size, img_size),
    float32 in [-1, 1].

    A video that raises VideoError is reported once (when `report`) and marked in `broken`, memory shared with
    the DataLoader workers, so that no worker decodes it again. Training replaces it by the next good video;
    a test item is None instead (collate_readable drops it), so that no video is counted twice.
    The augmentation of item i draws from a generator seeded with (*epoch_seed, i, video): it depends on
    nothing else (not on workers, ranks, or which videos turned out broken before), so runs resume exactly.
    """

    def __init__(self, root, split="train", *, train=None, annotations=None, num_frames=8, stride=32, img_size=224,
                 clips=10, crops=3, short_side=(224, 330), report=True):
        for name, value in dict(num_frames=num_frames, stride=stride, img_size=img_size, clips=clips,
                                crops=crops).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KineticsDataset: {name} must be a positive integer, got {value!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: dataset folder not found")
        self.root, self.train = root, split == "train" if train is None else train
        self.num_frames, self.stride, self.img_size, self.clips, self.crops = num_frames, stride, img_size, clips, crops
        self.short_side = tuple(short_side)
        if annotations is None:
            self.videos, self.labels, self.classes = folder_layout(root, split)
        else:
            self.videos, self.labels, self.classes = listed_layout(root, split, os.fspath(annotations))
        if not self.videos:
            raise ValueError(f"{os.path.join(root, split)}: no videos found ({', '.join(VIDEO_EXTENSIONS)})")
        # plain shared memory, no lock: one byte per video written by whichever worker finds it broken; a lock
        # created here could not be passed to workers started with 'spawn'
        self.broken = multiprocessing.RawArray("b", len(self.videos))
        self.report, self.epoch_seed = report, (0, 0)

    def __len__(self):
        return len(self.videos)

    @property
    def skipped(self):
        """Number of broken videos met so far, by this process and all its DataLoader workers."""
        return int(np.frombuffer(self.broken, dtype=np.int8).sum())

    def __getitem__(self, index):
        if not self.train:
            return None if self.broken[index] else self.try_load(index, None)
        failures = 0
        for i in (n % len(self) for n in range(index, index + len(self))):
            if self.broken[i]:
                continue
            item = self.try_load(i, np.random.default_rng([*self.epoch_seed, index, i]))
            if item is not None:
                return item
            failures += 1
            if failures == MAX_BROKEN_IN_A_ROW:
                raise VideoError(f"{self.root}: {failures} broken videos in a row from {self.videos[index]} on; "
                                 f"is the dataset intact?")
        raise VideoError(f"{self.root}: every video is broken")

    def try_load(self, i, rng):
        """(clip, label), or None for a broken video, which is then marked and reported."""
        try:
            return self.load(i, rng), self.labels[i]
        except VideoError as error:
            if not self.broken[i]:
                self.broken[i] = 1
                if self.report:
                    print(f"data: skipping broken video: {error}", file=sys.stderr, flush=True)
            return None

    def load(self, i, rng=None):
        path = self.videos[i]
        if self.train:
            frames = read_clip(path, lambda n: train_clip_indices(n, self.num_frames, self.stride, rng))
            return train_transform(frames, self.img_size, self.short_side, rng)
        return test_views(path, self.num_frames, self.stride, self.img_size, self.clips, self.crops)


def test_views(path, num_frames, stride, img_size, clips=10, crops=3):
    """The multi-view test input of one video: (clips * crops, 3, T, img_size, img_size)."""
    frames = read_clip(path, lambda n: multiview_clip_indices(n, num_frames, stride, clips))
    return multiview_transform(frames, img_size, crops)


def collate_readable(batch):
    """A test batch without its broken videos (None items): (views, labels, number dropped); views and labels
    are None when every video of the batch is broken."""
    readable = [item for item in batch if item is not None]
    return (*default_collate(readable), len(batch) - len(readable)) if readable else (None, None, len(batch))


# -----------------------------------------------------------------------------
# files: written whole or not at all


def atomic_write(path, write, mode="wb"):
    """write(f) into a temporary file beside `path`, flushed to disk, then renamed to `path`: a crash never
    leaves half a file. Permissions follow the umask, as for any file the user creates."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        os.unlink(tmp)
        if isinstance(error, OSError):  # name the file being written, not the temporary one
            raise OSError(error.errno, f"{path}: {(error.strerror or str(error)).lower()}") from None
        raise


def check_writable(path):
    """Raises OSError now if `path` could not be written later (an unwritable folder, or a folder at `path`)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a folder")
    except OSError as error:
        raise OSError(error.errno, f"{path}: cannot be written ({(error.strerror or str(error)).lower()})") from None


# -----------------------------------------------------------------------------
# synthetic dataset


@contextlib.contextmanager
def c_stderr_silenced():
    """Silence C-level stderr: OpenCV fprintf's a codec-tag notice for MJPEG in MP4 that no log level turns off."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def write_intra_video(path, frames_rgb, fps=25):
    """MJPEG in an .mp4: every frame coded on its own, so a frame decodes the same whatever came before it."""
    height, width = frames_rgb.shape[1:3]
    with c_stderr_silenced():
        writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise VideoError(f"{path}: OpenCV cannot write MJPEG video here")
    for frame in frames_rgb:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def synthetic_clip(rng, num_frames, size):
    """uint8 RGB (num_frames, size, size, 3): one bright object moving down over a plain dark background.
    The background is plain on purpose: over a colourful one, a ViT trained from scratch on a CPU spends
    its first thousand steps on the background and never finds the motion."""
    background = np.broadcast_to(rng.uniform(0, 60, 3).astype(np.uint8), (size, size, 3))
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    # One random zoom sets both size and speed: training crops magnify 1.09-1.47x (the paper's scale
    # augmentation), so zooms from 0.6 put the test views, which are not magnified, inside the training range.
    zoom = rng.uniform(0.6, 1.0)
    radius, travel = 0.15 * zoom * size, 0.7 * zoom * size  # travel over the video also sets the speed
    y0 = rng.uniform(radius, size - radius - travel)
    x = rng.uniform(radius, size - radius)
    square = rng.random() < 0.5
    fixed_point = lambda xy: np.round(np.asarray(xy) * 16).astype(np.int32)  # 4 fractional bits: smooth motion
    frames = np.repeat(background[None], num_frames, axis=0)
    for t, frame in enumerate(frames):
        progress = t / max(num_frames - 1, 1)
        centre = np.array([x, y0 + progress * travel])
        if square:
            corners = centre + radius * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
            cv2.fillPoly(frame, [fixed_point(corners)], colour, cv2.LINE_AA, 4)
        else:
            cv2.circle(frame, tuple(fixed_point(centre).tolist()), int(fixed_point(radius)), colour, -1, cv2.LINE_AA, 4)
    return frames


def make_synthetic(root, *, train_per_class=100, val_per_class=25, num_frames=32, size=96, seed=0):
    """Write a two-class temporal dataset in the folder layout; returns the class names ["down", "up"].

    Construction: for each pair k of a split, draw one clip X (synthetic_clip: a disk or square of random size
    and colour over a plain dark background, moving straight down by 42-70 % of the frame height, hence random
    speed) and write X as {split}/down/{k:04d}.mp4 and X played backwards as
    {split}/up/{k:04d}.mp4. The two videos of a pair hold the same frames, so the multiset of frames (and, as
    the sampling is symmetric under reversal, that of any sampled clip) says nothing about the class: a
    frame-wise model with temporal averaging is at chance by construction, only frame order tells the classes
    apart. Vertical rather than left/right motion because training flips frames horizontally. Frames are coded
    as MJPEG (intra-only): inter-frame codecs such as mp4v leave direction-dependent artefacts in each frame.

    Deterministic given `seed`. Reuses `root` if it already holds a dataset made with the same settings;
    writes to a temporary folder renamed into place, so an interrupted run leaves nothing half-written.
    """
    root = os.path.abspath(os.fspath(root))
    settings = dict(train_per_class=train_per_class, val_per_class=val_per_class, num_frames=num_frames,
                    size=size, seed=seed, classes=list(SYNTHETIC_CLASSES), version=SYNTHETIC_VERSION)
    marker = os.path.join(root, "synthetic.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return list(SYNTHETIC_CLASSES)
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root}: exists and is not a synthetic dataset made with these settings; "
                              f"remove it or choose another folder")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    for leftover in glob.glob(os.path.join(os.path.dirname(root), ".synthetic-*")):  # of a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=".synthetic-", dir=os.path.dirname(root))
    try:
        rng = np.random.default_rng(seed)
        with tqdm(total=2 * (train_per_class + val_per_class), desc="synthetic videos", leave=False) as bar:
            for split, pairs in (("train", train_per_class), ("val", val_per_class)):
                for name in SYNTHETIC_CLASSES:
                    os.makedirs(os.path.join(staging, split, name))
                for k in range(pairs):
                    clip = synthetic_clip(rng, num_frames, size)
                    write_intra_video(os.path.join(staging, split, "down", f"{k:04d}.mp4"), clip)
                    write_intra_video(os.path.join(staging, split, "up", f"{k:04d}.mp4"), clip[::-1])
                    bar.update(2)
        with open(os.path.join(staging, "synthetic.json"), "w") as f:
            json.dump(settings, f)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(SYNTHETIC_CLASSES)


# -----------------------------------------------------------------------------
# pre-resizing


def resized_shape(height, width, short_side):
    scale = short_side / min(height, width)
    even = lambda n: max(2, int(round(n * scale / 2)) * 2)  # MPEG-4 wants even sizes
    return even(height), even(width)


def resize_video(source, target_stem, short_side):
    """Write target_stem + '.mp4' (mp4v) with the short side at `short_side`; smaller videos are copied as they are."""
    capture, _ = open_video(source)
    try:
        height, width = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        if min(height, width) <= short_side:
            target = target_stem + os.path.splitext(source)[1]
            partial = os.path.join(os.path.dirname(target), "." + os.path.basename(target))
            shutil.copyfile(source, partial)
            os.replace(partial, target)
            return
        new_height, new_width = resized_shape(height, width, short_side)
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        target = target_stem + ".mp4"
        partial = os.path.join(os.path.dirname(target), "." + os.path.basename(target))  # hidden: never scanned
        writer = cv2.VideoWriter(partial, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, (new_width, new_height))
        written = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            writer.write(cv2.resize(frame, (new_width, new_height), interpolation=cv2.INTER_AREA))
            written += 1
        writer.release()
        if written == 0:
            os.remove(partial)
            raise VideoError(f"{source}: no frame could be decoded (unreadable video stream)")
        os.replace(partial, target)
    finally:
        capture.release()


def resize_job(job):
    """Worker-side wrapper: returns an error message instead of raising, so one bad video never stops the pool."""
    source, target_stem, short_side = job
    try:
        resize_video(source, target_stem, short_side)
    except VideoError as error:
        return str(error)
    return None


def resize_dataset(source_root, target_root, short_side, workers):
    """Copy a dataset, same layout, videos re-encoded with their short side at `short_side`; other files copied.

    Resumable: videos already in the target are skipped (they are written under a hidden name, then renamed).
    """
    source_root, target_root = os.path.abspath(source_root), os.path.abspath(target_root)
    if not os.path.isdir(source_root):
        raise ValueError(f"{source_root}: dataset folder not found")
    if short_side < 2:
        raise ValueError(f"--short-side must be at least 2, got {short_side}")
    if target_root == source_root or target_root.startswith(source_root + os.sep):
        raise ValueError(f"{target_root}: the target must not be inside the source folder {source_root}")
    jobs = []
    for folder, subfolders, names in os.walk(source_root):
        subfolders.sort()
        out_folder = os.path.join(target_root, os.path.relpath(folder, source_root))
        os.makedirs(out_folder, exist_ok=True)
        for name in sorted(names):
            source = os.path.join(folder, name)
            if not is_video(name):
                if not name.startswith(".") and not os.path.exists(os.path.join(out_folder, name)):
                    shutil.copy2(source, os.path.join(out_folder, name))
                continue
            stem = os.path.join(out_folder, os.path.splitext(name)[0])
            if not (os.path.exists(stem + ".mp4") or os.path.exists(os.path.join(out_folder, name))):
                jobs.append((source, stem, short_side))
    failures = []
    with multiprocessing.Pool(max(1, workers)) as pool:
        for failure in tqdm(pool.imap_unordered(resize_job, jobs), total=len(jobs), desc="resizing videos"):
            if failure:
                failures.append(failure)
                tqdm.write(f"data: skipping broken video: {failure}", file=sys.stderr)
    print(f"resized {len(jobs) - len(failures)} videos into {target_root} ({len(failures)} broken, skipped)")
    return failures


# -----------------------------------------------------------------------------
# benchmark


def naive_train_clip(path, num_frames, stride, size):
    """The loop data.py replaces: decode and convert every frame, then pick the clip."""
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    indices = train_clip_indices(len(frames), num_frames, stride)
    return train_transform(np.stack([frames[i] for i in indices]), size)


def benchmark(root, split, workers, clips, size, num_frames, stride):
    dataset = KineticsDataset(root, split, train=True, num_frames=num_frames, stride=stride, size=size)
    order = torch.randperm(len(dataset)).tolist()
    paths = [dataset.videos[order[i % len(order)]] for i in range(clips)]
    start = time.perf_counter()
    for path in tqdm(paths, desc="naive decode-every-frame", leave=False):
        naive_train_clip(path, num_frames, stride, size)
    naive = clips / (time.perf_counter() - start)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=clips + 1)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers)
    batches = iter(loader)
    next(batches)  # not timed: worker start-up
    start = time.perf_counter()
    for _ in tqdm(range(clips), desc="data.py", leave=False):
        next(batches)
    ours = clips / (time.perf_counter() - start)
    print(f"{root} ({split}, {num_frames}x{stride}, {size}px crops): naive decode-every-frame {naive:.1f} clips/s, "
          f"data.py with {workers} worker(s) {ours:.1f} clips/s ({ours / naive:.1f}x)")


# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    parser = argparse.ArgumentParser(description="Kinetics video data tools for MSCA")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--make-synthetic", metavar="DIR", help="write the synthetic temporal dataset to DIR")
    mode.add_argument("--resize", nargs=2, metavar=("SRC", "DST"), help="write a copy of SRC with smaller videos to DST")
    mode.add_argument("--benchmark", metavar="ROOT", help="print training clips/s for the dataset at ROOT")
    parser.add_argument("--seed", type=int, default=0, help="--make-synthetic: random seed")
    parser.add_argument("--short-side", type=int, default=320, help="--resize: short side in pixels")
    parser.add_argument("--workers", type=int, default=None,
                        help="--resize: processes (default: all cores); --benchmark: DataLoader workers (default 1)")
    parser.add_argument("--split", default="train", help="--benchmark: split folder")
    parser.add_argument("--clips", type=int, default=40, help="--benchmark: clips to time")
    parser.add_argument("--size", type=int, default=224, help="--benchmark: crop size")
    parser.add_argument("--frames", type=int, default=8, help="--benchmark: frames per clip")
    parser.add_argument("--stride", type=int, default=32, help="--benchmark: frame stride")
    args = parser.parse_args(argv)
    try:
        if args.make_synthetic:
            classes = make_synthetic(args.make_synthetic, seed=args.seed)
            print(f"synthetic dataset with classes {classes} in {args.make_synthetic}")
        elif args.resize:
            resize_dataset(*args.resize, args.short_side, args.workers or os.cpu_count() or 1)
        else:
            benchmark(args.benchmark, args.split, 1 if args.workers is None else args.workers, args.clips, args.size,
                      args.frames, args.stride)
    except (VideoError, ValueError, OSError) as error:
        sys.exit(f"data.py: {error}")


if __name__ == "__main__":
    main()
