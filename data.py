"""The loader the paper describes (Sec. 4.1): Kinetics-style videos read with OpenCV, clips
sampled and augmented as the paper does, the multi-view test input, broken videos survived.
Layouts: root/{split}/{class}/<video> folders, a Kinetics CSV, or a list file with classes.txt
(prepare.py --lists). Indexed MJPEG .avi files (prepare.py --resize) are read by OpenCV's seek: a
clip costs its 8 JPEG decodes; others (H.264) are decoded forward by FFmpeg up to the clip's last
frame: FFmpeg's seek is not frame-exact for every codec, nor cheaper with keyframes 250 apart."""
import contextlib
import csv
import multiprocessing
import os
import re
import shutil
import sys
import tempfile

# data.py reports a broken video once, by name: not OpenCV's and FFmpeg's warning per bad packet
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, default_collate

cv2.setNumThreads(1)  # one thread per DataLoader worker: the workers are the parallelism
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv")
FLIP_PROB, JITTER_PROB = 0.5, 0.1
MAX_BROKEN_IN_A_ROW = 32  # this many broken videos in a row: the dataset is broken, not a file
WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # 'turn_left', 'Turning Left', 'SwipingLeft'
SIDES = {"left": "right", "right": "left"}
MAX_UNNAMED_CLASSES = 100_000  # without classes.txt, a larger label is a typo, not a dataset


# the dataset
class KineticsDataset(Dataset):
    """(video, label) items of root/{split}/{class}/<video> folders or of an annotation list; the
    video float32 in [-1, 1], train (3, T, size, size), test (clips * crops, 3, T, size, size).
    A broken video is reported once (when `report`) and marked in `broken`, shared with the workers
    so that none decodes it again; training takes the next good video, a test item is None. Item
    i's augmentation draws from a generator seeded with (*epoch_seed, i, video) alone (not workers,
    ranks, or which videos broke before), so that a run resumes exactly."""

    def __init__(self, root, split="train", *, train=None, annotations=None, num_frames=8,
                 stride=32, img_size=224, clips=10, crops=3, short_side=(224, 330), report=True,
                 sampling="dense"):
        sizes = dict(num_frames=num_frames, stride=stride, img_size=img_size, clips=clips,
                     crops=crops)
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KineticsDataset: {name}={value!r}: must be a positive integer")
        if min(scaled_short_side(short_side, img_size)) < 1:
            raise ValueError(f"KineticsDataset: short_side={list(short_side)} (--short-side) "
                             f"scales to less than 1 pixel for img_size={img_size}")
        self.root, self.short_side, self.report = os.fspath(root), short_side, report
        self.train = split == "train" if train is None else train
        self.num_frames, self.stride, self.img_size, self.clips, self.crops = sizes.values()
        source = os.fspath(annotations or os.path.join(self.root, split))  # of the class names
        layout = (folder_layout(self.root, split) if annotations is None
                  else listed_layout(self.root, split, source))
        self.videos, self.labels, self.classes = layout
        self.sampling, self.flipped_label = sampling, flip_partners(self.classes, source)
        if not self.videos:
            raise ValueError(f"{source}: no videos found ({', '.join(VIDEO_EXTENSIONS)})")
        # shared with the DataLoader workers, without a lock: 'spawn' workers could not receive one.
        self.broken = multiprocessing.RawArray("b", len(self.videos))
        self._epoch_seed = multiprocessing.RawArray("q", 2)

    def set_epoch(self, seed, epoch):
        """Seeds the coming epoch's augmentation, in memory that persistent workers share."""
        self._epoch_seed[:] = [seed, epoch]

    @property
    def epoch_seed(self):
        """(seed, epoch) of the last set_epoch, (0, 0) before one."""
        return tuple(self._epoch_seed)

    def __len__(self):
        return len(self.videos)

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
                raise VideoError(f"{self.root}: {failures} broken videos in a row "
                                 f"from {self.videos[index]} on")
        raise VideoError(f"{self.root}: every video is broken")

    def try_load(self, i, rng):
        """(clip, label), or None for a broken video, which is then marked and reported."""
        try:
            if not self.train:
                return test_views(self.videos[i], self.num_frames, self.stride, self.img_size,
                                  self.clips, self.crops, self.sampling), self.labels[i]
            if self.sampling == "uniform":
                frames = read_clip(self.videos[i], lambda n: uniform_train_indices(
                    n, self.num_frames, rng))
            else:
                frames = read_clip(self.videos[i], lambda n: train_clip_indices(
                    n, self.num_frames, self.stride, rng))
            partner = self.flipped_label[self.labels[i]]
            video, flipped = train_transform(frames, self.img_size, self.short_side, rng,
                                             partner is not None)
            return video, partner if flipped else self.labels[i]
        except VideoError as error:
            if not self.broken[i] and self.report:
                print(f"data: skipping broken video: {error}", file=sys.stderr, flush=True)
            self.broken[i] = 1
            return None

    def sync_broken(self, device):
        """How many broken videos are known. With torch.distributed, each rank first learns those
        of all ranks (none decodes them again) and, when it reports, prints the ones new to it."""
        flags = np.frombuffer(self.broken, dtype=np.int8)
        if dist.is_initialized():
            merged = torch.from_numpy(flags.astype(np.int32)).to(device)
            dist.all_reduce(merged, op=dist.ReduceOp.MAX)
            merged = merged.cpu().numpy()
            for i in np.flatnonzero(merged > flags) if self.report else []:
                print(f"data: skipping broken video: {self.videos[i]} (found by another process)",
                      file=sys.stderr)
            flags[:] = merged
        return int(flags.sum())


def test_views(path, num_frames, stride, img_size, clips=10, crops=3, sampling="dense"):
    """The multi-view test input of one video: (clips * crops, 3, T, img_size, img_size)."""
    if sampling == "uniform":
        frames = read_clip(path, lambda n: uniform_clip_indices(n, num_frames, clips))
    else:
        frames = read_clip(path, lambda n: multiview_clip_indices(n, num_frames, stride, clips))
    return multiview_transform(frames, img_size, crops)


def collate_readable(batch):
    """A test batch less its broken (None) items: (views, labels, dropped), views None if all."""
    readable = [item for item in batch if item is not None]
    if not readable:
        return None, None, len(batch)
    return (*default_collate(readable), len(batch) - len(readable))


# dataset layouts
def is_video(path):
    return not os.path.basename(path).startswith(".") and path.lower().endswith(VIDEO_EXTENSIONS)


def walk_files(directory):
    """Sorted paths of the files under `directory`, but hidden ones (unfinished writes). Symlinked
    files count, symlinked folders are not entered: one linking to a folder above would loop."""
    found = []
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [os.path.join(folder, name) for name in names if not name.startswith(".")]
    return sorted(found)


def folder_layout(root, split):
    """Videos, labels, classes of root/{split}/{class}/<video>; the classes of train and `split`."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise ValueError(f"{split_dir}: folder not found (expected {root}/{split}/<class>/<video>, "
                         f"or pass --annotations, a CSV or list file)")
    folders = [path for path in (split_dir, os.path.join(root, "train")) if os.path.isdir(path)]
    classes = sorted({entry.name for folder in folders for entry in os.scandir(folder)
                      if entry.is_dir() and not entry.name.startswith(".")})
    found = [(path, label) for label, name in enumerate(classes)
             for path in walk_files(os.path.join(split_dir, name)) if is_video(path)]
    return [path for path, _ in found], [label for _, label in found], classes


def listed_layout(root, split, annotations):
    """Videos, labels, classes of a Kinetics CSV (label,youtube_id,time_start,time_end[,split]) or
    of an mmaction2 list ("relative/path label_index"), found on disk by name, any extension."""
    lines = read_text(annotations).splitlines()
    video_dir = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    kinetics = bool(lines) and "youtube_id" in lines[0]
    on_disk = {}  # by the name the annotations give a video, without its extension
    for path in reversed(list(filter(is_video, walk_files(video_dir)))):
        listed = os.path.basename(path) if kinetics else os.path.relpath(path, video_dir)
        on_disk[os.path.splitext(listed)[0]] = path
    rows, classes = (kinetics_rows(lines, split, annotations) if kinetics
                     else list_rows(lines, annotations))
    labels = {}
    for key, label in rows:
        if labels.setdefault(key, label) != label:
            raise ValueError(f"{annotations}: {key} is listed with two labels")
    if len(labels) < len(rows):
        print(f"data: dropped {len(rows) - len(labels)} repeated rows of {annotations}",
              file=sys.stderr)
    rows = list(labels.items())
    found = [(on_disk[key], label) for key, label in rows if key in on_disk]
    if not found:
        raise ValueError(f"{annotations}: none of its {len(rows)} videos of split {split!r} "
                         f"is under {video_dir}")
    if len(found) < len(rows):
        print(f"data: {len(rows) - len(found)} of {len(rows)} videos listed in {annotations} are "
              f"missing under {video_dir}; using the {len(found)} found", file=sys.stderr)
    return [path for path, _ in found], [label for _, label in found], classes


def kinetics_rows(lines, split, annotations):
    """[(video name, label)] of a Kinetics CSV's rows of `split`, and the sorted classes."""
    reader = csv.DictReader(lines)
    if not {"label", "youtube_id", "time_start", "time_end"} <= set(reader.fieldnames):
        raise ValueError(f"{annotations}: a Kinetics CSV needs the columns "
                         f"label,youtube_id,time_start,time_end")
    wanted = {split, "validate", "validation"} if split == "val" else {split}  # Kinetics: either
    rows, splits = [], set()
    try:  # the videos: {youtube_id}_{start:06d}_{end:06d}.<any extension>
        for r in reader:
            splits.add(repr(r.get("split")))
            if r.get("split", split) in wanted:
                rows.append((f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_"
                             f"{int(float(r['time_end'])):06d}", r["label"]))
    except (TypeError, ValueError):
        raise ValueError(f"{annotations}: line {reader.line_num}: "
                         f"time_start/time_end are not numbers") from None
    if splits and not rows:
        raise ValueError(f"{annotations}: no row of split {split!r}; its split column holds "
                         + ", ".join(sorted(splits)))
    classes = sorted({label for _, label in rows})
    return [(key, classes.index(label)) for key, label in rows], classes


def list_rows(lines, annotations):
    """[(relative path without extension, label)] of an mmaction2 list, and its classes: those of
    classes.txt beside it, else "0", "1", ... up to the largest label, below MAX_UNNAMED_CLASSES."""
    names, classes = os.path.join(os.path.dirname(annotations), "classes.txt"), None
    limit, bound = MAX_UNNAMED_CLASSES, f"without a {names}"
    if os.path.isfile(names):  # prepare.py --lists writes it
        classes = [line.strip() for line in read_text(names).splitlines() if line.strip()]
        check_names(classes, names)
        limit, bound = len(classes), f"the classes of {names}"
    rows = [line.rsplit(maxsplit=1) for line in lines]
    bad = next((n for n, row in enumerate(rows, 1) if row and (
        len(row) != 2 or not re.fullmatch("[0-9]+", row[1]) or int(row[1]) >= limit)), None)
    if bad:
        raise ValueError(f"{annotations}: line {bad}: got {lines[bad - 1].strip()!r}, not "
                         f"'relative/path label' of a label below {limit} ({bound})")
    rows = [(os.path.normpath(os.path.splitext(path)[0]), int(label)) for path, label in
            filter(None, rows)]
    if classes is None:
        classes = [str(i) for i in range(max((label for _, label in rows), default=-1) + 1)]
    return rows, classes


def check_names(classes, source):
    """Refuses a class named twice, even in another case (flips match sides in any case)."""
    seen = {}
    for name in classes:
        if name.lower() in seen:
            raise ValueError(f"{source}: classes {seen[name.lower()]!r} and {name!r} are one name "
                             "twice (case aside)")
        seen[name.lower()] = name


def side_key(name, swap=False):
    """`name`, its words left and right (any case and spelling) lower-cased, swapped if `swap`."""
    sides = SIDES if swap else {side: side for side in SIDES}
    return WORDS.sub(lambda word: sides.get(word[0].lower(), word[0]), name)


def flip_partners(classes, source="the class names"):
    """Label -> the label of its clips flipped horizontally: the class of its name with left and
    right swapped (itself without either), None (never flipped) if none; `source`: for errors."""
    check_names(classes, source)
    index = {side_key(name): label for label, name in enumerate(classes)}
    return [index.get(side_key(name, swap=True)) for name in classes]


def describe_flips(classes):
    """The start line on flips, "" when no class names a side (Kinetics)."""
    partners = flip_partners(classes)
    pairs = [f"'{classes[a]}' <-> '{classes[b]}'" for a, b in enumerate(partners) if (b or 0) > a]
    never = [f"'{name}'" for name, partner in zip(classes, partners) if partner is None]
    if not pairs and not never:
        return ""
    return (f"flips swap the labels of {', '.join(pairs) or 'no pair'}; never flipped (no "
            f"partner): {', '.join(never) or 'none'}")


# sampling: every random number from the generator passed in (KineticsDataset.__getitem__)
def fitting_stride(video_frames, num_frames, stride):
    """The largest stride <= `stride` whose clip fits in the video; 0 when stride 1 does not."""
    return min(stride, (video_frames - 1) // max(num_frames - 1, 1))


def train_clip_indices(video_frames, num_frames, stride, rng):
    """`num_frames` frames `stride` apart from a uniformly random start."""
    step = fitting_stride(video_frames, num_frames, stride)
    if step == 0:  # a video shorter than the clip: every frame, in order, some repeated
        return np.arange(num_frames) * video_frames // num_frames
    return rng.integers(0, video_frames - step * (num_frames - 1)) + step * np.arange(num_frames)


def multiview_clip_indices(video_frames, num_frames, stride, clips):
    """(clips, num_frames) indices as mmaction2's SampleFrames(test_mode=True) places them today:
    clips evenly from the first to the last offset, as PySlowFast (one clip: the middle); indices
    past a short video loop. mmaction2 0.x and the authors' code placed them otherwise."""
    max_offset = max(video_frames - ((num_frames - 1) * stride + 1), 0)
    offsets = np.array([max_offset // 2])
    if clips > 1:  # np.round as mmaction2: half to even
        offsets = np.round(np.arange(clips) * max_offset / (clips - 1)).astype(np.int64)
    return (offsets[:, None] + stride * np.arange(num_frames)) % video_frames


def uniform_train_indices(video_frames, num_frames, rng):
    """TSN's segments: the video cut into `num_frames` equal segments, a random frame of each."""
    position = (np.arange(num_frames) + rng.random(num_frames)) * video_frames / num_frames
    return np.minimum(position.astype(np.int64), video_frames - 1)  # rounding may reach the end


def uniform_clip_indices(video_frames, num_frames, clips):
    """(clips, num_frames): clip c takes frame floor(F / T * (j + (c + 0.5) / C)) of segment j."""
    j, c = np.arange(num_frames), np.arange(clips)[:, None]
    return np.floor(video_frames / num_frames * (j + (c + 0.5) / clips)).astype(np.int64)


# frame reading
class VideoError(Exception):
    """A video that cannot be decoded as asked, naming the file; `decodable`: the frames that do."""

    def __init__(self, message, decodable=0):
        super().__init__(message)
        self.decodable = decodable


def open_video(path):
    """(capture, header's frame count or 0, seekable): OpenCV's MJPEG reader, else FFmpeg."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file")
    # only a whole, indexed AVI: OpenCV's parser prints its own errors raw for others
    if avi_index_size(path) > 0:
        capture = cv2.VideoCapture(path, cv2.CAP_OPENCV_MJPEG)
        if capture.isOpened():
            return capture, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), True
    # one decoding thread: FFmpeg's own threads would oversubscribe the DataLoader workers' cores
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        raise VideoError(f"{path}: not a video OpenCV can open "
                         f"(unknown format, or damaged or missing header)")
    return capture, max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0), False


def avi_index_size(path):
    """Bytes of the idx1 index of a whole AVI (its RIFF header counts the file); 0 for others."""
    try:
        with open(path, "rb") as f:
            riff, size = f.read(12), os.fstat(f.fileno()).st_size
            whole = riff[8:] == b"AVI " and int.from_bytes(riff[4:8], "little") + 8 == size
            chunk = f.read(8) if whole else b""
            while chunk[:4] not in (b"idx1", b""):  # top-level chunks: id, length, even-padded data
                f.seek((int.from_bytes(chunk[4:8], "little") + 1) // 2 * 2, os.SEEK_CUR)
                chunk = f.read(8)
    except OSError as error:
        raise VideoError(f"{path}: cannot be read ({os_reason(error)})") from None
    return int.from_bytes(chunk[4:8], "little") if len(chunk) == 8 else 0


def decode_frames(capture, path, indices, header_frames, seekable):
    """RGB frames `indices` (any order, repeats allowed), each decoded once: seeking (past its index
    OpenCV's reader repeats the last frame), or in one forward walk, grabbing frames between."""
    frames, position = {}, 0  # position: the frame the walking decoder gives next
    for target in np.unique(indices):
        if seekable:
            decodable = header_frames
            found = target < header_frames and capture.set(cv2.CAP_PROP_POS_FRAMES, int(target))
        else:
            while position < target and capture.grab():
                position += 1
            decodable, found = position, position == target
            position += 1
        ok, bgr = False, None
        if found:
            ok, bgr = capture.read()
        if not ok:
            raise missing_frame(path, target, decodable, header_frames)
        frames[int(target)] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.stack([frames[int(i)] for i in np.asarray(indices).reshape(-1)])


def missing_frame(path, target, decodable, header_frames):
    """The VideoError of a frame `target` that does not decode, where `decodable` frames do."""
    if not decodable:
        return VideoError(f"{path}: no frame could be decoded", decodable)
    message = f"{path}: frame {target} asked for, but the video has {decodable} frames"
    if decodable < header_frames:
        message += f" where its header says {header_frames} (truncated?)"
    return VideoError(message, decodable)


def read_clip(path, choose_indices):
    """Frames at choose_indices(frame count), an int array of any shape: indices.shape + (H, W, 3).
    FFmpeg only estimates some lengths: when the stream ends early (a header without a count reads
    as endless), the indices are chosen again for the frames that did decode."""
    capture, header_frames, seekable = open_video(path)
    try:
        indices = choose_indices(header_frames or 1 << 40)
        clip = decode_frames(capture, path, indices, header_frames, seekable)
    except VideoError as error:
        if not error.decodable:
            raise
        capture.release()
        capture = open_video(path)[0]
        indices = choose_indices(error.decodable)
        clip = decode_frames(capture, path, indices, header_frames, seekable)
    finally:
        capture.release()
    return clip.reshape(indices.shape + clip.shape[1:])


def read_frames(path, indices):
    """uint8 RGB (len(indices), H, W, 3): frame i is the i-th decoded frame. Raises VideoError."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return read_clip(os.fspath(path), lambda frames: indices)


# augmentation
def random_train_box(height, width, img_size, short_side, rng):
    """(y, x, side) of the square in the frame that equals: short side resized to a random S in
    `short_side` (for 224-pixel crops, scaled for others), then a random img_size square crop."""
    low, high = scaled_short_side(short_side, img_size)
    short = min(height, width)
    side = min(short, max(1, round(short * img_size / rng.integers(low, high + 1))))
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side


def scaled_short_side(short_side, img_size):
    return tuple(round(img_size * side / 224) for side in short_side)


def crop_resize(frames, box, img_size):
    """uint8 (T, H, W, 3) -> (T, img_size, img_size, 3): the square `box` resized to img_size."""
    y, x, side = box
    interpolation = cv2.INTER_AREA if side > img_size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame[y:y + side, x:x + side], (img_size, img_size),
                                interpolation=interpolation) for frame in frames])


def adjust_saturation(clip, factor):
    grey = clip @ np.array([0.299, 0.587, 0.114], np.float32)
    return grey[..., None] + factor * (clip - grey[..., None])


def adjust_hue(clip, shift):  # shift: a fraction of the hue circle
    hsv = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2HSV) for frame in clip])  # hue: degrees
    hsv[..., 0] = (hsv[..., 0] + 360 * shift) % 360
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_HSV2RGB) for frame in hsv])


# brightness, saturation, gamma, hue, with the ranges of TokenShift's code
JITTERS = [((0.5, 2.0), np.multiply), ((0.5, 3.0), adjust_saturation), ((0.8, 1.2), np.power),
           ((-0.5, 0.5), adjust_hue)]


def colour_jitter(clip, rng):
    """float32 RGB (T, H, W, 3) in [0, 1]: each jitter with p = JITTER_PROB, alike in all frames."""
    for (low, high), jitter in JITTERS:
        if rng.random() < JITTER_PROB:
            clip = np.clip(jitter(clip, rng.uniform(low, high)), 0, 1)
    return clip.astype(np.float32)


def to_tensor(clip):
    """float (T, H, W, 3) in [0, 1] -> float32 tensor (3, T, H, W) in [-1, 1]."""
    channels_first = np.ascontiguousarray(clip.transpose(3, 0, 1, 2), dtype=np.float32)
    return torch.from_numpy(channels_first) * 2 - 1


def train_transform(frames, img_size, short_side, rng, flippable=True):
    """(clip tensor, whether it was flipped); the flip is drawn even when not `flippable`, so that
    the draws after it stay those of every other video."""
    box = random_train_box(*frames.shape[1:3], img_size, short_side, rng)
    clip = crop_resize(frames, box, img_size)
    flipped = rng.random() < FLIP_PROB and flippable
    if flipped:
        clip = clip[:, :, ::-1]
    return to_tensor(colour_jitter(clip.astype(np.float32) / 255, rng)), flipped


def multiview_transform(clips, img_size, crops):
    """uint8 (clips, T, H, W, 3) -> (clips * crops, 3, T, img_size, img_size), clip-major: each
    clip cut into `crops` squares of the full short side along the long side (left/center/right)."""
    (height, width), side = clips.shape[2:4], min(clips.shape[2:4])
    slack = max(height, width) - side
    offsets = np.round(np.linspace(0, slack, crops) if crops > 1 else [slack / 2])
    boxes = [(0, int(x), side) if width >= height else (int(x), 0, side) for x in offsets]
    return torch.stack([to_tensor(crop_resize(clip, box, img_size) / 255.0)
                        for clip in clips for box in boxes])


# files: written whole or not at all
@contextlib.contextmanager
def atomic_path(path):
    """A hidden path beside `path` (.tmp-*, the extension kept) to write a file or folder to,
    renamed to `path` when the block ends, removed when it fails: never half a file."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.urandom(4).hex()}-{name}")
    try:
        yield tmp
        if os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # on disk before it takes the real name
        os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)  # a folder,
        with contextlib.suppress(OSError):
            os.remove(tmp)  # or a file
        # the error of the file being written names it, not tmp; that of a source, the source
        if isinstance(error, OSError) and (error.filename in (None, tmp) or error.filename2 == tmp):
            raise OSError(error.errno, f"{path}: {os_reason(error)}") from None
        raise


def os_reason(error):
    return (error.strerror or str(error)).lower()


def check_writable(path):
    """Raises OSError now if `path` could not be written later (unwritable folder, or a folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        if os.path.isdir(path):
            raise IsADirectoryError("is a folder")
    except OSError as error:
        raise OSError(f"{path}: cannot be written ({os_reason(error)})") from None


def read_text(path):
    """The text of a UTF-8 file, less a BOM (official annotations may have one); other bytes: one
    ValueError naming the file and line."""
    with open(path, "rb") as f:
        raw = f.read().removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not a text file (not UTF-8)") from None


def refuse(message):  # argparse's errors as ValueError: one line and exit status 2, as all errors
    raise ValueError(message)
