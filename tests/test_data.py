"""Tests for data.py. Every video is written here with cv2.VideoWriter; facts are read back from the pixels."""

import colorsys
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import bench
import data
import prepare
from conftest import write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BITS = 8  # frame numbers up to 255 drawn as black/white blocks
BLOCK = 12


def numbered_frame(i, height=48, width=BITS * BLOCK):
    frame = np.full((height, width, 3), 128, np.uint8)
    for bit in range(BITS):
        frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (i >> bit) & 1 else 0
    return frame


def frame_number(frame):
    return sum(int(frame[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() > 127) << b for b in range(BITS))


def numbered_video(path, num_frames, fourcc="mp4v"):
    return write_video(path, [numbered_frame(i) for i in range(num_frames)], fourcc)


def level_video(path, num_frames, height, width):
    """Green = 8 * frame index everywhere (survives cropping and resizing), red = position along the long side."""
    long_side = max(height, width)
    ramp = np.linspace(0, 255, long_side).astype(np.uint8)
    red = np.broadcast_to(ramp[None, :] if width >= height else ramp[:, None], (height, width))
    frames = [np.stack([red, np.full((height, width), 8 * i, np.uint8), np.full((height, width), 64, np.uint8)], -1)
              for i in range(num_frames)]
    return write_video(path, frames)


def frame_levels(view):
    """(3, T, h, w) tensor in [-1, 1] -> frame indices encoded in green, and mean red (crop position)."""
    pixels = (view + 1) * 127.5
    return (pixels[1].mean((1, 2)) / 8).round().long().tolist(), pixels[0].mean().item()


def folder_dataset(root, videos_per_class=2, num_frames=12, classes=("b_class", "a_class"), split="train"):
    for name in classes:
        for k in range(videos_per_class):
            numbered_video(os.path.join(root, split, name, f"{k}.mp4"), num_frames)
    return str(root)


# ----------------------------------------------------------------------------- read_frames


def test_read_frames_is_frame_accurate_in_any_order_with_repeats(tmp_path):
    for fourcc, ext in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        path = numbered_video(tmp_path / f"n{ext}", 40, fourcc)
        indices = [17, 0, 39, 17, 3, 25, 3]
        frames = data.read_frames(path, indices)
        assert frames.shape == (7, 48, BITS * BLOCK, 3) and frames.dtype == np.uint8
        assert [frame_number(f) for f in frames] == indices


def every_frame(path, backend):
    """The reference: decode every frame, first to last, with `backend`; RGB."""
    capture, frames = cv2.VideoCapture(str(path), backend), []
    while (bgr := capture.read()[1]) is not None:
        frames.append(bgr[..., ::-1])
    return np.stack(frames)


@pytest.mark.parametrize("fourcc, ext, backend", [
    ("mp4v", ".mp4", cv2.CAP_FFMPEG),  # inter-frame codec: decoded forward
    ("MJPG", ".mp4", cv2.CAP_FFMPEG),  # intra-only, but not an .avi: decoded forward
    ("prepared", ".avi", cv2.CAP_OPENCV_MJPEG),  # the prepared copy: seeks through the AVI index
])
def test_read_frames_agrees_with_decoding_every_frame(tmp_path, fourcc, ext, backend):
    if fourcc == "prepared":
        numbered_video(tmp_path / "src" / "n.mp4", 60)
        assert prepare.resize_dataset(tmp_path / "src", tmp_path / "dst", short_side=48, workers=1) == []
        path = tmp_path / "dst" / "n.avi"
    else:
        path = numbered_video(tmp_path / f"n{ext}", 60, fourcc)
    reference = every_frame(path, backend)
    assert len(reference) == 60 and [frame_number(f) for f in reference] == list(range(60))
    indices = [59, 4, 11, 4, 33, 0, 58, 32]
    assert np.array_equal(data.read_frames(path, indices), reference[indices])


def test_read_frames_returns_rgb(tmp_path):
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:, :16] = (255, 0, 0)
    frame[:, 16:32] = (0, 255, 0)
    frame[:, 32:] = (0, 0, 255)
    path = write_video(tmp_path / "rgb.avi", [frame] * 3, "MJPG")
    decoded = data.read_frames(path, [1])[0].astype(int)
    for x, colour in ((8, (255, 0, 0)), (24, (0, 255, 0)), (40, (0, 0, 255))):
        assert np.abs(decoded[10:22, x - 4:x + 4].mean((0, 1)) - colour).max() < 30


@pytest.mark.parametrize("case, expected", [
    ("missing", "file not found"),
    ("empty", "empty file"),
    ("text", "not a video"),
    ("folder", "not a file"),
    ("truncated_mp4", "not a video"),
    ("truncated_avi", "truncated"),
    ("beyond_end", "the video has 10 frames"),
])
def test_read_frames_errors_name_the_file_and_the_problem(tmp_path, case, expected):
    path = str(tmp_path / f"{case}.mp4")
    if case == "empty":
        open(path, "wb").close()
    elif case == "text":
        with open(path, "w") as f:
            f.write("this is not a video\n" * 100)
    elif case == "folder":
        os.makedirs(path)
    elif case == "truncated_mp4":  # the index ('moov' atom) is written last: cut it off
        whole = open(numbered_video(tmp_path / "whole.mp4", 30), "rb").read()
        open(path, "wb").write(whole[: len(whole) // 2])
    elif case == "truncated_avi":  # opens, the header says 30 frames, the stream stops halfway
        path = str(tmp_path / "truncated.avi")
        whole = open(numbered_video(tmp_path / "whole.avi", 30, "MJPG"), "rb").read()
        open(path, "wb").write(whole[: len(whole) // 2])
    elif case == "beyond_end":
        numbered_video(path, 10)
    index = 25 if case == "truncated_avi" else 10
    with pytest.raises(data.VideoError) as error:
        data.read_frames(path, [0, index])
    assert path in str(error.value) and expected in str(error.value)


# ----------------------------------------------------------------------------- sampling


def test_training_clips_are_strided_and_cover_every_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(3000):
        indices = data.train_clip_indices(300, 8, 32, rng)
        assert list(np.diff(indices)) == [32] * 7
        starts.add(int(indices[0]))
    assert starts == set(range(300 - 7 * 32))  # 0 .. 75, every one reachable, nothing past the end


def test_short_videos_shrink_the_stride_then_repeat_frames():
    rng = np.random.default_rng(0)
    assert list(data.train_clip_indices(50, 8, 32, rng)) == list(range(0, 50, 7))[:8]  # stride 7 = 49 // 7 fits
    stride_one = data.train_clip_indices(10, 8, 32, rng)
    assert list(np.diff(stride_one)) == [1] * 7 and stride_one[-1] <= 9
    stretched = list(data.train_clip_indices(5, 8, 32, rng))
    assert stretched == sorted(stretched) and set(stretched) == {0, 1, 2, 3, 4}
    assert list(data.train_clip_indices(1, 8, 32, rng)) == [0] * 8
    assert (data.multiview_clip_indices(3, 8, 32, 10) <= 2).all()


def mmaction2_test_clips(video_frames, num_frames, stride, clips):
    """Today's mmaction2 SampleFrames(test_mode=True), frame by frame from its formulas: a span of
    (T - 1) * stride + 1, offsets round(k * max_offset / (clips - 1)) (Python's round: half to
    even, as np.round), one clip at max_offset // 2, indices past the end looped ('loop')."""
    max_offset = max(video_frames - ((num_frames - 1) * stride + 1), 0)
    rows = []
    for k in range(clips):
        offset = max_offset // 2
        if clips > 1:
            offset = round(k * max_offset / (clips - 1))
        rows.append([(offset + stride * j) % video_frames for j in range(num_frames)])
    return rows


def test_test_clips_are_placed_as_in_todays_mmaction2():
    for video_frames in (1, 3, 12, 50, 76, 225, 255, 256, 300, 301):
        for num_frames, stride, clips in ((8, 32, 10), (8, 32, 1), (8, 32, 3), (1, 1, 10),
                                          (4, 10, 2), (8, 3, 10)):
            got = data.multiview_clip_indices(video_frames, num_frames, stride, clips)
            assert got.tolist() == mmaction2_test_clips(video_frames, num_frames, stride, clips)
    # by hand, 300 frames, 8 x 32: span 225, max_offset 75, offsets 75 k / 9; the last clip ends on
    # the last frame
    indices = data.multiview_clip_indices(300, 8, 32, 10)
    assert indices[:, 0].tolist() == [0, 8, 17, 25, 33, 42, 50, 58, 67, 75]
    assert indices[-1, -1] == 299
    # one clip: the centre, not the first frame
    assert data.multiview_clip_indices(300, 8, 32, 1)[0, 0] == 37


# ----------------------------------------------------------------------------- augmentation


def test_training_crop_matches_the_papers_short_side_range():
    rng = np.random.default_rng(0)
    implied_short_sides = []
    for _ in range(2000):
        y, x, side = data.random_train_box(240, 320, 224, (224, 330), rng)
        assert 0 <= y <= 240 - side and 0 <= x <= 320 - side
        implied_short_sides.append(240 * 224 / side)  # short side the frame was resized to
    assert 224 <= min(implied_short_sides) < 227 and 326 < max(implied_short_sides) <= 332


def test_colour_jitter_naive_formulas():
    rng = np.random.default_rng(0)
    clip = rng.uniform(0, 1, (2, 4, 4, 3)).astype(np.float32)
    for r, g, b in clip.reshape(-1, 3)[:8]:
        grey = 0.299 * r + 0.587 * g + 0.114 * b
        expected = [grey + 2.0 * (c - grey) for c in (r, g, b)]  # colour_jitter clips to [0, 1] after each jitter
        assert np.allclose(data.adjust_saturation(np.array([[[[r, g, b]]]], np.float32), 2.0).ravel(), expected, atol=1e-5)
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected = colorsys.hsv_to_rgb((h + 0.25) % 1, s, v)
        assert np.allclose(data.adjust_hue(np.array([[[[r, g, b]]]], np.float32), 0.25).ravel(), expected, atol=1e-3)


def test_colour_jitter_probability_and_same_parameters_for_every_frame():
    rng = np.random.default_rng(0)
    frame = rng.uniform(0.1, 0.9, (1, 6, 6, 3)).astype(np.float32)
    clip = np.repeat(frame, 4, axis=0)
    unchanged = 0
    for _ in range(2000):
        jittered = data.colour_jitter(clip, rng)
        assert all(np.allclose(jittered[0], jittered[t], atol=1e-6) for t in range(1, 4))
        assert jittered.min() >= 0 and jittered.max() <= 1
        unchanged += np.allclose(jittered, clip, atol=1e-6)
    assert abs(unchanged / 2000 - 0.9 ** 4) < 0.04  # four jitters, each with p = 0.1


def test_horizontal_flip_about_half_the_time(tmp_path):
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :16] = (255, 0, 0)  # red left half, blue right half
    frame[:, 16:] = (0, 0, 255)
    write_video(tmp_path / "train" / "c" / "v.avi", [frame] * 4, "MJPG")
    dataset = data.KineticsDataset(tmp_path, num_frames=2, stride=1, img_size=16)
    flipped = 0
    for epoch in range(300):  # the augmentation of an item depends on (seed, epoch, item)
        dataset.set_epoch(0, epoch)
        flipped += dataset[0][0][0, :, :, 0].mean().item() < 0  # red channel of column 0
    assert 110 < flipped < 190


# ----------------------------------------------------------------------------- dataset items


def test_train_and_test_items_shapes_and_range(tmp_path):
    root = folder_dataset(tmp_path, num_frames=40)
    train = data.KineticsDataset(root, num_frames=4, stride=8, img_size=32)
    video, label = train[0]
    assert video.shape == (3, 4, 32, 32) and video.dtype == torch.float32 and label in (0, 1)
    assert video.min() >= -1 and video.max() <= 1 and video.min() < -0.9 and video.max() > 0.9
    test = data.KineticsDataset(root, "train", train=False, num_frames=4, stride=8, img_size=32)
    views, _ = test[0]
    assert views.shape == (30, 3, 4, 32, 32) and views.dtype == torch.float32
    assert views.min() >= -1 and views.max() <= 1
    assert data.KineticsDataset(root, "train", train=False, num_frames=4, img_size=32, clips=2, crops=1)[0][0].shape == (
        2, 3, 4, 32, 32)


def test_pixels_scale_to_minus_one_one(tmp_path):
    path = write_video(tmp_path / "val" / "c" / "v.avi", [np.full((32, 32, 3), (255, 0, 128), np.uint8)] * 3, "MJPG")
    views, _ = data.KineticsDataset(tmp_path, "val", num_frames=2, stride=1, img_size=16, clips=1, crops=1)[0]
    expected = torch.tensor([255, 0, 128]) / 127.5 - 1
    assert torch.allclose(views[0].mean((1, 2, 3)), expected, atol=0.06), path


@pytest.mark.parametrize("height, width", [(48, 96), (96, 48)])
def test_thirty_views_are_ten_clips_times_three_crops(tmp_path, height, width):
    num_frames, frames_per_clip, stride = 30, 4, 2
    level_video(tmp_path / "val" / "c" / "v.mp4", num_frames, height, width)
    views, _ = data.KineticsDataset(tmp_path, "val", num_frames=frames_per_clip, stride=stride, img_size=24)[0]
    assert views.shape == (30, 3, frames_per_clip, 24, 24)
    # 23: the first clip starts at 0, the last at 23
    max_offset = num_frames - (stride * (frames_per_clip - 1) + 1)
    for clip in range(10):
        start = round(clip * max_offset / 9)  # today's mmaction2
        positions = []
        for crop in range(3):
            indices, mean_red = frame_levels(views[clip * 3 + crop])
            assert indices == [start + stride * t for t in range(frames_per_clip)]
            positions.append(mean_red)
        # left/top, centre, right/bottom: the ramp along the long side averages to 1/4, 1/2, 3/4 of 255
        assert np.allclose(positions, [64, 128, 191], atol=8)


def test_tiny_videos_never_crash(tmp_path):
    numbered_video(tmp_path / "train" / "c" / "short.mp4", 3)
    for train in (True, False):
        dataset = data.KineticsDataset(tmp_path, num_frames=8, stride=32, img_size=16, train=train)
        assert dataset[0][0].shape[-4:] == (3, 8, 16, 16)


# ----------------------------------------------------------------------------- layouts


def test_folder_layout_sorted_classes_shared_by_splits(tmp_path):
    folder_dataset(tmp_path, classes=("walk", "bowl", "dive"))
    folder_dataset(tmp_path, classes=("dive", "walk"), split="val")  # val lacks a class: indices must not move
    train = data.KineticsDataset(tmp_path, "train")
    val = data.KineticsDataset(tmp_path, "val")
    assert train.classes == val.classes == ["bowl", "dive", "walk"]
    assert len(train) == 6 and len(val) == 4
    for dataset in (train, val):
        for path, label in zip(dataset.videos, dataset.labels):
            assert os.path.basename(os.path.dirname(path)) == dataset.classes[label]


@pytest.mark.parametrize("per_class_folders", [False, True])
def test_kinetics_csv_layout_and_missing_videos_reported_once(tmp_path, capsys, per_class_folders):
    rows = [("zumba", "abc", 5, 15), ("air drumming", "x_y-Z", 0, 10), ("zumba", "gone", 1, 11), ("air drumming", "q", 30, 40)]
    csv_path = tmp_path / "validate.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n" +
                        "".join(f'"{label}",{vid},{start},{end},val\n' for label, vid, start, end in rows))
    for label, vid, start, end in rows:
        if vid != "gone":
            folder = tmp_path / "val" / (label if per_class_folders else "")
            numbered_video(folder / f"{vid}_{start:06d}_{end:06d}.mp4", 5)
    dataset = data.KineticsDataset(tmp_path, "val", annotations=csv_path)
    assert dataset.classes == ["air drumming", "zumba"]
    names = {os.path.basename(p)[:-4]: label for p, label in zip(dataset.videos, dataset.labels)}
    assert names == {"abc_000005_000015": 1, "x_y-Z_000000_000010": 0, "q_000030_000040": 0}
    err = capsys.readouterr().err
    assert err.count("missing") == 1 and "1 of 4" in err


def test_list_file_layout_matches_regardless_of_extension(tmp_path, capsys):
    numbered_video(tmp_path / "train" / "a" / "one.mp4", 5)
    numbered_video(tmp_path / "train" / "b" / "two.avi", 5, "MJPG")
    listing = tmp_path / "train_list.txt"
    listing.write_text("a/one.mp4 2\nb/two.mp4 0\n\nb/three.mp4 1\n")  # two.avi listed as .mp4; three is missing
    dataset = data.KineticsDataset(tmp_path, "train", annotations=listing)
    assert dataset.classes == ["0", "1", "2"]
    assert [(os.path.basename(p), label) for p, label in zip(dataset.videos, dataset.labels)] == [
        ("one.mp4", 2), ("two.avi", 0)]
    assert "1 of 3" in capsys.readouterr().err
    listing.write_text("a/one.mp4 two\n")
    with pytest.raises(ValueError, match="line 1"):
        data.KineticsDataset(tmp_path, "train", annotations=listing)


def test_bad_dataset_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        data.KineticsDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="folder not found"):
        data.KineticsDataset(tmp_path, "val")
    with pytest.raises(ValueError, match="num_frames"):
        data.KineticsDataset(tmp_path, num_frames=0)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.KineticsDataset(tmp_path, annotations=tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- broken videos


def dataset_with_broken_videos(root):
    folder_dataset(root, videos_per_class=2, num_frames=8, classes=("a", "b"))
    (root / "train" / "a" / "not_a_video.mp4").write_text("garbage " * 50)
    whole = open(numbered_video(root / "whole.mp4", 30), "rb").read()
    (root / "train" / "b" / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    return data.KineticsDataset(root, num_frames=2, stride=2, img_size=16)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_broken_videos_skipped_logged_once_and_counted_across_workers(tmp_path, capfd, context):
    dataset = dataset_with_broken_videos(tmp_path)
    assert len(dataset) == 6
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=context)
    for _ in range(2 if context == "fork" else 1):  # new workers in a second epoch must not log or count them again
        batches = list(loader)
        assert sum(len(labels) for _, labels in batches) == 6
        assert all(videos.shape[1:] == (3, 2, 16, 16) for videos, _ in batches)
    assert sum(dataset.broken) == 2
    err = capfd.readouterr().err
    assert err.count("not_a_video.mp4") == 1 and err.count("truncated.mp4") == 1


def test_header_overstating_the_length_is_not_a_broken_video(tmp_path):
    whole = open(numbered_video(tmp_path / "whole.avi", 60, "MJPG"), "rb").read()
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "cut.avi").write_bytes(whole[: len(whole) // 2])  # header: 60 frames, ~30 decodable
    dataset = data.KineticsDataset(tmp_path, train=False, num_frames=2, stride=1, img_size=16, clips=2, crops=1)
    views, _ = dataset[0]
    decodable = len(data.read_frames(tmp_path / "whole.avi", range(60)))  # sanity: the whole file has 60
    assert decodable == 60 and sum(dataset.broken) == 0
    capture, count = cv2.VideoCapture(str(tmp_path / "train" / "a" / "cut.avi")), 0
    while capture.grab():
        count += 1
    assert 0 < count < 60
    # the test clips are placed in the frames that decode, not in the 60 the header promised: the
    # second (last) clip ends on the last frame that decodes
    second_start = count - 2
    frame = data.read_frames(tmp_path / "train" / "a" / "cut.avi", [second_start + 1])[0]
    expected = cv2.resize(frame[:, (BITS * BLOCK - 48) // 2:][:, :48], (16, 16), interpolation=cv2.INTER_AREA)
    assert ((views[1, :, 1].permute(1, 2, 0) + 1) * 127.5 - torch.from_numpy(expected).float()).abs().max() < 2


def test_all_broken_raises_instead_of_looping(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    for k in range(3):
        (tmp_path / "train" / "a" / f"{k}.mp4").write_text("garbage")
    dataset = data.KineticsDataset(tmp_path)
    with pytest.raises(data.VideoError, match="every video is broken"):
        dataset[0]
    assert sum(dataset.broken) == 3
    assert dataset.sync_broken(torch.device("cpu")) == 3  # without torch.distributed: the count


def find_broken_as_rank(rank, root, store, results):
    """One of two gloo processes: each meets one broken video, then learns the other's."""
    sys.stderr = open(f"{store}.rank{rank}", "w")  # its reports, for the test to read
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                         world_size=2)
    dataset = data.KineticsDataset(root, num_frames=2, stride=2, img_size=16, report=rank == 0)
    met = ("b", "truncated.mp4") if rank == 0 else ("a", "not_a_video.mp4")
    dataset[dataset.videos.index(os.path.join(root, "train", *met))]
    results.put((rank, dataset.sync_broken(torch.device("cpu")), list(dataset.broken)))
    torch.distributed.destroy_process_group()
    sys.stderr.close()


def test_ranks_learn_each_others_broken_videos_and_rank_0_reports_them(tmp_path):
    dataset_with_broken_videos(tmp_path)
    names = [os.path.basename(path) for path in data.KineticsDataset(tmp_path).videos]
    both = [int(name in ("not_a_video.mp4", "truncated.mp4")) for name in names]
    context = torch.multiprocessing.get_context("fork")
    results, store = context.Queue(), str(tmp_path / "store")
    ranks = [context.Process(target=find_broken_as_rank, args=(rank, str(tmp_path), store, results))
             for rank in (0, 1)]
    for process in ranks:
        process.start()
    found = sorted(results.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    assert found == [(0, 2, both), (1, 2, both)]  # each counts both, marks both
    report = open(f"{store}.rank0").read()
    assert report.count("truncated.mp4") == 1  # met by rank 0 itself: reported as it was met
    assert report.count("not_a_video.mp4 (found by another process)") == 1
    assert open(f"{store}.rank1").read() == ""  # rank 1 does not report


def test_persistent_workers_draw_each_epochs_augmentation(videos):
    settings = dict(num_frames=2, stride=2, img_size=16)
    dataset = data.KineticsDataset(videos, **settings)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in (1, 2):
        dataset.set_epoch(0, epoch)  # the workers started in epoch 1 stay for epoch 2
        clips = torch.cat([video for video, _ in loader])
        reference = data.KineticsDataset(videos, **settings)  # read in this process, no workers
        reference.set_epoch(0, epoch)
        assert torch.equal(clips, torch.stack([reference[i][0] for i in range(len(reference))]))
        epochs.append(clips)
    assert len(epochs[0]) == 6 and not torch.equal(epochs[0], epochs[1])


# ----------------------------------------------------------------------------- synthetic dataset


def small_synthetic(root, seed=0):
    return prepare.make_synthetic(root, train_per_class=3, val_per_class=1, num_frames=12, size=32, seed=seed)


def decode_all(path):
    return data.read_frames(path, range(12))


def vertical_centre_of_motion(frames):
    """Per frame, mean row of the pixels that differ from the per-pixel temporal median (the moving object)."""
    moving = np.abs(frames.astype(int) - np.median(frames, axis=0)).sum(-1) > 60
    rows = np.arange(frames.shape[1])[None, :, None]
    return (moving * rows).sum((1, 2)) / np.maximum(moving.sum((1, 2)), 1)


def test_synthetic_layout_determinism_and_reuse(tmp_path):
    classes = small_synthetic(tmp_path / "a")
    assert classes == ["down", "up"]
    for split, count in (("train", 3), ("val", 1)):
        for name in classes:
            assert sorted(os.listdir(tmp_path / "a" / split / name)) == [f"{k:04d}.avi" for k in range(count)]
    small_synthetic(tmp_path / "b")
    small_synthetic(tmp_path / "c", seed=1)
    same = tmp_path / "a" / "train" / "up" / "0002.avi", tmp_path / "b" / "train" / "up" / "0002.avi"
    assert np.array_equal(decode_all(same[0]), decode_all(same[1]))
    assert not np.array_equal(decode_all(same[0]), decode_all(tmp_path / "c" / "train" / "up" / "0002.avi"))
    written = os.path.getmtime(same[0])
    assert small_synthetic(tmp_path / "a") == classes and os.path.getmtime(same[0]) == written  # reused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        small_synthetic(tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "user data"
    assert data.KineticsDataset(tmp_path / "a", "val").classes == classes


def test_synthetic_frames_carry_no_label_only_their_order_does(tmp_path):
    small_synthetic(tmp_path)
    for k in range(3):
        down = decode_all(tmp_path / "train" / "down" / f"{k:04d}.avi")
        up = decode_all(tmp_path / "train" / "up" / f"{k:04d}.avi")
        # the same set of frames, bit for bit: any frame-wise statistic is identical for both classes
        assert np.array_equal(down, up[::-1])
        assert sorted(f.tobytes() for f in down) == sorted(f.tobytes() for f in up)
        # ...while the object moves down in one and up in the other
        assert np.all(np.diff(vertical_centre_of_motion(down)[[0, 5, 11]]) > 0)
        assert np.all(np.diff(vertical_centre_of_motion(up)[[0, 5, 11]]) < 0)


def test_sampling_is_symmetric_under_time_reversal():
    """Reversed videos must yield the same frame sets, so sampling cannot leak the synthetic label
    either. Test clips longer than the video loop from its start as mmaction2's do, which time
    reversal does not mirror; the synthetic videos (32 frames) hold the synthetic recipe's clip
    (4 x 10: 31 frames)."""
    for video_frames in (22, 32, 300):
        clips = data.multiview_clip_indices(video_frames, 8, 3, 10)
        reversed_clips = (video_frames - 1 - clips)[::-1, ::-1]
        assert np.array_equal(np.sort(clips, axis=None), np.sort(reversed_clips, axis=None))
        step = data.fitting_stride(video_frames, 8, 3)
        starts = range(video_frames - step * 7)
        forward = sorted(tuple(s + step * np.arange(8)) for s in starts)
        backward = sorted(tuple(sorted(video_frames - 1 - (s + step * np.arange(8)))) for s in starts)
        assert forward == backward


# ----------------------------------------------------------------------------- tools


def test_resize_writes_the_prepared_copy_and_resumes(tmp_path, capsys):
    source, target = tmp_path / "src", tmp_path / "dst"
    write_video(source / "train" / "a" / "big.mp4", [numbered_frame(i, height=120, width=192) for i in range(6)])
    numbered_video(source / "train" / "b" / "small.mp4", 6)  # 48 px short side: never enlarged
    (source / "train" / "b" / "broken.mp4").write_text("garbage")
    (source / "list.txt").write_text("a/big.mp4 0\n")
    failures = prepare.resize_dataset(source, target, short_side=60, workers=1)
    assert len(failures) == 1 and "broken.mp4" in failures[0]
    big = data.read_frames(target / "train" / "a" / "big.avi", range(6))
    assert big.shape == (6, 60, 96, 3) and [frame_number(cv2.resize(f, (192, 120))) for f in big] == list(range(6))
    small = data.read_frames(target / "train" / "b" / "small.avi", range(6))
    assert small.shape == (6, 48, BITS * BLOCK, 3) and [frame_number(f) for f in small] == list(range(6))
    assert (target / "list.txt").read_text() == "a/big.mp4 0\n" and not list(target.rglob(".*"))
    dataset = data.KineticsDataset(target, annotations=target / "list.txt")  # the list still names .mp4 files
    assert [os.path.basename(p) for p in dataset.videos] == ["big.avi"]
    written = os.path.getmtime(target / "train" / "a" / "big.avi")
    assert len(prepare.resize_dataset(source, target, short_side=60, workers=1)) == 1  # only the broken one again
    assert os.path.getmtime(target / "train" / "a" / "big.avi") == written


def test_benchmark_prints_clips_per_second_per_core_and_per_worker(tmp_path, capsys):
    folder_dataset(tmp_path / "raw", videos_per_class=1, num_frames=40)
    prepare.resize_dataset(tmp_path / "raw", tmp_path / "prepared", short_side=48, workers=1)
    capsys.readouterr()
    bench.loader_cost([str(tmp_path / "raw"), str(tmp_path / "prepared")], workers=0, clips=4, img_size=16,
                      num_frames=4, stride=8)
    raw, prepared = capsys.readouterr().out.strip().splitlines()
    for line in (raw, prepared):
        assert "one core" in line and "0 workers" in line and "kB per frame" in line and "cores" in line
    # 4 frames 8 apart: the raw mp4v files are walked up to the clip's last frame, the prepared copy seeks
    assert "(4 frames decoded per clip)" in prepared and "(4 frames decoded per clip)" not in raw


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--loader", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "nowhere" in result.stderr
