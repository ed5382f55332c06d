"""UCF101, HMDB51 and Something-Something-v2 from tiny copies of their official files (quirks
included), flips that respect left/right labels, segment sampling and fine-tuning."""
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch

import data
import prepare
import evaluate
import train
import vit
from conftest import tiny_args, write_video

UCF_CLASSES = ("ApplyEyeMakeup", "HandstandPushups")
HMDB_VIDEOS = {"brush_hair": ["#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", "Tom_&_Jerry_brush_h_0.avi",
                              "unused_brush_0.avi"],
               "cartwheel": ["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
                             "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi", "spare_0.avi"]}
SSV2_CLASSES = ("Pushing something from left to right", "Pushing something from right to left",
                "Turning the camera left while filming something", "Holding something")


def ramp(rng, frames=12):
    """Frames whose brightness is their index (a wrong frame is seen), with noise: 24 x 32 px."""
    noise = rng.normal(0, 10, (frames, 24, 32, 3))
    base = np.linspace(20, 235, frames)[:, None, None, None] + noise
    return np.clip(base, 0, 255).astype(np.uint8)


def write_ucf101(root, rng):
    """SRC (classInd, trainlist01, testlist01: CRLF) and UCF-101/<Class>/ videos."""
    src, videos, lines = root / "ucfTrainTestlist", root / "UCF-101", {"train": [], "test": []}
    for label, name in enumerate(UCF_CLASSES, 1):
        spelled = "HandStandPushups" if name == "HandstandPushups" else name  # as UCF101 has it
        for group, split in ((8, "train"), (9, "train"), (1, "test")):
            path = f"{name}/v_{spelled}_g{group:02d}_c01.avi"
            write_video(videos / path, ramp(rng), "XVID")  # UCF101's codec
            lines[split].append(f"{path} {label}" if split == "train" else path)
    src.mkdir()
    (src / "classInd.txt").write_bytes(b"".join(
        f"{i} {name}\r\n".encode() for i, name in enumerate(UCF_CLASSES, 1)))
    for split, rows in lines.items():
        (src / f"{split}list01.txt").write_bytes("".join(f"{r}\r\n" for r in rows).encode())
    return src, videos


def write_hmdb51(root, rng):
    """SRC (<class>_test_split1.txt, lines ending in a space: 1 train, 2 test, 0 unused) and
    hmdb51/<class>/ videos with # ( ) & ! in their names."""
    src = root / "testTrainMulti_7030_splits"
    src.mkdir()
    for name, files in HMDB_VIDEOS.items():
        for file in files:
            write_video(root / "hmdb51" / name / file, ramp(rng), "XVID")
        codes = ("1", "2", "0") if name == "brush_hair" else ("2", "1", "0")
        text = "".join(f"{file} {code} \n" for file, code in zip(files, codes))
        (src / f"{name}_test_split1.txt").write_text(text)
    return src, root / "hmdb51"


def write_ssv2(root, rng, per_class=2, frames=ramp):
    """SRC (labels, train and validation JSON) and the webm folder of <id>.webm (VP9)."""
    src, videos, lists = root / "annotations", root / "20bn-something-something-v2", {}
    src.mkdir()
    labels = {name: str(i) for i, name in enumerate(SSV2_CLASSES)}
    (src / "something-something-v2-labels.json").write_text(json.dumps(labels))
    video_id = 1000
    for part, count in (("train", per_class), ("validation", 1)):
        lists[part] = []
        for name in SSV2_CLASSES:
            for _ in range(count):
                video_id += 1
                write_video(videos / f"{video_id}.webm", frames(rng), "VP90")
                template = name.replace("something", "[something]")
                filled = name.replace("something", "a pen")
                lists[part].append({"id": str(video_id), "label": filled, "template": template,
                                    "placeholders": ["a pen"]})
        (src / f"something-something-v2-{part}.json").write_text(json.dumps(lists[part]))
    (src / "something-something-v2-test.json").write_text(json.dumps([{"id": "1"}]))
    return src, videos


def read_list(path):
    with open(path) as f:
        return [(line[:line.rindex(" ")], int(line[line.rindex(" ") + 1:])) for line in f]


def official_ucf101(src):
    """UCF101's lists parsed here on their own: CRLF lines, 1-based labels, the test labels by the
    folder part of the path."""
    index = {}
    for line in (src / "classInd.txt").read_bytes().decode().split("\r\n")[:-1]:
        number, name = line.split(" ")
        index[name] = int(number) - 1
    train = [(row.split(" ")[0], int(row.split(" ")[1]) - 1)
             for row in (src / "trainlist01.txt").read_bytes().decode().split("\r\n")[:-1]]
    test = [(row, index[row[:row.index("/")]])
            for row in (src / "testlist01.txt").read_bytes().decode().split("\r\n")[:-1]]
    return train, test, sorted(index, key=index.get)


def test_ucf101_lists_match_the_official_files_and_every_video_is_found(tmp_path):
    src, videos = write_ucf101(tmp_path, np.random.default_rng(0))
    prepare.main(["--lists", "ucf101", str(src), str(tmp_path / "lists")])
    train_rows, test_rows, classes = official_ucf101(src)
    assert read_list(tmp_path / "lists" / "train.txt") == train_rows
    assert read_list(tmp_path / "lists" / "val.txt") == test_rows
    assert (tmp_path / "lists" / "classes.txt").read_text().splitlines() == classes
    for split, rows in (("train", train_rows), ("val", test_rows)):
        listed = tmp_path / "lists" / f"{split}.txt"
        dataset = data.KineticsDataset(videos, split, annotations=listed)
        assert dataset.classes == list(UCF_CLASSES)
        assert sorted(zip(dataset.videos, dataset.labels)) == sorted(
            (str(videos / path), label) for path, label in rows)
    assert any("v_HandStandPushups_" in path for path in dataset.videos)


def test_hmdb51_lists_keep_codes_1_and_2_drop_0_and_find_odd_names(tmp_path):
    src, videos = write_hmdb51(tmp_path, np.random.default_rng(1))
    prepare.main(["--lists", "hmdb51", str(src), str(tmp_path / "lists"), "--split", "1"])
    expected = {"1": [], "2": []}
    for label, name in enumerate(sorted(HMDB_VIDEOS)):
        for line in (src / f"{name}_test_split1.txt").read_text().split("\n")[:-1]:
            file, code, after = line.split(" ")
            assert after == ""  # the official trailing space is in the copy
            if code != "0":
                expected[code].append((f"{name}/{file}", label))
    assert read_list(tmp_path / "lists" / "train.txt") == expected["1"]
    assert read_list(tmp_path / "lists" / "val.txt") == expected["2"]
    assert (tmp_path / "lists" / "classes.txt").read_text().split() == sorted(HMDB_VIDEOS)
    dataset = data.KineticsDataset(videos, "val", annotations=tmp_path / "lists" / "val.txt")
    assert sorted(dataset.videos) == sorted(str(videos / path) for path, _ in expected["2"])


def test_ssv2_lists_take_the_template_without_brackets(tmp_path):
    src, videos = write_ssv2(tmp_path, np.random.default_rng(2))
    prepare.main(["--lists", "ssv2", str(src), str(tmp_path / "lists")])
    labels = json.loads((src / "something-something-v2-labels.json").read_text())
    for part, name in (("train", "train"), ("validation", "val")):
        entries = json.loads((src / f"something-something-v2-{part}.json").read_text())
        expected = [(e["id"] + ".webm",
                     int(labels[e["template"].replace("[", "").replace("]", "")]))
                    for e in entries]
        assert read_list(tmp_path / "lists" / f"{name}.txt") == expected
    assert (tmp_path / "lists" / "classes.txt").read_text().splitlines() == list(SSV2_CLASSES)
    dataset = data.KineticsDataset(videos, "train", annotations=tmp_path / "lists" / "train.txt")
    assert len(dataset) == 2 * len(SSV2_CLASSES) and dataset.classes == list(SSV2_CLASSES)


@pytest.mark.parametrize("case", ["missing file", "unknown dataset", "split 4", "bad label"])
def test_bad_annotations_exit_2_with_one_line_and_write_nothing(case, tmp_path, capsys):
    src, _ = write_ucf101(tmp_path, np.random.default_rng(0))
    argv = ["--lists", "ucf101", str(src), str(tmp_path / "lists")]
    if case == "missing file":
        os.remove(src / "testlist01.txt")
    elif case == "unknown dataset":
        argv[1] = "kinetics"
    elif case == "split 4":
        argv += ["--split", "4"]
    else:
        (src / "trainlist01.txt").write_text("ApplyEyeMakeup/v_a.avi 7\n")
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(argv)
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and message.count("\n") == 1
    assert {"missing file": "testlist01.txt", "unknown dataset": "kinetics",
            "split 4": "--split 4", "bad label": "trainlist01.txt: line 1"}[case] in message
    assert not os.path.exists(tmp_path / "lists" / "train.txt")


def sideways(rng, frames=6):
    """Frames that brighten from left to right: a flipped crop darkens instead."""
    columns = np.linspace(10, 110, 48)[None, None, :, None] + rng.normal(0, 2, (frames, 32, 48, 3))
    return np.clip(columns, 0, 255).astype(np.uint8)


def test_flipped_clips_take_the_mirrored_label_and_unpaired_sides_never_flip(tmp_path):
    src, videos = write_ssv2(tmp_path, np.random.default_rng(3), per_class=1, frames=sideways)
    prepare.write_lists("ssv2", src, tmp_path / "lists")
    dataset = data.KineticsDataset(videos, "train", annotations=tmp_path / "lists" / "train.txt",
                                   num_frames=2, stride=2, img_size=32, short_side=(32, 48))
    mirrored = {0: 1, 1: 0, 3: 3}  # "Turning the camera left ..." has no "... right ..." here
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(0, epoch)
        for i in range(len(dataset)):
            video, label = dataset[i]
            flipped = bool(video[:, :, :, :8].mean() > video[:, :, :, -8:].mean())
            own = dataset.labels[i]
            assert label == (mirrored[own] if flipped else own)
            seen.add((own, flipped))
    assert seen == {(0, False), (0, True), (1, False), (1, True), (2, False), (3, False), (3, True)}
    line = data.describe_flips(list(SSV2_CLASSES))
    pair = "'Pushing something from left to right' <-> 'Pushing something from right to left'"
    assert pair in line
    assert "never flipped (no partner): 'Turning the camera left while filming something'" in line
    assert data.describe_flips(["abseiling", "air drumming"]) == ""


def test_classes_without_sides_draw_the_same_numbers_as_before(videos):
    """Kinetics-like classes: each item equals the pre-flip-rule recipe drawn from its generator."""
    dataset = data.KineticsDataset(videos, "train", num_frames=2, stride=2, img_size=32)
    dataset.set_epoch(5, 1)
    for i in range(len(dataset)):
        rng = np.random.default_rng([5, 1, i, i])
        frames = data.read_frames(dataset.videos[i], data.train_clip_indices(12, 2, 2, rng))
        box = data.random_train_box(*frames.shape[1:3], 32, dataset.short_side, rng)
        clip = data.crop_resize(frames, box, 32)
        clip = clip[:, :, ::-1] if rng.random() < data.FLIP_PROB else clip
        expected = data.to_tensor(data.colour_jitter(clip.astype(np.float32) / 255, rng))
        video, label = dataset[i]
        assert torch.equal(video, expected) and label == dataset.labels[i]


@pytest.mark.parametrize("frames, segments, clips", [(12, 4, 1), (12, 4, 3), (10, 3, 10),
                                                     (300, 8, 10), (5, 8, 2), (97, 16, 4)])
def test_uniform_test_indices_follow_the_formula(frames, segments, clips):
    expected = [[math.floor(frames / segments * (j + (c + 0.5) / clips)) for j in range(segments)]
                for c in range(clips)]
    assert data.uniform_clip_indices(frames, segments, clips).tolist() == expected


@pytest.mark.parametrize("frames, segments", [(12, 4), (10, 3), (5, 8)])
def test_uniform_training_takes_a_random_frame_of_each_segment(frames, segments):
    rng, seen = np.random.default_rng(0), set()
    for _ in range(300):
        indices = data.uniform_train_indices(frames, segments, rng)
        for j, index in enumerate(indices.tolist()):
            assert math.floor(frames * j / segments) <= index < max(
                math.ceil(frames * (j + 1) / segments), 1)
            seen.add((j, index))
    every = {(j, f) for j in range(segments) for f in range(frames)
             if frames * j / segments <= f < frames * (j + 1) / segments}
    assert every <= seen


def decode_every_frame(path, backend=cv2.CAP_FFMPEG):
    """Every frame in order, read forward (MJPEG .avi: by the loader's JPEG decoder, OpenCV's)."""
    capture, frames = cv2.VideoCapture(path, backend), []
    while (frame := capture.read())[0]:
        frames.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    return frames


def test_uniform_test_views_are_the_formulas_frames(tmp_path):
    path = write_video(tmp_path / "v.avi", ramp(np.random.default_rng(4), frames=17), "MJPG")
    every_frame = decode_every_frame(path, cv2.CAP_OPENCV_MJPEG)
    indices = [[math.floor(17 / 4 * (j + (c + 0.5) / 3)) for j in range(4)] for c in range(3)]
    expected = data.multiview_transform(np.stack(every_frame)[np.array(indices)], 32, 3)
    views = data.test_views(path, 4, 99, 32, clips=3, crops=3, sampling="uniform")
    assert torch.equal(views, expected)


def test_load_pretrained_replaces_the_head_when_the_classes_differ(tmp_path):
    source = vit.build_model("vit", 3, 2, size="Ti/16", img_size=32)
    torch.save(dict(model=source.state_dict(), classes=["a", "b", "c"]), tmp_path / "best.pt")
    for classes, head_kept in ((["a", "b", "c"], True), (["a", "b", "x"], False),
                               (["a", "b"], False)):
        model = vit.build_model("vit", len(classes), 2, size="Ti/16", img_size=32)
        vit.load_pretrained(model, tmp_path / "best.pt", log=lambda _: None, classes=classes)
        assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
        if head_kept:
            assert torch.equal(model.head.weight, source.head.weight)
        else:
            assert not model.head.weight.any() and not model.head.bias.any()


def test_fine_tune_a_checkpoint_on_ucf101_with_uniform_sampling_then_test(videos, tmp_path,
                                                                           capsys):
    assert train.main(tiny_args(videos, tmp_path / "k400", "--epochs", "1")) == 0
    src, ucf = write_ucf101(tmp_path, np.random.default_rng(5))
    prepare.write_lists("ucf101", src, tmp_path / "lists")
    capsys.readouterr()
    argv = tiny_args(ucf, tmp_path / "ucf", "--epochs", "1", "--sampling", "uniform",
                     "--annotations", str(tmp_path / "lists" / "train.txt"), "--val-annotations",
                     str(tmp_path / "lists" / "val.txt"), "--pretrained",
                     str(tmp_path / "k400" / "last.pt"))
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 classes, 4 train / 2 val videos" in out and "head initialised to zeros" in out
    ckpt = torch.load(tmp_path / "ucf" / "best.pt", weights_only=True)
    assert ckpt["classes"] == list(UCF_CLASSES) and ckpt["args"]["sampling"] == "uniform"
    report = evaluate.main(["--checkpoint", str(tmp_path / "ucf" / "best.pt"), "--annotations",
                            str(tmp_path / "lists" / "val.txt"), "--clips", "2", "--crops", "1",
                            "--workers", "0", "--json", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text()) == report
    assert report["sampling"] == "uniform" and report["videos"] == 2
    video = str(ucf / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    capsys.readouterr()
    evaluate.main(["--checkpoint", str(tmp_path / "ucf" / "best.pt"), "--video", video,
                   "--clips", "2", "--crops", "1", "--workers", "0"])
    printed = capsys.readouterr().out.splitlines()
    model = vit.build_model(**ckpt["model_args"]).eval()
    model.load_state_dict(ckpt["model"])
    every_frame = decode_every_frame(video)
    n = len(every_frame)
    indices = [[math.floor(n / 2 * (j + (c + 0.5) / 2)) for j in range(2)] for c in range(2)]
    views = data.multiview_transform(np.stack(every_frame)[np.array(indices)], 32, 1)
    with torch.no_grad():
        scores = vit.video_scores(model, views[None])[0]
    expected = sorted(((p, name) for p, name in zip(scores.tolist(), UCF_CLASSES)), reverse=True)
    assert [line.split()[1] for line in printed] == [name for _, name in expected]
    assert [float(line.split()[0]) for line in printed] == pytest.approx(
        [p for p, _ in expected], abs=1e-4)


@pytest.mark.parametrize("name, split_value, extra", [("validate.csv", "validate", ",is_cc"),
                                                      ("val.csv", "val", "")])
def test_kinetics_val_csv_of_deepmind_and_of_the_cvdf_mirror(name, split_value, extra, tmp_path):
    rng, rows = np.random.default_rng(6), []
    for k, label in enumerate(("abseiling", "air drumming")):
        youtube_id = f"id{k}"
        write_video(tmp_path / "k400" / f"{youtube_id}_000010_000020.mp4", ramp(rng))
        rows.append(f"{label},{youtube_id},10,20,{split_value}{extra and ',0'}\n")
    (tmp_path / name).write_text(f"label,youtube_id,time_start,time_end,split{extra}\n"
                                 + "".join(rows))
    dataset = data.KineticsDataset(tmp_path / "k400", "val", annotations=tmp_path / name)
    assert dataset.classes == ["abseiling", "air drumming"] and dataset.labels == [0, 1]
