"""What every variant and the loader cost. The model: forward+backward steps of every variant
against ViT, timed in turns so that a shared machine's drift hits all alike: median step time,
clips/s, saved activations, peak memory (GPU), TFLOP/s and MFU. MSCA computes exactly MSA's FLOPs;
what it costs beyond is the shift's copy. The loader: training clips/s of datasets on one core and
with DataLoader workers, e.g. the prepared copy against the original videos.

    python bench.py                                   # all 16 variants against vit
    python bench.py --variants tokenshift KV pKV --repeats 20 --json cost.json
    python bench.py --compile --optimizer-step sgd-fused --against-authors
    python bench.py --loader k400-288 k400 --annotations k400/train.csv --workers 4
"""
import argparse
import json
import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext


def interrupted(signum, frame):  # while the imports below load: one line, not a traceback
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
    os._exit(130)  # nothing started yet that would need finishing


SIGINT_HANDLER = signal.signal(signal.SIGINT, interrupted)
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

import data
import vit
signal.signal(signal.SIGINT, SIGINT_HANDLER)  # Python's own again: main() answers a Ctrl-C

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, matched against the GPU's
# name; the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZERS = ("sgd", "sgd-fused", "adamw", "adamw-fused")
AUTHORS = "vit (fp32, math attention)"  # their code: fp32, attention as matmul and softmax
GPU_CLIPS = 450  # clips/s a GPU trains on: the loader's cores needed to keep up
# the least value of each number (--shift-div 1: all D channels from t-1, none from t+1)
LEAST = dict(img_size=1, frames=1, batch_size=1, warmup=1, repeats=1, clips=1, stride=1,
             shift_div=2)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = data.refuse
    add = p.add_argument
    add("--loader", nargs="+", metavar="ROOT", help="time the loader on these datasets instead")
    add("--variants", nargs="+", choices=vit.VARIANTS, default=list(vit.VARIANTS),
        help="variants to time against vit (default: all 16)")
    add("--size", choices=vit.SIZES, help="ViT size (default B/16 on a GPU, Ti/16 on CPU)")
    add("--img-size", type=int, help="frame size (default 224; model on CPU: 112)")
    add("--frames", type=int, default=8, help="frames per clip (default 8)")
    add("--heads", type=int, default=2, help="heads MSCA shifts (default 2)")
    add("--patches", type=int, default=16, help="patches pMSCA shifts (default 16)")
    add("--shift-div", type=int, default=4, help="TokenShift moves D/div channels each way (4)")
    add("--shift-layout", choices=vit.LAYOUTS, default="paper", help="who looks back (paper)")
    add("--batch-size", type=int, help="clips per step (default 21 on a GPU, 2 on CPU)")
    add("--amp", choices=vit.AMP, default="auto", help="auto: bf16 on a GPU with it, CPU fp32")
    add("--device", type=vit.usable_device, default="cuda" if torch.cuda.is_available() else "cpu")
    add("--warmup", type=int, default=2, help="untimed steps per variant (default 2)")
    add("--repeats", type=int, default=10, help="timed steps per variant (default 10)")
    add("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default from its name)")
    add("--compile", action="store_true", help="time vit.compile_blocks models")
    add("--compile-mode", choices=COMPILE_MODES, help="torch.compile's mode (implies --compile)")
    add("--optimizer-step", choices=OPTIMIZERS, help="time the optimizer's step too (lr 1e-6)")
    add("--against-authors", action="store_true", help=f"also time {AUTHORS!r}, as they ran ViT")
    add("--json", help="write the model report here as JSON")
    add("--annotations", help="--loader: the videos' list (Kinetics CSV or list file)")
    add("--workers", type=int, default=0, help="--loader: DataLoader workers (default 0)")
    add("--clips", type=int, default=100, help="--loader: clips per dataset (default 100)")
    add("--stride", type=int, default=32, help="--loader: frames between sampled frames (32)")
    args = p.parse_args(argv)
    for flag, least in LEAST.items():
        value = getattr(args, flag)
        if value is not None and value < least:
            p.error(f"--{flag.replace('_', '-')} {value}: must be at least {least}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        p.error(f"--peak-tflops {args.peak_tflops}: must be a positive number of TFLOP/s")
    if args.json:
        data.check_writable(args.json)
    return args


# the model ---------------------------------------------------------------------------------------
def train_flops(model, frames, img_size, batch_size, num_classes):
    """Matmul FLOPs of one forward+backward step, counted analytically (2 per multiply-add).

    Per frame, with L = N + 1 tokens of width D, patch size P and MLP width M: patch embedding
    2*N*3P^2*D; per block 2*L*D*3D (qkv) + 2*L*L*D (QK^T) + 2*L*L*D (AV) + 2*L*D*D (proj)
    + 2*L*D*M*2 (MLP); head 2*D*C on every frame's class token; backward twice the forward. The
    same for every variant: the shifts move values, not FLOPs; the timings show their overhead."""
    state = model.state_dict()
    width, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    mlp, depth = state["blocks.0.mlp.fc1.weight"].shape[0], len(model.blocks)
    n = (img_size // patch) ** 2
    tokens = n + 1
    block = (2 * tokens * width * 3 * width + 4 * tokens * tokens * width
             + 2 * tokens * width * width + 4 * tokens * width * mlp)
    frame = 2 * n * 3 * patch * patch * width + depth * block + 2 * width * num_classes
    return 3 * batch_size * frames * frame


def make_optimizer(name, model):
    """One of OPTIMIZERS; lr 1e-6 so that timing steps barely move the weights."""
    kind, _, fused = name.partition("-")
    optimizer = torch.optim.SGD if kind == "sgd" else torch.optim.AdamW
    options = dict(momentum=0.9) if kind == "sgd" else {}
    return optimizer(model.parameters(), lr=1e-6, fused=bool(fused) or None, **options)


def timed_step(model, video, labels, amp_dtype, optimizer=None):
    """Seconds of one forward+backward step and, on a GPU, its peak bytes beyond the weights."""
    cuda = video.device.type == "cuda"
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter()
    with vit.autocast(video.device, amp_dtype):
        loss = F.cross_entropy(model(video).float(), labels)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() - resident if cuda else None)


def saved_activation_bytes(model, video, labels, amp_dtype):
    """Bytes autograd keeps for backward (each storage counted once, weights not), any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        timed_step(model, video, labels, amp_dtype)
    return sum(storages.values())


def benchmark_speed(variants, *, size, img_size, frames, batch_size, device, shapes=None,
                    amp_dtype=None, warmup=2, repeats=10, num_classes=400, peak_tflops=None,
                    compile_options=None, optimizer=None):
    """A row per variant: median step time, ratios against the first (vit), clips/s, saved
    activations, peak memory (GPU), TFLOP/s, MFU; timed round-robin. AUTHORS: ViT as their code
    runs it. shapes: build_model's heads, patches, shift_div, shift_layout;
    compile_options: of vit.compile_blocks (None: eager); optimizer: one of OPTIMIZERS."""
    torch.manual_seed(0)
    models = {v: vit.build_model("vit" if v == AUTHORS else v, num_classes, frames, size=size,
                                 img_size=img_size, **(shapes or {})).to(device).train()
              for v in variants}
    video = torch.rand(batch_size, 3, frames, img_size, img_size, device=device) * 2 - 1
    labels = torch.randint(num_classes, (batch_size,), device=device)
    optimizers = {v: optimizer and make_optimizer(optimizer, models[v]) for v in variants}

    def step(v, run=timed_step, **extra):
        # AUTHORS: the math backend (matmul, softmax); SDPA chooses its kernel for the others
        with sdpa_kernel(SDPBackend.MATH) if v == AUTHORS else nullcontext():
            return run(models[v], video, labels, None if v == AUTHORS else amp_dtype, **extra)

    saved = {v: step(v, saved_activation_bytes) for v in variants}
    # each block kind is an entry of Block.forward's compile cache: past the limit it runs eagerly
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, len(variants))
    for v in variants:
        if compile_options is not None and v != AUTHORS:
            vit.compile_blocks(models[v], **compile_options)
    first_step = {}  # seconds, compilation included
    for _ in tqdm(range(warmup), desc="warm-up", dynamic_ncols=True):
        for v in variants:
            first_step.setdefault(v, step(v, optimizer=optimizers[v])[0])
    times, peaks = {v: [] for v in variants}, {v: 0 for v in variants}
    for r in tqdm(range(repeats), desc="timing", dynamic_ncols=True):
        first = r % len(variants)
        for v in variants[first:] + variants[:first]:  # rotated: no variant always first
            seconds, peak = step(v, optimizer=optimizers[v])
            times[v].append(seconds)
            peaks[v] = max(peaks[v], peak or 0)
    flops = train_flops(models[variants[0]], frames, img_size, batch_size, num_classes)
    base, steps = variants[0], {v: statistics.median(times[v]) for v in variants}
    rows = []
    for v, seconds in steps.items():
        rows.append({"variant": v, "step_ms": 1000 * seconds, "ratio": seconds / steps[base],
                     "first_step_s": first_step[v], "clips_per_s": batch_size / seconds,
                     "activation_mib": saved[v] / 2**20, "activation_ratio": saved[v] / saved[base],
                     "tflops": flops / seconds / 1e12})
        if device.type == "cuda":
            rows[-1].update(peak_mib=peaks[v] / 2**20, peak_ratio=peaks[v] / peaks[base])
        if peak_tflops:
            rows[-1]["mfu"] = rows[-1]["tflops"] / peak_tflops
    return rows


def speed_table(rows):
    cols = [("variant", "variant", "{}"), ("step ms", "step_ms", "{:.1f}"),
            ("x ViT", "ratio", "{:.3f}"), ("1st step s", "first_step_s", "{:.1f}"),
            ("clips/s", "clips_per_s", "{:.1f}"),
            ("saved activations MiB", "activation_mib", "{:.1f}"),
            ("x ViT", "activation_ratio", "{:.3f}"), ("peak MiB", "peak_mib", "{:.0f}"),
            ("x ViT", "peak_ratio", "{:.3f}"), ("TFLOP/s", "tflops", "{:.1f}"),
            ("MFU", "mfu", "{:.1%}")]
    cols = [c for c in cols if c[1] in rows[0]]
    cells = [[name for name, _, _ in cols]] + [[f.format(r[k]) for _, k, f in cols] for r in rows]
    lines = ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cols), *lines[1:]])


def run_speed(args, device):
    cuda = device.type == "cuda"
    # on a GPU the paper's B/16 at 224 px with its 21 clips per GPU; on a CPU a small model
    size = args.size or ("B/16" if cuda else "Ti/16")
    img_size, frames = args.img_size or (224 if cuda else 112), args.frames
    batch_size = args.batch_size or (21 if cuda else 2)
    amp_dtype = vit.amp_dtype(args.amp, device)
    threads = f"CPU, {torch.get_num_threads()} threads"
    device_name = torch.cuda.get_device_name(device) if cuda else threads
    peak = args.peak_tflops or next((t for n, t in PEAK_BF16_TFLOPS if n in device_name), None)
    compiled = args.compile or args.compile_mode is not None
    variants = ["vit"] + [v for v in args.variants if v != "vit"] + [AUTHORS] * args.against_authors
    shapes = dict(heads=args.heads, patches=args.patches, shift_div=args.shift_div,
                  shift_layout=args.shift_layout)
    rows = benchmark_speed(variants, size=size, img_size=img_size, frames=frames,
                           batch_size=batch_size, shapes=shapes, device=device, amp_dtype=amp_dtype,
                           warmup=args.warmup, repeats=args.repeats, peak_tflops=peak,
                           optimizer=args.optimizer_step,
                           compile_options=dict(mode=args.compile_mode) if compiled else None)
    precision = f"{amp_dtype} autocast" if amp_dtype else "fp32"
    if compiled:
        precision += f", vit.compile_blocks (mode {args.compile_mode or 'default'})"
    if args.optimizer_step:
        precision += f", with the {args.optimizer_step} optimizer step"
    title = (f"{device_name}, torch {torch.__version__}, {size} at {img_size} px, "
             f"{frames} frames, batch {batch_size}, {precision}, "
             f"median of {args.repeats} interleaved forward+backward steps")
    if peak:
        title += f", MFU against a dense bf16 peak of {peak:g} TFLOP/s"
    print(title, speed_table(rows), sep="\n")
    ours = rows[:len(rows) - args.against_authors]  # AUTHORS comes last
    worst, most = max(ours, key=lambda r: r["ratio"]), max(r["activation_ratio"] for r in ours)
    print(f"slowest relative to vit: {worst['variant']} at {worst['ratio']:.3f}x; "
          f"most activations: {most:.3f}x vit")
    if args.against_authors:  # on a CPU both run fp32: only the attention backend differs there
        same = "" if amp_dtype else " (both fp32 here: only the attention backend differs)"
        print(f"{AUTHORS}: {rows[-1]['ratio']:.3f}x the step time of ours{same}")
    if args.json:
        report = dict(title=title, device=device_name, size=size, img_size=img_size, frames=frames,
                      batch_size=batch_size, precision=precision, peak_tflops=peak, rows=rows)
        with data.atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=2)
    return rows


# the loader --------------------------------------------------------------------------------------
def loader_cost(roots, *, annotations=None, workers=0, clips=100, img_size=224, num_frames=8,
                stride=32):
    """Training clips/s (decoding, augmentation) of each dataset on one core, in turns clip by clip
    so that a shared machine's noise hits all alike, and with `workers` DataLoader workers."""
    torch.set_num_threads(1)
    sets = {root: data.KineticsDataset(root, annotations=annotations, num_frames=num_frames,
                                       stride=stride, img_size=img_size) for root in roots}
    picks = [turn * 7919 % min(map(len, sets.values())) for turn in range(clips)]  # scattered
    seconds = dict.fromkeys(roots, 0.0)
    for i in tqdm(picks, desc="one core", leave=False):
        for root, dataset in sets.items():
            start = time.perf_counter()
            dataset[i]  # a broken video: skipped, the next one taken
            seconds[root] += time.perf_counter() - start
    for root, dataset in sets.items():
        one_core = clips / seconds[root]
        decoded, frames, size = [], 0, 0
        for i in (i for i in dict.fromkeys(picks) if not dataset.broken[i]):
            capture, n, seekable = data.open_video(dataset.videos[i])
            capture.release()
            rng = np.random.default_rng([*dataset.epoch_seed, i, i])  # the item's own draw
            indices = data.train_clip_indices(n, num_frames, stride, rng)
            decoded.append(len(np.unique(indices)) if seekable else indices.max() + 1)
            frames, size = frames + n, size + os.path.getsize(dataset.videos[i])
        sampler = RandomSampler(dataset, replacement=True, num_samples=clips + workers)
        batches = iter(DataLoader(dataset, batch_size=1, num_workers=workers, sampler=sampler))
        for _ in range(workers):  # not timed: the workers' start
            next(batches)
        start = time.perf_counter()
        parallel = sum(1 for _ in batches) / (time.perf_counter() - start)
        per_frame = size / frames
        print(f"{root}: one core {one_core:.1f} clips/s ({np.mean(decoded):.0f} frames decoded "
              f"per clip); {workers} workers {parallel:.1f} clips/s; {per_frame / 1e3:.1f} kB per "
              f"frame ({per_frame * 72e6 / 1e12:.2f} TB for Kinetics-400's 240k clips of 300 "
              f"frames); {GPU_CLIPS} clips/s: {GPU_CLIPS / one_core:.1f} cores")


def main(argv=None):
    try:
        args = parse_args(argv)
        if not args.loader:
            return run_speed(args, args.device)
        return loader_cost(args.loader, annotations=args.annotations, workers=args.workers,
                           clips=args.clips, img_size=args.img_size or 224,
                           num_frames=args.frames, stride=args.stride)
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, data.VideoError) as error:
        print(f"bench.py: error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
