"""The GPU check: what only a GPU can answer. Skipped without CUDA. Run it with the speed table:

    python -m pytest tests/test_gpu.py -s && python bench.py

Lines starting "GPU-CHECK" are the numbers the README reports (with the GPU's name).
"""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import bench
import prepare
import train
import vit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.device("cuda")


def report(what, **numbers):
    print(f"\nGPU-CHECK {what} ({torch.cuda.get_device_name()}): {json.dumps(numbers)}", flush=True)


@pytest.mark.parametrize("variant", ["vit", "tokenshift", "KV", "pKV", "QKV"])
def test_the_gpu_computes_what_the_cpu_computes(variant):
    """fp32 on the GPU (TF32 off, SDPA's fused kernels) against float64 on the CPU, forward and gradients;
    bf16 autocast close to both."""
    torch.manual_seed(0)
    model = vit.build_model(variant, 5, 4, size="Ti/16", img_size=64, patches=4, shift_layout="released").double()
    video = torch.rand(2, 3, 4, 64, 64, dtype=torch.double) * 2 - 1
    cpu = model(video)
    cpu_grads = torch.autograd.grad(cpu.logsumexp(-1).sum(), list(model.parameters()))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model, video = model.float().to(CUDA), video.float().to(CUDA)
    gpu = model(video)
    gpu_grads = torch.autograd.grad(gpu.logsumexp(-1).sum(), list(model.parameters()))
    torch.testing.assert_close(gpu.double().cpu(), cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-3, atol=1e-4)
    with vit.autocast(CUDA, torch.bfloat16):
        bf16 = model(video).float()
    assert torch.nn.functional.cosine_similarity(bf16.flatten(), gpu.flatten(), dim=0) > 0.99


def test_peak_memory_at_the_papers_batch_is_that_of_vit():
    """B/16, 8 frames of 224 px, 21 clips (the paper's batch per GPU), bf16: the peak of a forward+backward step
    beyond the weights."""
    video = torch.rand(21, 3, 8, 224, 224, device=CUDA) * 2 - 1
    labels = torch.randint(400, (21,), device=CUDA)
    peaks = {}
    for variant in ("vit", "tokenshift", "KV", "pKV"):
        model = vit.build_model(variant, 400, 8).to(CUDA)
        bench.timed_step(model, video, labels, torch.bfloat16)  # warm-up: kernels chosen, workspaces made
        peaks[variant] = bench.timed_step(model, video, labels, torch.bfloat16)[1] / 2 ** 30
        del model
        torch.cuda.empty_cache()
    report("peak GiB, B/16 8x224, batch 21, bf16", **{v: round(p, 2) for v, p in peaks.items()})
    assert all(peaks[v] <= 1.02 * peaks["vit"] for v in peaks), peaks


def test_compiled_model_matches_eager_on_the_gpu():
    torch.manual_seed(0)
    model = vit.build_model("KV", 5, 4, size="Ti/16", img_size=64, shift_layout="released").to(CUDA)
    video = torch.rand(2, 3, 4, 64, 64, device=CUDA) * 2 - 1
    eager = model(video)
    eager_grads = torch.autograd.grad(eager.logsumexp(-1).sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)(video)
    compiled_grads = torch.autograd.grad(compiled.logsumexp(-1).sum(), list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
def test_train_end_to_end_at_the_papers_size(tmp_path, compiled):
    """train.py as a user runs it, the paper's recipe (B/16, 8 x 224, 21 clips, accumulation 10, bf16, 8 loader
    workers) on the synthetic videos: its clips/s include the loader, logging and accumulation."""
    prepare.make_synthetic(train.SYNTHETIC_DIR, **train.SYNTHETIC_VIDEOS)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--data", train.SYNTHETIC_DIR,
                             "--out", str(out), "--epochs", "2", "--lr", "0.001", "--variant", "pKV"]
                            + ["--compile"] * compiled, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    report(f"train.py clips/s, pKV B/16 8x224, batch 21 x 10, {'compiled' if compiled else 'eager'}",
           epoch1=float(rows[0]["clips_per_s"]), epoch2=float(rows[1]["clips_per_s"]),
           seconds=[float(r["seconds"]) for r in rows])


def test_loader_with_every_core_on_a_prepared_copy(tmp_path):
    prepare.make_synthetic(train.SYNTHETIC_DIR, **train.SYNTHETIC_VIDEOS)
    cores = str(os.cpu_count())
    subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--resize", train.SYNTHETIC_DIR,
                    str(tmp_path / "prepared"), "--workers", cores], check=True, capture_output=True, timeout=900)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--loader", str(tmp_path / "prepared"),
                             "--workers", cores, "--clips", "2000"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report("loader", cores=int(cores), output=result.stdout.strip().splitlines()[-4:])
    assert re.search(r"clips/s", result.stdout)
