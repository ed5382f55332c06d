"""Docs that cannot rot: every `python <script>.py --flag` that README.md and docs/*.md show names a flag
that the script's --help lists."""
import functools
import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
# a command: python (or torchrun and its own flags) then a script of the repository, up to the end of
# the line (a trailing backslash continues it), a closing backtick or a table cell's bar
COMMAND = re.compile(r"(?:python|torchrun)\b[^\n`|]*?\b(\w+)\.py\b([^\n`|]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def commands(text):
    """[(script, [flags])] of the commands in a Markdown text."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(script, FLAG.findall(rest)) for script, rest in COMMAND.findall(joined)]


@functools.lru_cache(maxsize=None)
def help_text(script):
    result = subprocess.run([sys.executable, os.path.join(REPO, f"{script}.py"), "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, f"{script}.py --help: {result.stderr[-500:]}"
    return result.stdout


def test_the_extractor_finds_commands_their_flags_and_continued_lines():
    text = ("    python train.py --variant pKV --patches 16   # MSCA-pKV\n"
            "    torchrun --nproc_per_node 2 train.py --data k400 \\\n        --pretrained W.npz\n"
            "| `python prepare.py --lists ucf101 SRC OUT` | `--table` |\n")
    assert commands(text) == [("train", ["--variant", "--patches"]),
                              ("train", ["--data", "--pretrained"]), ("prepare", ["--lists"])]


@pytest.mark.parametrize("doc", DOCS, ids=[os.path.relpath(d, REPO) for d in DOCS])
def test_every_flag_a_doc_shows_is_in_its_scripts_help(doc):
    with open(doc, encoding="utf-8") as f:
        shown = commands(f.read())
    unknown = []
    for script, flags in shown:
        if not os.path.isfile(os.path.join(REPO, f"{script}.py")):
            continue  # another project's script, e.g. in a quoted command of theirs
        listed = set(FLAG.findall(help_text(script)))
        unknown += [f"{script}.py {flag}" for flag in flags if flag not in listed]
    assert not unknown, f"{os.path.relpath(doc, REPO)} shows flags its scripts lack: {unknown}"
    assert "--no-such-flag" not in help_text("train")  # the check can fail
