"""tests/gpu_check.sh in its tiny mode on the CPU: every step runs and prints its figures."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.environ.get("GPU_CHECK_TINY"), reason="minutes on 2 cores: "
                    "GPU_CHECK_TINY=1 python -m pytest tests/test_gpu_check.py runs it")
def test_the_gpu_check_script_runs_every_step_in_its_tiny_mode():
    # compilation off: compiling on 2 CPU cores takes minutes; the compiled paths have their tests
    env = {**os.environ, "GPU_CHECK_TINY": "1", "TORCH_COMPILE_DISABLE": "1",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["sh", os.path.join(ROOT, "tests", "gpu_check.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0 and "FAILED" not in out, out[-3000:] + result.stderr[-3000:]
    for figure in ("torch 2.", "| vit (fp32, math attention) |", "x the step time of ours",
                   "vit.compile_blocks (mode max-autotune-no-cudagraphs)",
                   "with the sgd-fused optimizer step", "of pKV alone", "== done: 0 steps failed"):
        assert figure in out, figure
