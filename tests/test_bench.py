"""Tests for bench.py: the cost benchmark of every variant (the loader's is in test_data.py)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_bad_size_is_one_line():
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--size", "Q/99"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--size" in result.stderr


def test_speed_benchmark_reports_a_ratio_for_every_variant(tmp_path, one_thread):
    out = tmp_path / "speed.json"
    rows = bench.main(["--device", "cpu", "--size", "Ti/16", "--img-size", "32", "--frames", "2",
                       "--batch-size", "1", "--patches", "2", "--warmup", "1", "--repeats", "1",
                       "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == list(vit.VARIANTS) == [r["variant"] for r in rows]
    for row in saved["rows"]:
        assert row["step_ms"] > 0 and math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["clips_per_s"] == pytest.approx(1000 / row["step_ms"])
    assert saved["rows"][0]["ratio"] == 1.0 and saved["rows"][0]["activation_ratio"] == 1.0
    # shifting moves activations but keeps their number: every MSCA variant saves as much as ViT for backward
    # (up to the few bytes of a shifted copy), and none saves less than a small fraction of it
    for row in saved["rows"]:
        assert 0.9 < row["activation_ratio"] < 1.5, row


def test_compiled_benchmark_compiles_every_variant_and_times_vit_as_the_authors_ran_it(one_thread):
    torch._dynamo.reset()  # a fresh compile cache: each block kind is one new entry
    counter = CompileCounter()
    variants = list(vit.VARIANTS) + [bench.AUTHORS]
    rows = bench.benchmark_speed(variants, size="Ti/16", img_size=32, frames=2, batch_size=1,
                                 shapes=dict(patches=2), device=torch.device("cpu"), warmup=1,
                                 repeats=1, compile_options=dict(backend=counter))
    assert counter.frame_count == len(vit.VARIANTS)  # one graph per kind, none left eager
    assert [r["variant"] for r in rows] == variants and all(r["first_step_s"] > 0 for r in rows)
    # the math backend keeps the attention probabilities for backward, SDPA's kernel does not
    assert rows[-1]["activation_ratio"] > 1


def test_against_authors_and_an_optimizer_step_on_the_command_line(one_thread, capsys):
    rows = bench.main(["--device", "cpu", "--size", "Ti/16", "--img-size", "32",
                       "--frames", "2", "--batch-size", "1", "--variants", "KV", "--warmup",
                       "1", "--repeats", "1", "--against-authors", "--optimizer-step",
                       "adamw-fused"])
    out = capsys.readouterr().out
    assert [r["variant"] for r in rows] == ["vit", "KV", bench.AUTHORS]
    assert "with the adamw-fused optimizer step" in out
    ratio = f"{bench.AUTHORS}: {rows[-1]['ratio']:.3f}x the step time of ours"
    assert f"{ratio} (both fp32 here: only the attention backend differs)" in out


@pytest.mark.parametrize("fused", ["sgd", "sgd-fused"])
def test_the_benchmarks_sgd_steps_as_the_momentum_formula(fused):
    layer = torch.nn.Linear(3, 2).double()  # float64: the lr-1e-6 steps stay far above rounding
    optimizer = bench.make_optimizer(fused, layer)
    start, moved, velocity = layer.weight.detach().clone(), 0.0, 0.0
    for step in range(3):
        gradient = torch.randn(2, 3, dtype=torch.double)
        layer.weight.grad, layer.bias.grad = gradient.clone(), torch.zeros(2, dtype=torch.double)
        optimizer.step()
        velocity = 0.9 * velocity + gradient  # PyTorch's first step takes the gradient itself
        moved = moved - 1e-6 * velocity
    torch.testing.assert_close(layer.weight.detach() - start, moved, rtol=1e-9, atol=0)
    assert optimizer.defaults["fused"] == (fused == "sgd-fused" or None)


def test_analytic_flops_match_pytorchs_flop_counter():
    frames, batch = 3, 2
    model = vit.build_model("vit", 5, frames, size="Ti/16", img_size=48)
    video = torch.rand(batch, 3, frames, 48, 48) * 2 - 1
    # the math kernel spells attention out as matmuls, which the counter sees
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(video)
    assert bench.train_flops(model, frames, 48, batch, 5) == 3 * counter.get_total_flops()


def test_shift_div_1_is_one_line_naming_the_flag():
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--variants", "tokenshift",
                             "--shift-div", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: --shift-div 1"), lines


def test_shift_div_reaches_the_timed_tokenshift(monkeypatch, one_thread):
    built, build_model = [], vit.build_model

    def spy(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(vit, "build_model", spy)
    bench.main(["--device", "cpu", "--size", "Ti/16", "--img-size", "32", "--frames", "2", "--batch-size",
                "1", "--variants", "tokenshift", "--shift-div", "8", "--warmup", "1", "--repeats", "1"])
    moved = 192 // 8  # Ti/16: D = 192 channels, D/8 each way
    shifts = [block.token_shift for model in built for block in model.blocks]
    tokenshifts = [s for s in shifts if not isinstance(s, torch.nn.Identity)]
    assert len(tokenshifts) == 12  # vit's 12 blocks have none
    assert all(s.from_previous == [(0, slice(0, moved))] and s.from_next == [(0, slice(moved, 2 * moved))]
               for s in tokenshifts)


@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_a_peak_that_is_not_positive_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cpu", "--peak-tflops", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [f"bench.py: error: --peak-tflops {float(value)}: must be a positive "
                                            "number of TFLOP/s"], err
