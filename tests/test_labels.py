"""Class names and labels (issue 26): HMDB51's class order, flip partners in any spelling, bad
annotation bytes as one line, list files written all three or none, --quality of the copy. Each
case writes real files; each expectation is written out by hand."""
import json
import os
import subprocess

import numpy as np
import pytest

import data
import prepare
from conftest import write_video
from test_data_faults import main_error, tmpfs


def write_files(folder, files):
    """{name: bytes or str} under `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        raw = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(raw)
    return folder


UCF = {"classInd.txt": "1 ApplyEyeMakeup\r\n2 Archery\r\n",
       "trainlist01.txt": "ApplyEyeMakeup/v_a_g08_c01.avi 1\r\nArchery/v_b_g08_c01.avi 2\r\n",
       "testlist01.txt": "ApplyEyeMakeup/v_a_g01_c01.avi\r\n"}
SSV2_LABELS = {"Holding something": "0", "Pushing something from left to right": "1"}
SSV2_VIDEOS = [{"id": "7", "template": "Holding [something]"}]


def write_ssv2(folder, labels=SSV2_LABELS, train=SSV2_VIDEOS):
    return write_files(folder, {"something-something-v2-labels.json": json.dumps(labels),
                                "something-something-v2-train.json": json.dumps(train),
                                "something-something-v2-validation.json": json.dumps(SSV2_VIDEOS)})


# ------------------------------------------------------------------------------- HMDB51's order

def test_hmdb51_classes_are_in_name_order_when_names_share_a_prefix(tmp_path):
    names = ["kick_ball", "climb_stairs", "kick", "climb", "sword_exercise", "sword"]
    src = write_files(tmp_path / "splits", {f"{name}_test_split1.txt": f"{name}_0.avi 1 \n"
                                            f"{name}_1.avi 2 \n" for name in names})
    prepare.write_lists("hmdb51", src, tmp_path / "lists")
    expected = ["climb", "climb_stairs", "kick", "kick_ball", "sword", "sword_exercise"]
    assert (tmp_path / "lists" / "classes.txt").read_text() == "".join(f"{n}\n" for n in expected)
    assert (tmp_path / "lists" / "train.txt").read_text() == (
        "climb/climb_0.avi 0\nclimb_stairs/climb_stairs_0.avi 1\nkick/kick_0.avi 2\n"
        "kick_ball/kick_ball_0.avi 3\nsword/sword_0.avi 4\nsword_exercise/sword_exercise_0.avi 5\n")


# ---------------------------------------------------------------------------------------- flips

FLIPS = [  # (class names, {label: partner}) by hand; a label left out never flips
    (["SwipingLeft", "SwipingRight", "Swiping Up"], {0: 1, 1: 0, 2: 2}),
    (["swiping_left", "swiping_right", "swiping_up"], {0: 1, 1: 0, 2: 2}),
    (["turn-right", "turn-left"], {0: 1, 1: 0}),
    (["Turning Left", "Turning Right"], {0: 1, 1: 0}),
    (["LEFT TURN", "RIGHT TURN"], {0: 1, 1: 0}),
    (["move leftHand up", "move rightHand up"], {0: 1, 1: 0}),
    (["Swiping Left", "Swiping right"], {0: 1, 1: 0}),  # the side word in any case
    (["swiping Left", "Swiping Right"], {}),  # the rest of the name must match exactly
    (["Pushing something from left to right", "Pushing something from right to left",
      "Turning the camera left while filming something"], {0: 1, 1: 0}),
    (["bright light", "upright", "leftovers", "copyright", "Bright"], {0: 0, 1: 1, 2: 2, 3: 3,
                                                                        4: 4}),
    (["left", "right", "Rightward"], {0: 1, 1: 0, 2: 2}),
]


@pytest.mark.parametrize("classes, partners", FLIPS)
def test_flip_partners_find_left_and_right_in_every_spelling(classes, partners):
    assert data.flip_partners(classes) == [partners.get(label) for label in range(len(classes))]


def test_describe_flips_names_camel_case_pairs():
    line = data.describe_flips(["SwipingLeft", "SwipingRight", "ThumbUp", "TurnLeft"])
    assert line == ("flips swap the labels of 'SwipingLeft' <-> 'SwipingRight'; never flipped "
                    "(no partner): 'TurnLeft'")


@pytest.mark.parametrize("classes, named", [(["Swiping Left", "swiping left"], "'swiping left'"),
                                            (["walk", "run", "walk"], "'walk'"),
                                            (["Turn", "turn"], "'turn'")])
def test_names_alike_but_for_case_or_listed_twice_are_refused(classes, named):
    with pytest.raises(ValueError, match=named) as error:
        data.flip_partners(classes, "somewhere/classes.txt")
    assert str(error.value).startswith("somewhere/classes.txt: ") and "\n" not in str(error.value)


def test_the_loader_refuses_a_classes_txt_naming_a_class_twice(tmp_path):
    lists = write_files(tmp_path / "lists", {"train.txt": "a/0.avi 0\n",
                                             "classes.txt": "walk\nrun\nwalk\n"})
    with pytest.raises(ValueError, match="classes.txt: .*'walk'"):
        data.KineticsDataset(tmp_path / "videos", "train", annotations=lists / "train.txt")


def test_the_loader_refuses_class_folders_alike_but_for_case(tmp_path):
    write_video(tmp_path / "train" / "Swiping Left" / "0.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    write_video(tmp_path / "train" / "swiping left" / "0.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="train: .*'Swiping Left' and 'swiping left'"):
        data.KineticsDataset(tmp_path, "train")


# --------------------------------------------------------------------- bad annotations: one line

NOT_UTF8 = b"caf\xe9"  # Latin-1


@pytest.mark.parametrize("files, named", [
    ({"classInd.txt": ""}, "classInd.txt"),
    ({"classInd.txt": "1 ApplyEyeMakeup\n2 Apply Archery\n"}, "classInd.txt: line 2"),
    ({"classInd.txt": "1 ApplyEyeMakeup\n2\n"}, "classInd.txt: line 2"),
    ({"classInd.txt": "1 ApplyEyeMakeup\n\u00b2 Archery\n"}, "classInd.txt: line 2"),
    ({"classInd.txt": "1 ApplyEyeMakeup\n2 Archery\n3 ApplyEyemakeup\n"}, "classInd.txt"),
    ({"classInd.txt": b"1 ApplyEyeMakeup\n2 " + NOT_UTF8 + b"\n"}, "classInd.txt: line 2"),
    ({"trainlist01.txt": b"ApplyEyeMakeup/v_a.avi 1\n" + NOT_UTF8 + b".avi 2\n"},
     "trainlist01.txt: line 2"),
    ({"trainlist01.txt": "ApplyEyeMakeup/v_a.avi \u00b2\n"}, "trainlist01.txt: line 1"),
    ({"testlist01.txt": b"\n\n" + NOT_UTF8}, "testlist01.txt: line 3"),
])
def test_bad_ucf101_annotations_are_one_line_naming_file_and_line(files, named, tmp_path, capsys):
    src = write_files(tmp_path / "src", {**UCF, **files})
    main_error(capsys, ["--lists", "ucf101", src, tmp_path / "lists"], named)
    assert not (tmp_path / "lists").exists()


def test_a_bom_before_classind_is_accepted(tmp_path):
    src = write_files(tmp_path / "src", {**UCF, "classInd.txt": b"\xef\xbb\xbf" + UCF[
        "classInd.txt"].encode()})
    prepare.write_lists("ucf101", src, tmp_path / "lists")
    assert (tmp_path / "lists" / "classes.txt").read_text() == "ApplyEyeMakeup\nArchery\n"
    assert (tmp_path / "lists" / "train.txt").read_text() == (
        "ApplyEyeMakeup/v_a_g08_c01.avi 0\nArchery/v_b_g08_c01.avi 1\n")


def test_an_hmdb51_split_file_of_other_bytes_is_one_line(tmp_path, capsys):
    src = write_files(tmp_path / "src", {"run_test_split1.txt": b"a.avi 1 \n" + NOT_UTF8 + b" 2\n",
                                         "walk_test_split1.txt": "b.avi 1 \nc.avi 2 \n"})
    main_error(capsys, ["--lists", "hmdb51", src, tmp_path / "lists"], "run_test_split1.txt: line 2")


@pytest.mark.parametrize("labels, train, named", [
    (list(SSV2_LABELS), SSV2_VIDEOS, "labels.json"),
    ({"Holding something": "zero"}, SSV2_VIDEOS, "labels.json"),
    ({"Holding something": "\u00b2"}, SSV2_VIDEOS, "labels.json"),
    (SSV2_LABELS, {"videos": SSV2_VIDEOS}, "train.json"),
    (SSV2_LABELS, ["7"], "train.json: video 1"),
    (SSV2_LABELS, [*SSV2_VIDEOS, {"id": "8", "template": "Dropping [something]"}],
     "train.json: video 2"),
])
def test_bad_ssv2_json_is_one_line_naming_the_file(labels, train, named, tmp_path, capsys):
    src = write_ssv2(tmp_path / "src", labels, train)
    main_error(capsys, ["--lists", "ssv2", src, tmp_path / "lists"], named)


def test_ssv2_json_of_other_bytes_is_one_line(tmp_path, capsys):
    src = write_ssv2(tmp_path / "src")
    (src / "something-something-v2-train.json").write_bytes(b'[\n{"id": "' + NOT_UTF8 + b'"}]')
    main_error(capsys, ["--lists", "ssv2", src, tmp_path / "lists"], "train.json: line 2")


@pytest.mark.parametrize("files, named", [
    ({"train.txt": "a/0.avi 99999999\n"}, "train.txt: line 1"),
    ({"train.txt": "a/0.avi 0\na/1.avi 2\n", "classes.txt": "walk\nrun\n"}, "train.txt: line 2"),
    ({"train.txt": "a/0.avi \u00b2\n"}, "train.txt: line 1"),
    ({"train.txt": b"a/0.avi 0\n" + NOT_UTF8 + b" 0\n"}, "train.txt: line 2"),
    ({"train.txt": "a/0.avi 0\n", "classes.txt": b"walk\n" + NOT_UTF8}, "classes.txt: line 2"),
    ({"train.txt": b"label,youtube_id,time_start,time_end\n" + NOT_UTF8 + b",x,0,10\n"},
     "train.txt: line 2"),
])
def test_the_loader_refuses_bad_list_files_in_one_line(files, named, tmp_path):
    lists = write_files(tmp_path / "lists", files)
    with pytest.raises(ValueError) as error:
        data.KineticsDataset(tmp_path / "videos", "train", annotations=lists / "train.txt")
    assert named in str(error.value) and "\n" not in str(error.value), error.value


def test_a_missing_split_folder_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--annotations") as error:
        data.KineticsDataset(tmp_path, "train")
    assert "annotations=" not in str(error.value)


# ------------------------------------------------------------------ --lists: all three or none

def test_a_train_txt_folder_in_out_is_one_line_and_nothing_changes(tmp_path, capsys):
    src = write_files(tmp_path / "src", UCF)
    (tmp_path / "lists" / "train.txt").mkdir(parents=True)
    main_error(capsys, ["--lists", "ucf101", src, tmp_path / "lists"], "train.txt")
    assert sorted(os.listdir(tmp_path / "lists")) == ["train.txt"]


def test_lists_onto_a_full_disk_leave_the_older_set_whole(tmp_path, capsys):
    old = write_files(tmp_path / "old", UCF)
    names = [f"Class{k:03d}" for k in range(300)]
    new = write_files(tmp_path / "new", {
        "classInd.txt": "".join(f"{k} {name}\n" for k, name in enumerate(names, 1)),
        "trainlist01.txt": "".join(f"{name}/v_{name}_g{g:02d}_c01.avi {k}\n"
                                   for k, name in enumerate(names, 1) for g in range(8, 26)),
        "testlist01.txt": "".join(f"{name}/v_{name}_g01_c01.avi\n" for name in names)})
    with tmpfs(tmp_path / "disk", "64k") as disk:
        prepare.write_lists("ucf101", old, disk / "lists")
        before = {name: (disk / "lists" / name).read_bytes() for name in os.listdir(disk / "lists")}
        assert sorted(before) == ["classes.txt", "train.txt", "val.txt"]
        main_error(capsys, ["--lists", "ucf101", new, disk / "lists"], str(disk / "lists"))
        assert {name: (disk / "lists" / name).read_bytes()
                for name in os.listdir(disk / "lists")} == before  # no partial file left either
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        prepare.write_lists("ucf101", new, disk / "lists")
        assert (disk / "lists" / "classes.txt").read_text() == "".join(f"{n}\n" for n in names)
        assert len((disk / "lists" / "train.txt").read_text().splitlines()) == 300 * 18


# ---------------------------------------------------------------------------------- --quality

def test_quality_sets_the_copys_jpegs_records_it_and_a_resume_must_match(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_video(tmp_path / "src" / "a" / "0.mp4", rng.integers(0, 256, (3, 48, 64, 3), np.uint8))
    sizes = {}
    for quality in (30, 95):
        prepare.main(["--resize", str(tmp_path / "src"), str(tmp_path / f"q{quality}"),
                      "--quality", str(quality), "--short-side", "48", "--workers", "1"])
        recorded = json.loads((tmp_path / f"q{quality}" / "prepared.json").read_text())
        assert recorded["mjpeg_quality"] == quality and recorded["short_side"] == 48
        sizes[quality] = os.path.getsize(tmp_path / f"q{quality}" / "a" / "0.avi")
        assert data.read_frames(tmp_path / f"q{quality}" / "a" / "0.avi", [2]).shape == (
            1, 48, 64, 3)
    assert sizes[30] < sizes[95]
    capsys.readouterr()
    write_video(tmp_path / "src" / "a" / "1.mp4", rng.integers(0, 256, (3, 48, 64, 3), np.uint8))
    main_error(capsys, ["--resize", tmp_path / "src", tmp_path / "q30", "--quality", 95,
                        "--short-side", 48], "prepared.json", "30")
    assert not (tmp_path / "q30" / "a" / "1.avi").exists()
    main_error(capsys, ["--resize", tmp_path / "src", tmp_path / "q0", "--quality", 0], "--quality")
    assert not (tmp_path / "q0").exists()
