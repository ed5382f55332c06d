"""Datasets made from files, for data.py's loader to read: the prepared copy, the list files of
UCF101, HMDB51 and Something-Something-v2 from their official annotations, and the synthetic
task that only a temporal model can learn.

    python prepare.py --resize SRC DST [--short-side 288] [--quality 70] [--workers N]
    python prepare.py --lists {ucf101,hmdb51,ssv2} SRC OUT [--split 1|2|3]
    python prepare.py --make-synthetic DIR [--seed 0]

The prepared copy is indexed MJPEG .avi files: OpenCV's own reader seeks to any frame through
the index, so that a training clip costs its 8 JPEG decodes instead of the ~250 frames an H.264
video needs decoded forward. Every file is written whole or not at all; a stopped --resize goes
on where it stopped when run again.
"""
import argparse
import contextlib
import ctypes
import errno
import filecmp
import glob
import json
import os
import re
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed


def interrupted(signum, frame):  # while the imports below load: one line, not a traceback
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
    os._exit(130)  # nothing started yet that would need finishing


SIGINT_HANDLER = signal.signal(signal.SIGINT, interrupted)
import cv2
import numpy as np
from tqdm import tqdm

from data import (VideoError, atomic_path, avi_index_size, check_names, check_writable, is_video,
                  open_video, os_reason, read_text, refuse, walk_files)
signal.signal(signal.SIGINT, SIGINT_HANDLER)  # Python's own again: main() answers a Ctrl-C

# --resize's defaults: Kinetics-400's train set in 1.2 TB, 37 dB, 12x decord (docs/kinetics.md)
JPEG_QUALITY = 70
SHORT_SIDE = 288
PREPARED_VERSION = 2  # of prepare_video's files: a copy of another version is not resumed
SYNTHETIC_QUALITY = 90  # of the synthetic task's frames: another would change its cached files
SYNTHETIC_CLASSES = ("down", "up")
SYNTHETIC_VERSION = 3  # of synthetic_clip and its files: a cache of another version is not reused


# --resize: the prepared copy, indexed MJPEG .avi files
def write_mjpeg(path, frames, fps, quality=JPEG_QUALITY):
    """BGR `frames` as an indexed MJPEG .avi, every frame one JPEG of `quality` (1..100): OpenCV's
    reader seeks it exactly. FFmpeg's writer takes OpenCV's JPEGs (its own MJPEG encoder makes
    files 1.6x larger and slower to decode), whose optimized Huffman tables make them 3% smaller
    for the same pixels and decoding time. Returns the count."""
    writer, count = None, 0
    for count, frame in enumerate(frames, 1):
        if writer is None:
            raw_jpegs = [cv2.VIDEOWRITER_PROP_RAW_VIDEO, 1, cv2.VIDEOWRITER_PROP_KEY_INTERVAL, 1]
            writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                     frame.shape[1::-1], raw_jpegs)
            if not writer.isOpened():
                raise OSError(errno.EIO, "OpenCV cannot write an MJPEG .avi here", path)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
        jpeg = cv2.imencode(".jpg", frame, params)[1]
        writer.write(jpeg.reshape(1, -1))
    if writer is not None:
        writer.release()
    return count


def shrink(frame, short_side):
    scale = short_side / min(frame.shape[:2])
    if scale < 1:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return frame


def prepare_video(job):
    """job (source, target, short_side, quality): write `target` (.avi), every frame of `source`
    shrunk to `short_side`, JPEGs of `quality`, and read it back. Returns (broken, message to
    print), a broken video reported, not raised: a pool goes on. A write that fails raises
    OSError."""
    source, target, short_side, quality = job
    capture = None
    try:
        with atomic_path(target) as partial:
            capture, header_frames = open_video(source)[:2]
            frames = (shrink(frame, short_side) for _, frame in iter(capture.read, (False, None)))
            written = write_mjpeg(partial, frames, capture.get(cv2.CAP_PROP_FPS) or 30.0,
                                  quality)
            if not written:
                raise VideoError(f"{source}: no frame could be decoded")
            check_written(partial, written)
    except VideoError as error:
        return True, f"skipping broken video: {error}"
    finally:
        if capture is not None:
            capture.release()
    if written < header_frames:
        return False, (f"{source}: {written} frames decode where its header says "
                       f"{header_frames} (truncated?); prepared those")
    return False, None


def check_written(path, count):
    """Raises OSError unless OpenCV's reader seeks all `count` frames of `path`: cv2.VideoWriter
    says nothing when the disk fills up."""
    found, last = 0, False
    if avi_index_size(path):
        capture, found, seekable = open_video(path)
        last = seekable and capture.set(cv2.CAP_PROP_POS_FRAMES, count - 1) and capture.read()[0]
        capture.release()
    if found != count or not last:
        raise OSError(errno.EIO, f"{found} of its {count} frames read back (disk full?)", path)


def resize_dataset(source_root, target_root, short_side, workers, quality=JPEG_QUALITY):
    """The prepared copy: the same layout, each video an MJPEG .avi of short side `short_side` and
    JPEG `quality`, other files copied, the settings in target_root/prepared.json. Resumable: a
    video whose .avi exists is skipped (atomic_path wrote it once prepare_video read it back)."""
    source_root, target_root = os.path.realpath(source_root), os.path.realpath(target_root)
    inside = os.path.commonpath([source_root, target_root]) == source_root
    if not os.path.isdir(source_root) or short_side < 2 or inside:
        raise ValueError(f"--resize {source_root} {target_root}: the source must be a folder, "
                         f"the target outside it (symlinks resolved), and --short-side at least 2")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality {quality}: a JPEG quality is 1..100")
    remove_leftovers(target_root)
    record_settings(target_root, dict(short_side=short_side, mjpeg_quality=quality,
                                      version=PREPARED_VERSION))
    jobs = plan_copy(source_root, target_root, (short_side, quality))
    try:
        results = run_jobs(jobs, workers)
    finally:
        remove_leftovers(target_root)  # of workers a failure stopped, or a kill
    failures = [message for broken, message in results if broken]
    for message in filter(None, (message for _, message in results)):
        print(f"data: {message}", file=sys.stderr)
    print(f"prepared {len(jobs) - len(failures)} videos in {target_root} "
          f"({len(failures)} broken, skipped)")
    return failures


def run_jobs(jobs, workers):
    """[prepare_video(job)] in `workers` processes. On a failure or Ctrl-C the videos not begun are
    cancelled and those begun end, rather than be killed: multiprocessing.Pool's terminate() can
    kill a worker holding its result queue's lock, then wait for that lock forever."""
    with ProcessPoolExecutor(max(1, workers), initializer=quiet_worker) as pool:
        futures = [pool.submit(prepare_video, job) for job in jobs]
        try:
            with tqdm(as_completed(futures), total=len(jobs), desc="preparing") as done:
                return [future.result() for future in done]
        finally:
            pool.shutdown(cancel_futures=True)


def remove_leftovers(target_root):
    """Removes the partial files (atomic_path's) that killed or failed runs left in the copy."""
    pattern = os.path.join(glob.escape(target_root), "**", ".tmp-????????-*")
    for leftover in filter(os.path.isfile, glob.glob(pattern, recursive=True)):
        os.remove(leftover)


def record_settings(target_root, settings):
    """Records `settings` in a new copy; refuses a copy made with others, or not by --resize."""
    record, wanted = os.path.join(target_root, "prepared.json"), json.dumps(settings)
    if os.path.isfile(record):
        with open(record) as f:
            recorded = f.read().strip()
        if recorded != wanted:
            raise ValueError(f"{record}: the copy was prepared with {recorded}, not {wanted}: "
                             "resume it with those settings, or prepare another")
    elif os.path.isdir(target_root) and os.listdir(target_root):
        raise ValueError(f"{target_root}: not empty, and no prepared.json says how it was made")
    else:
        with atomic_path(record) as partial, open(partial, "w") as f:
            f.write(wanted)


def plan_copy(source_root, target_root, settings):
    """The jobs (source, avi, *settings) of the videos not yet prepared, once every other file is
    copied; refuses two videos that would be prepared as one .avi, and a target folder that
    cannot be written."""
    jobs, sources = [], {}
    for path in walk_files(source_root):
        target = os.path.join(target_root, os.path.relpath(path, source_root))
        avi = os.path.splitext(target)[0] + ".avi"
        if not is_video(path):
            if os.path.isfile(path) and target != os.path.join(target_root, "prepared.json"):
                with atomic_path(target) as partial:  # whole or not at all, again on a resume
                    shutil.copy2(path, partial)
                    if not filecmp.cmp(path, partial, shallow=False):
                        raise OSError(errno.EIO, f"the copy differs from {path}", partial)
        elif sources.setdefault(avi, path) != path:
            raise ValueError(f"{sources[avi]} and {path}: both would be prepared as {avi}")
        elif not os.path.exists(avi):
            jobs.append((path, avi, *settings))
    for avi in {os.path.dirname(job[1]): job[1] for job in jobs}.values():
        check_writable(avi)
    return jobs


def quiet_worker():
    """Ctrl-C is the parent's (it ends the pool); the parent's death ends the worker (on Linux)
    rather than leave it to fail writing to a closed pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


# --make-synthetic: a dataset only a temporal model can learn
def synthetic_clip(rng, num_frames, size):
    """uint8 RGB (num_frames, size, size, 3): one bright disk or square moving down over a plain
    dark background (over a colourful one, a ViT trained from scratch on a CPU spends its first
    thousand steps on the background)."""
    background = rng.uniform(0, 60, 3).astype(np.uint8)
    frames = np.broadcast_to(background, (num_frames, size, size, 3)).copy()
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    zoom = rng.uniform(0.6, 1.0)  # training magnifies 1-1.47x: test views fall in what it sees
    radius, travel = 0.15 * zoom * size, 0.7 * zoom * size  # travel over the video: the speed
    y0 = rng.uniform(radius, size - radius - travel)
    x, square = rng.uniform(radius, size - radius), rng.random() < 0.5
    def fixed_point(xy):  # 4 fractional bits: smooth motion
        return np.round(np.asarray(xy) * 16).astype(np.int32)
    for t, frame in enumerate(frames):
        centre = np.array([x, y0 + t / max(num_frames - 1, 1) * travel])
        if square:
            corners = centre + radius * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
            cv2.fillPoly(frame, [fixed_point(corners)], colour, cv2.LINE_AA, 4)
        else:
            cv2.circle(frame, tuple(fixed_point(centre).tolist()), int(fixed_point(radius)), colour,
                       -1, cv2.LINE_AA, 4)
    return frames


def make_synthetic(root, *, train_per_class=100, val_per_class=25, num_frames=32, size=96, seed=0):
    """A two-class dataset in the folder layout, reused if `root` holds one made with these
    settings; returns the classes. Pair k of a split is one clip X (synthetic_clip) as
    {split}/down/{k:04d}.avi and X backwards as {split}/up/{k:04d}.avi: the same frames (and the
    sampling is symmetric in time), so a frame-wise model with temporal averaging is at chance by
    construction. Vertical motion, as training flips frames horizontally; intra-only MJPEG, as
    inter-frame codecs leave direction-dependent artefacts in each frame."""
    root = os.path.abspath(os.fspath(root))
    settings = dict(train_per_class=train_per_class, val_per_class=val_per_class,
                    num_frames=num_frames, size=size, seed=seed, classes=list(SYNTHETIC_CLASSES),
                    version=SYNTHETIC_VERSION)
    with contextlib.suppress(OSError, ValueError), open(os.path.join(root, "synthetic.json")) as f:
        if json.load(f) == settings:
            return list(SYNTHETIC_CLASSES)
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root}: exists, and is not a synthetic dataset of these settings")
    killed = glob.glob(os.path.join(os.path.dirname(root), f".tmp-*-{os.path.basename(root)}"))
    for leftover in killed:
        shutil.rmtree(leftover, ignore_errors=True)
    rng = np.random.default_rng(seed)
    with atomic_path(root) as staging:
        for split, pairs in (("train", train_per_class), ("val", val_per_class)):
            for k in tqdm(range(pairs), desc=f"synthetic {split} videos", leave=False):
                clip = synthetic_clip(rng, num_frames, size)
                for name, frames in (("down", clip), ("up", clip[::-1])):
                    os.makedirs(os.path.join(staging, split, name), exist_ok=True)
                    bgr = (cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in frames)
                    write_mjpeg(os.path.join(staging, split, name, f"{k:04d}.avi"), bgr, 25,
                                SYNTHETIC_QUALITY)
        with open(os.path.join(staging, "synthetic.json"), "w") as f:
            json.dump(settings, f)
    return list(SYNTHETIC_CLASSES)


# --lists: list files from the official annotations of UCF101, HMDB51, Something-Something-v2
def parse_lines(path, parse):
    """[parse(line)] of the lines of `path` that are not blank, stripped (CRLF, trailing spaces)."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        try:
            rows += [parse(line.strip())] if line.strip() else []
        except (ValueError, KeyError, IndexError) as error:
            problem = f"{type(error).__name__} {error}"
            raise ValueError(f"{path}: line {number} {line.strip()!r} does not parse "
                             f"({problem})") from None
    return rows


def numbered_names(pairs, path, first):
    """The names of (number, name) pairs in the order of their numbers first, first + 1, ...;
    a number is digits [0-9] (a str or an int)."""
    if not pairs:
        raise ValueError(f"{path}: names no class")
    bad = next((n for n, _ in pairs if not re.fullmatch("[0-9]+", str(n))), None)
    if bad is not None:
        raise ValueError(f"{path}: class number {bad!r} is not a number [0-9]+")
    pairs = sorted((int(number), name) for number, name in pairs)
    if [number for number, _ in pairs] != list(range(first, first + len(pairs))):
        raise ValueError(f"{path}: the class numbers are not {first}..{first + len(pairs) - 1}")
    check_names([name for _, name in pairs], path)
    return [name for _, name in pairs]


def class_line(line):
    """(number, name) of a classInd.txt line "1 ApplyEyeMakeup"."""
    numbered = re.fullmatch(r"([0-9]+)\s+(\S+)", line)
    if not numbered:
        raise ValueError("expected 'number ClassName', a name without spaces")
    return numbered.groups()


def ucf101_lists(src, split):
    """(train, val, classes) of classInd.txt ("1 ApplyEyeMakeup"), trainlist0N.txt ("Class/v_Class_
    g08_c01.avi 1", 1-based) and testlist0N.txt (paths only, labelled by their folder: the file
    names of HandstandPushups/ spell HandStandPushups). Paths as listed, which is as on disk."""
    index_file = os.path.join(src, "classInd.txt")
    classes = numbered_names(parse_lines(index_file, class_line), index_file, 1)
    index = {name: label for label, name in enumerate(classes)}
    by_number = {str(label + 1): label for label in range(len(classes))}
    train = parse_lines(os.path.join(src, f"trainlist0{split}.txt"), lambda line: (
        line.rsplit(maxsplit=1)[0], by_number[line.rsplit(maxsplit=1)[1]]))
    val = parse_lines(os.path.join(src, f"testlist0{split}.txt"),
                      lambda line: (line, index[line.split("/")[0]]))
    return train, val, classes


def hmdb51_lists(src, split):
    """(train, val, classes) of <class>_test_split<N>.txt, lines "video.avi 1 ": 1 train, 2 test,
    0 unused; classes in name order (as mmaction2's label map; not the files' order, where
    climb_stairs_test... comes before climb_test...)."""
    suffix = f"_test_split{split}.txt"
    files = glob.glob(os.path.join(glob.escape(src), "*" + suffix))
    if not files:
        raise ValueError(f"{src}: no HMDB51 split files *{suffix}")
    by_name = {os.path.basename(path)[:-len(suffix)]: path for path in files}
    classes, train, val = sorted(by_name), [], []
    check_names(classes, src)

    def parse(line):
        video, code = line.rsplit(maxsplit=1)
        return video, {"0": [], "1": train, "2": val}[code]
    for label, name in enumerate(classes):
        for video, rows in parse_lines(by_name[name], parse):
            rows.append((f"{name}/{video}", label))
    return train, val, classes


def ssv2_lists(src, split):
    """(train, val, classes) of something-something-v2-labels.json ({"class name": "index"}),
    -train.json and -validation.json (lists of {"id", "label", "template", "placeholders"}): the
    class is the template without its brackets; the videos are <id>.webm."""
    if split != "1":
        raise ValueError(f"--split {split}: Something-Something-v2 has one split")
    paths = [os.path.join(src, f"something-something-v2-{part}.json")
             for part in ("labels", "train", "validation")]
    loaded = {}
    for path, kind in zip(paths, (dict, list, list)):
        try:
            loaded[path] = json.loads(read_text(path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        if not isinstance(loaded[path], kind):
            raise ValueError(f"{path}: a JSON {type(loaded[path]).__name__}, not a {kind.__name__}")
    classes = numbered_names([(n, name) for name, n in loaded[paths[0]].items()], paths[0], 0)
    index = {name: label for label, name in enumerate(classes)}
    lists = [[], []]
    for path, rows in zip(paths[1:], lists):
        for number, video in enumerate(loaded[path], 1):
            try:
                rows.append((f"{video['id']}.webm",
                             index[re.sub(r"[][]", "", video["template"])]))
            except (KeyError, TypeError) as error:
                raise ValueError(f"{path}: video {number}: no id, or a template not in "
                                 f"{paths[0]} ({type(error).__name__} {error})") from None
    return *lists, classes


LIST_READERS = {"ucf101": ucf101_lists, "hmdb51": hmdb51_lists, "ssv2": ssv2_lists}


def write_lists(dataset, src, out, split="1"):
    """OUT/train.txt and OUT/val.txt ("relative/path label", relative to the video folder) and
    OUT/classes.txt (line i: the name of label i), all read first; written all three or none."""
    if split not in ("1", "2", "3"):
        raise ValueError(f"--split {split}: UCF101 and HMDB51 have splits 1, 2 and 3")
    train, val, classes = LIST_READERS[dataset](src, split)
    texts = {os.path.join(out, "classes.txt"): "".join(f"{name}\n" for name in classes)}
    for name, rows in (("train", train), ("val", val)):
        if not rows:
            raise ValueError(f"{src}: no {name} videos in split {split}")
        texts[os.path.join(out, f"{name}.txt")] = "".join(f"{path} {label}\n"
                                                          for path, label in rows)
    write_together(texts)
    print(f"{dataset} split {split}: {len(classes)} classes, {len(train)} train / {len(val)} val "
          f"videos; {out}/train.txt, val.txt, classes.txt")


def write_together(texts):
    """Writes {path: text} all or none: each text is written to a hidden file beside its path,
    synced and read back before the first is renamed, so that a full disk leaves an older set
    as it was."""
    for path in texts:
        check_writable(path)  # a folder in the way is refused before any file changes
    hidden = {path: os.path.join(os.path.dirname(path), f".tmp-{os.urandom(4).hex()}-"
                                 + os.path.basename(path)) for path in texts}
    try:
        for path, text in texts.items():
            with open(hidden[path], "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if read_text(hidden[path]) != text:
                raise OSError(errno.EIO, "reads back other text")
        for path in texts:
            os.replace(hidden[path], path)
    except OSError as error:
        raise OSError(error.errno, f"{path}: cannot be written ({os_reason(error)})") from None
    finally:
        for partial in hidden.values():
            with contextlib.suppress(OSError):
                os.remove(partial)


# command line
def main(argv=None):
    parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = refuse
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--make-synthetic", metavar="DIR",
                      help="write the synthetic temporal dataset to DIR")
    mode.add_argument("--resize", nargs=2, metavar=("SRC", "DST"),
                      help="write the prepared copy of SRC to DST")
    mode.add_argument("--lists", nargs=3, metavar=("DATASET", "SRC", "OUT"),
                      help="list files of ucf101, hmdb51 or ssv2 from its annotations in SRC")
    parser.add_argument("--seed", type=int, default=0, help="--make-synthetic: random seed")
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE,
                        help=f"--resize: short side in pixels (default {SHORT_SIDE})")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY,
                        help=f"--resize: JPEG quality 1..100 (default {JPEG_QUALITY})")
    parser.add_argument("--workers", type=int, help="--resize: processes (default: all cores)")
    parser.add_argument("--split", default="1", help="--lists: 1, 2 or 3 (default 1)")
    try:
        args = parser.parse_args(argv)
        if args.make_synthetic:
            classes = make_synthetic(args.make_synthetic, seed=args.seed)
            print(f"synthetic classes {classes} in {args.make_synthetic}")
        elif args.resize:
            resize_dataset(*args.resize, args.short_side, args.workers or os.cpu_count() or 1,
                           args.quality)
        elif args.lists[0] not in LIST_READERS:
            refuse(f"--lists {args.lists[0]}: choose from {', '.join(LIST_READERS)}")
        else:
            write_lists(*args.lists, split=args.split)
    except (VideoError, ValueError, OSError) as error:
        print(f"prepare.py: error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # every file written is whole: the same command goes on
        print("prepare.py: interrupted; no partial file left", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
