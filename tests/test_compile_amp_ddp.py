"""What the GPU paths rely on, proven on the CPU: activation memory parity, torch.compile, bf16 and fp16 with loss
scaling, and DistributedDataParallel (torchrun with gloo)."""
import csv
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import bench
import train
import vit
from attention import CrossAttentionShift
from conftest import CLASSES, tiny_args
from shift import TokenShift

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------
# memory: the shifts copy, but never keep more alive for backward than MSA does


@pytest.mark.parametrize("layout", ["paper", "released"])
def test_no_variant_saves_more_activations_than_vit(layout):
    """Bytes autograd saves for backward, each storage once (torch.autograd.graph.saved_tensors_hooks)."""
    torch.manual_seed(0)
    video, labels = torch.rand(2, 3, 8, 64, 64) * 2 - 1, torch.tensor([0, 1])
    saved = {v: bench.saved_activation_bytes(vit.build_model(v, 5, 8, size="Ti/16", img_size=64, patches=4,
                                                                shift_layout=layout), video, labels, None)
             for v in vit.VARIANTS}
    assert all(saved[v] <= 1.02 * saved["vit"] for v in vit.VARIANTS), {v: saved[v] / saved["vit"] for v in saved}


# ---------------------------------------------------------------------------------------------------------
# torch.compile


def msca(variant, layout="paper"):
    return CrossAttentionShift.from_variant(variant, heads=2, patches=2, num_heads=3, num_tokens=5, layout=layout)


BLOCKS = {  # every kind of block: the shift Function on heads and tokens, of Q, K, V, in both layouts
    "vit": lambda: vit.Block(24, 3),
    "tokenshift-released": lambda: vit.Block(24, 3, token_shift=TokenShift(24, 4, "released")),
    "KV-released": lambda: vit.Block(24, 3, msca("KV", "released")),
    "Q": lambda: vit.Block(24, 3, msca("Q")),
    "pKV": lambda: vit.Block(24, 3, msca("pKV")),
}


@pytest.mark.parametrize("kind", BLOCKS)
def test_compiled_blocks_give_the_eager_result(kind):
    """fullgraph=True: a graph break (e.g. in the custom shift Function) would raise."""
    torch._dynamo.reset()  # Block.forward's compile cache may be full from the tests before
    torch.manual_seed(0)
    block = BLOCKS[kind]()
    z = torch.randn(2, 4, 5, 24, requires_grad=True)
    weights = torch.randn(2, 4, 5, 24)
    eager = block(z)
    eager_grads = torch.autograd.grad((eager * weights).sum(), [z, *block.parameters()])
    compiled = torch.compile(block, fullgraph=True)(z)
    compiled_grads = torch.autograd.grad((compiled * weights).sum(), [z, *block.parameters()])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["tokenshift", "KV", "pQKV"])
def test_the_whole_model_is_one_graph_with_the_eager_gradients(variant):
    """The shifts change tensors in place: the compiled autograd graph (aot_eager: the same graph inductor gets,
    without its code generation) must give the same gradients."""
    torch.manual_seed(0)
    model = vit.build_model(variant, 5, 3, size="Ti/16", img_size=32, patches=2, shift_layout="released")
    video = torch.randn(2, 3, 3, 32, 32)
    explanation = torch._dynamo.explain(model)(video)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    eager = torch.autograd.grad(model(video).logsumexp(-1).sum(), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(video)
    for a, b in zip(torch.autograd.grad(compiled.logsumexp(-1).sum(), list(model.parameters())), eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_regional_compilation_compiles_one_graph_per_block_kind_with_the_eager_gradients():
    """vit.compile_blocks: 12 blocks of two kinds (plain MSA, then MSCA) are two compiled graphs."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = vit.build_model("pKV", 5, 3, size="Ti/16", img_size=32, patches=2, msca_blocks=4)
    video = torch.randn(2, 3, 3, 32, 32)
    eager = torch.autograd.grad(model(video).logsumexp(-1).sum(), list(model.parameters()))
    names = list(model.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    vit.compile_blocks(model, backend=counter, fullgraph=True)
    compiled = model(video).logsumexp(-1).sum()
    assert counter.frame_count == 2 and list(model.state_dict()) == names
    for a, b in zip(torch.autograd.grad(compiled, list(model.parameters())), eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_train_compile_trains_as_eager_does(videos, tmp_path, monkeypatch):
    """train.py --compile through vit.compile_blocks; aot_eager (inductor's autograd graphs without
    its code generation, which the block tests above cover) keeps the test to seconds."""
    torch._dynamo.reset()  # as in a fresh process: no shapes remembered from the tests before
    counters = []

    def compile_blocks(model, **options):
        counters.append(CompileCounterWithBackend("aot_eager"))
        return vit_compile_blocks(model, backend=counters[-1], **options)

    vit_compile_blocks = vit.compile_blocks
    monkeypatch.setattr(vit, "compile_blocks", compile_blocks)
    for run in ("eager", "compiled"):
        flags = ["--epochs", "2", "--variant", "KV"] + ["--compile"] * (run == "compiled")
        assert train.main(tiny_args(videos, tmp_path / run, *flags)) == 0
    assert len(counters) == 1 and counters[0].frame_count == 1  # one block kind, one graph
    eager, compiled = (load(tmp_path / run / "last.pt") for run in ("eager", "compiled"))
    for key, value in eager["model"].items():
        torch.testing.assert_close(compiled["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    logs = []
    for run in ("eager", "compiled"):
        with open(tmp_path / run / "log.csv", newline="") as f:
            logs.append([float(row[k]) for row in csv.DictReader(f)
                         for k in ("epoch", "step", "train_loss", "train_top1", "val_top1")])
    assert len(logs[0]) == 10 and logs[1] == pytest.approx(logs[0], abs=2e-4)


# ---------------------------------------------------------------------------------------------------------
# mixed precision


def recording_dtypes(monkeypatch, seen, poison_call=None):
    """vit.build_model whose models record the dtype of their logits (and return inf at call `poison_call`)."""
    build_model = vit.build_model

    def hooked(**kwargs):
        model = build_model(**kwargs)

        def hook(module, inputs, output):
            seen.append(output.dtype)
            return output * float("inf") if len(seen) == poison_call else output

        model.head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(vit, "build_model", hooked)


def test_bf16_trains_on_the_cpu(videos, tmp_path, monkeypatch):
    seen = []
    recording_dtypes(monkeypatch, seen)
    assert train.main(tiny_args(videos, tmp_path / "bf16", "--epochs", "1", "--amp", "bf16")) == 0
    assert seen and set(seen) == {torch.bfloat16}  # autocast ran the model in bf16
    ckpt = load(tmp_path / "bf16" / "last.pt")
    assert ckpt["scaler"] is None and all(t.dtype == torch.float32 and torch.isfinite(t).all()
                                          for t in ckpt["model"].values())


def test_fp16_skips_an_overflowing_step_and_goes_on(videos, tmp_path, monkeypatch):
    seen = []
    recording_dtypes(monkeypatch, seen, poison_call=2)  # the 2nd micro-batch's logits are inf
    assert train.main(tiny_args(videos, tmp_path / "fp16", "--epochs", "2", "--amp", "fp16")) == 0
    assert set(seen) == {torch.float16}
    ckpt = load(tmp_path / "fp16" / "last.pt")
    assert ckpt["scaler"]["scale"] == 2.0 ** 15  # 2^16 halved once: one step skipped, the others taken
    assert ckpt["step"] == 4 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ---------------------------------------------------------------------------------------------------------
# DistributedDataParallel: torchrun with 2 processes on the CPU (gloo)

PROBE = textwrap.dedent("""
    import os, sys
    import torch
    sys.path.insert(0, {root!r})
    import train, vit
    models, build_model = [], vit.build_model
    vit.build_model = lambda **kwargs: models.append(build_model(**kwargs)) or models[-1]
    code = train.main(sys.argv[1:])
    torch.save(models[0].state_dict(), os.path.join({out!r}, "rank" + os.environ["RANK"] + ".pt"))
    sys.exit(code)
""")


def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(videos, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(videos, root)
    for name in ("broken1.mp4", "broken2.mp4"):
        (root / "train" / CLASSES[0] / name).write_bytes(b"garbage" * 20)
    (root / "val" / CLASSES[1] / "broken3.mp4").write_bytes(b"garbage" * 20)
    (tmp_path / "probe.py").write_text(PROBE.format(root=ROOT, out=str(tmp_path)))
    common = ["--epochs", "2", "--accum-steps", "1", "--lr-steps", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "probe.py"), *tiny_args(root, tmp_path / "ddp", *common)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load(tmp_path / "rank0.pt"), load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the ranks agree
    ddp = load(tmp_path / "ddp" / "last.pt")
    assert all(torch.equal(ddp["model"][k], rank0[k]) for k in rank0)
    # one process, each batch the two ranks' batches together: the gradient average is right
    single = tmp_path / "single"
    assert train.main(tiny_args(root, single, *common, "--batch-size", "4")) == 0
    one = load(single / "last.pt")["model"]
    for k in one:
        torch.testing.assert_close(ddp["model"][k], one[k], rtol=1e-4, atol=1e-6, msg=k)
    # one log and one set of checkpoints; broken videos counted once and named once, across the ranks
    assert sorted(os.listdir(tmp_path / "ddp")) == ["args.json", "best.pt", "last.pt", "log.csv"]
    with open(tmp_path / "ddp" / "log.csv", newline="") as f:
        assert [row["skipped"] for row in csv.DictReader(f)] == ["3", "3"]
    for name in ("broken1.mp4", "broken2.mp4", "broken3.mp4"):
        assert result.stderr.count(name) == 1, result.stderr[-3000:]
