"""A Ctrl-C while a script still imports torch (issue 26): one line, exit status 130, no traceback.

Each script runs as a command in its own session. A sitecustomize hook holds its import of torch:
it writes a marker file, then waits for a signal inside the import. The test sends SIGINT to the
process group only once the marker exists, so the signal lands mid-import every time."""
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK = '''import os, sys, time


class HoldTorch:
    """The first import of torch stops here until a signal's handler ends the process."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            open(os.environ["TORCH_IMPORT_STARTED"], "w").close()
            while True:
                time.sleep(1)  # a signal's handler runs as soon as it arrives
        return None


sys.meta_path.insert(0, HoldTorch())
'''


def default_ctrl_c():
    """Ctrl-C as in a terminal, even if the test runner was started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "prepare.py", "bench.py"])
def test_ctrl_c_while_importing_torch_is_one_line(script, tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    marker = tmp_path / "importing-torch"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "hook"), TORCH_IMPORT_STARTED=str(marker))
    process = subprocess.Popen([sys.executable, os.path.join(REPO, script), "--help"], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_ctrl_c)
    try:
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and err.splitlines() == [f"{script}: interrupted"], err
    assert out == ""
