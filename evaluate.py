"""
Evaluate video models trained by train.py, and benchmark what every variant costs.

The multi-view test of the paper (Sec. 4.1): every video gives clips x crops views (10 temporal
positions x 3 spatial crops = 30 by default); each view is classified, the softmax scores of the
views of one video are averaged, and top-1 / top-5 accuracy is taken over videos.

    python evaluate.py --checkpoint runs/synthetic-KV/best.pt --json runs/synthetic-KV/eval.json
    python evaluate.py --checkpoint runs/KV/best.pt --data /path/to/k400 --annotations validate.csv
    python evaluate.py --speed --json runs/speed.json      # forward+backward cost of all 16 variants
    python evaluate.py --table runs/*/eval.json            # Markdown table from --json outputs
"""
import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

import data
import train
import vit

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, matched against
# torch.cuda.get_device_name(); first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]


class UserError(Exception):
    """A problem with the command line or the files it names: reported as one line, no traceback."""


def first_line(error):
    lines = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {lines[0] if lines else ''}"


# -----------------------------------------------------------------------------
# multi-view scoring

def video_scores(view_logits):
    """(videos, views, classes) logits -> (videos, classes): softmax per view, then mean over views."""
    return view_logits.float().softmax(dim=-1).mean(dim=1)


def topk_hits(scores, labels, k):
    """Bool (videos,): is the true label among the k highest scores? k is capped at the class count."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def per_class_rows(scores, labels, classes):
    """One row per class: how many videos it has and its top-1 / top-5 accuracy in percent."""
    top1, top5 = topk_hits(scores, labels, 1), topk_hits(scores, labels, 5)
    rows = []
    for index, name in enumerate(classes):
        mine = labels == index
        n = int(mine.sum())
        rows.append({"class": name, "videos": n,
                     "top1": 100.0 * float(top1[mine].float().mean()) if n else float("nan"),
                     "top5": 100.0 * float(top5[mine].float().mean()) if n else float("nan")})
    return rows


class SkipBroken(torch.utils.data.Dataset):
    """Yields None for a video that cannot be decoded, so that one bad file never stops a test run.

    KineticsDataset's items replace a broken video by the next good one, which suits training but would
    count that next video twice here; so each video is loaded by index and a broken one is dropped.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset.load(index), self.dataset.labels[index]
        except data.VideoError as e:
            self.dataset.mark_broken(index, e)  # data.py reports it once, with the file name
            return None


def collate_readable(batch):
    """Drop the broken videos of a batch; returns (views, labels, number dropped)."""
    readable = [item for item in batch if item is not None]
    if not readable:
        return None, None, len(batch)
    views, labels = default_collate(readable)
    return views, labels, len(batch) - len(readable)


@torch.no_grad()
def predict_videos(model, dataset, *, device, batch_size=1, workers=0, label_map=None):
    """Run the multi-view test over a KineticsDataset(train=False): load(i) gives (views, 3, T, S, S).

    Returns (scores (videos, classes), labels (videos,), number of broken videos skipped).
    label_map translates dataset label indices to the model's class indices.
    """
    model.eval()
    loader = DataLoader(SkipBroken(dataset), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_readable, pin_memory=device.type == "cuda")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    all_scores, all_labels, skipped = [], [], 0
    for views, labels, dropped in tqdm(loader, desc="test", unit="batch", dynamic_ncols=True):
        skipped += dropped
        if views is None:
            continue
        videos, num_views = views.shape[:2]
        with amp:
            logits = model(views.flatten(0, 1).to(device, non_blocking=True))
        all_scores.append(video_scores(logits.view(videos, num_views, -1)).cpu())
        all_labels.append(labels if label_map is None else label_map[labels])
    if not all_scores:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(all_scores), torch.cat(all_labels), skipped


# -----------------------------------------------------------------------------
# checkpoint -> model -> report

def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UserError(f"--checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--checkpoint {path}: not a readable torch checkpoint ({first_line(e)})")
    missing = [k for k in ("model", "args", "classes") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"--checkpoint {path}: not a train.py checkpoint (missing {', '.join(missing)})")
    return ckpt


def model_from_checkpoint(ckpt, path):
    try:
        model = train.build_model(ckpt["args"], len(ckpt["classes"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"--checkpoint {path}: cannot rebuild the model from its stored arguments ({first_line(e)})")
    return model


def label_map_for(dataset_classes, model_classes, root):
    """Dataset label -> model output index, by class name (the split may hold fewer classes)."""
    unknown = sorted(set(dataset_classes) - set(model_classes))
    if unknown:
        raise UserError(f"--data {root}: classes the checkpoint was not trained on: {', '.join(unknown[:5])}"
                        + (" ..." if len(unknown) > 5 else ""))
    return torch.tensor([model_classes.index(c) for c in dataset_classes])


def per_class_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, ["class", "videos", "top1", "top5"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "top1": f"{r['top1']:.2f}", "top5": f"{r['top5']:.2f}"} for r in rows)
    return out.getvalue()


def run_test(args, device):
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).to(device)
    a = ckpt["args"]
    root = args.data or a.get("data")
    if not root or not os.path.isdir(root):
        raise UserError(f"--data {root}: no such folder")
    if args.annotations and not os.path.isfile(args.annotations):
        raise UserError(f"--annotations {args.annotations}: no such file")
    try:
        dataset = data.KineticsDataset(root, args.split, train=False, annotations=args.annotations,
                                       num_frames=a["frames"], stride=a["stride"], size=a["img_size"],
                                       clips=args.clips, crops=args.crops)
    except (ValueError, OSError) as e:
        raise UserError(f"--data {root} --split {args.split}: {first_line(e)}")
    label_map = label_map_for(dataset.classes, ckpt["classes"], root)

    start = time.time()
    scores, labels, skipped = predict_videos(model, dataset, device=device, batch_size=args.batch_size,
                                             workers=args.workers, label_map=label_map)
    if len(labels) == 0:
        raise UserError(f"--data {root}: none of the {skipped} videos of split {args.split!r} could be read")
    report = {
        "top1": 100.0 * float(topk_hits(scores, labels, 1).float().mean()),
        "top5": 100.0 * float(topk_hits(scores, labels, 5).float().mean()),
        "views": args.clips * args.crops, "clips": args.clips, "crops": args.crops,
        "videos": len(labels), "skipped": skipped, "variant": a["variant"],
        "checkpoint": args.checkpoint, "epoch": ckpt.get("epoch"), "data": root, "split": args.split,
        "classes": len(ckpt["classes"]), "size": a["size"], "img_size": a["img_size"],
        "frames": a["frames"], "seconds": round(time.time() - start, 1),
    }
    print(f"{a['variant']}: top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  over {report['videos']} "
          f"videos x {report['views']} views ({skipped} broken videos skipped)")
    if args.json:
        train.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.per_class:
        train.atomic_write_text(args.per_class, per_class_csv(per_class_rows(scores, labels, ckpt["classes"])))
    return report


# -----------------------------------------------------------------------------
# cost benchmark

def train_flops(model, frames, img_size, batch_size, num_classes):
    """Matmul FLOPs of one forward+backward step, counted analytically (2 FLOPs per multiply-add).

    Per frame, with L = N + 1 tokens of width D, patch size P and MLP width M:
      patch embedding 2*N*3P^2*D, and per block 2*L*D*3D (qkv) + 2*L*L*D (QK^T) + 2*L*L*D (AV)
      + 2*L*D*D (proj) + 2*L*D*M*2 (MLP) + 2*D*C (head, on every frame's class token).
    Backward costs twice the forward.
    MSCA only changes which frame a head's K/V/Q come from and TokenShift moves a few channels,
    so this count is the same for every variant; what the timings show is the real overhead.
    """
    state = model.state_dict()
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    n = (img_size // patch) ** 2
    tokens = n + 1
    block = 2 * tokens * width * 3 * width + 4 * tokens * tokens * width + 2 * tokens * width * width \
        + 4 * tokens * width * mlp
    forward = frames * (2 * n * 3 * patch * patch * width + depth * block + 2 * width * num_classes)
    return 3 * forward * batch_size


def train_step(model, video, labels, amp):
    model.zero_grad(set_to_none=True)
    with amp:
        loss = F.cross_entropy(model(video).float(), labels)
    loss.backward()


def timed_step(model, video, labels, amp, device):
    """Seconds of one forward+backward step and, on a GPU, the peak bytes it allocated."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    start = time.perf_counter()
    train_step(model, video, labels, amp)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() - resident) if cuda else None


def saved_activation_bytes(model, video, labels, amp):
    """Bytes autograd keeps for the backward pass (activations), counted exactly on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step(model, video, labels, amp)
    return sum(storages.values())


def peak_tflops_for(device_name):
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def benchmark_speed(variants, *, size, img_size, frames, batch_size, heads, patches, device,
                    warmup=2, repeats=10, num_classes=400, peak_tflops=None):
    """Forward+backward cost of every variant, measured round-robin so drift hits all of them alike.

    Returns one dict per variant with the median step time, clips/s, activation memory, and ratios
    to the first variant (vit).
    """
    torch.manual_seed(0)
    models = {v: vit.build_model(v, num_classes, frames, size=size, img_size=img_size, heads=heads,
                                 patches=patches).to(device).train() for v in variants}
    video = torch.rand(batch_size, 3, frames, img_size, img_size, device=device) * 2 - 1
    labels = torch.randint(num_classes, (batch_size,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    saved = {v: saved_activation_bytes(models[v], video, labels, amp) for v in variants}
    for _ in tqdm(range(warmup), desc="warm-up", dynamic_ncols=True):
        for v in variants:
            train_step(models[v], video, labels, amp)
    times, peaks = {v: [] for v in variants}, {v: 0 for v in variants}
    for r in tqdm(range(repeats), desc="timing", dynamic_ncols=True):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:  # rotated: no variant always first
            seconds, peak = timed_step(models[v], video, labels, amp, device)
            times[v].append(seconds)
            peaks[v] = max(peaks[v], peak or 0)

    flops = train_flops(models[variants[0]], frames, img_size, batch_size, num_classes)
    base = variants[0]
    rows = []
    for v in variants:
        step = statistics.median(times[v])
        row = {"variant": v, "step_ms": 1000 * step, "ratio": step / statistics.median(times[base]),
               "clips_per_s": batch_size / step, "activation_mib": saved[v] / 2**20,
               "activation_ratio": saved[v] / saved[base], "gflop_per_step": flops / 1e9,
               "tflops": flops / step / 1e12}
        if device.type == "cuda":
            row["peak_mib"] = peaks[v] / 2**20
            row["peak_ratio"] = peaks[v] / peaks[base]
        if peak_tflops:
            row["mfu"] = row["tflops"] / peak_tflops
        rows.append(row)
    return rows


def speed_table(rows):
    cols = [("variant", "variant", "{}"), ("step ms", "step_ms", "{:.1f}"), ("x ViT", "ratio", "{:.3f}"),
            ("clips/s", "clips_per_s", "{:.1f}"), ("activations MiB", "activation_mib", "{:.1f}"),
            ("x ViT", "activation_ratio", "{:.3f}")]
    if "peak_mib" in rows[0]:
        cols += [("peak MiB", "peak_mib", "{:.0f}"), ("x ViT", "peak_ratio", "{:.3f}")]
    cols += [("TFLOP/s", "tflops", "{:.3f}")]
    if "mfu" in rows[0]:
        cols += [("MFU", "mfu", "{:.1%}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_speed(args, device):
    cuda = device.type == "cuda"
    # the paper's B/16 at 224 on a GPU; on a CPU a small model so all 16 variants take about a minute
    size = args.size or ("B/16" if cuda else "Ti/16")
    img_size = args.img_size or (224 if cuda else 112)
    batch_size = args.batch_size or (8 if cuda else 2)
    device_name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    peak = args.peak_tflops or (peak_tflops_for(device_name) if cuda else None)
    try:
        rows = benchmark_speed(["vit"] + [v for v in args.variants if v != "vit"], size=size, img_size=img_size, frames=args.frames,
                               batch_size=batch_size, heads=args.heads, patches=args.patches, device=device,
                               warmup=args.warmup, repeats=args.repeats, peak_tflops=peak)
    except ValueError as e:
        raise UserError(f"--speed: {first_line(e)}")
    precision = "bf16 autocast" if cuda else "fp32"
    title = (f"{device_name}, {size} at {img_size}px, {args.frames} frames, batch {batch_size}, {precision}, "
             f"median of {args.repeats} interleaved forward+backward steps"
             + (f", MFU against {peak:g} TFLOP/s" if peak else ""))
    print(title)
    print(speed_table(rows))
    worst = max(rows, key=lambda r: r["ratio"])
    print(f"slowest relative to vit: {worst['variant']} at {worst['ratio']:.3f}x "
          f"({'within' if worst['ratio'] <= 1.05 else 'over'} the 1.05x goal)")
    if args.json:
        report = {"device": device_name, "size": size, "img_size": img_size, "frames": args.frames,
                  "batch_size": batch_size, "precision": precision, "repeats": args.repeats,
                  "peak_tflops": peak, "rows": rows}
        train.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return rows


# -----------------------------------------------------------------------------
# results table from --json files

def results_table(paths):
    lines = ["| variant | top-1 % | top-5 % | videos | views | skipped | checkpoint (epoch) |",
             "|---|---|---|---|---|---|---|"]
    for path in paths:
        try:
            with open(path) as f:
                r = json.load(f)
            lines.append(f"| {r['variant']} | {r['top1']:.1f} | {r['top5']:.1f} | {r['videos']} | {r['views']} "
                         f"| {r['skipped']} | {r['checkpoint']} ({r.get('epoch')}) |")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--table {path}: not an evaluate.py --json report ({first_line(e)})")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, without argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse_args(argv=None):
    p = Parser(prog="evaluate.py", description=__doc__.split("\n\n")[0].strip())
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--checkpoint", help="train.py checkpoint to test (e.g. runs/kv/best.pt)")
    mode.add_argument("--speed", action="store_true", help="benchmark the cost of all variants")
    mode.add_argument("--table", nargs="+", metavar="JSON", help="print a Markdown table of --json reports")
    p.add_argument("--data", help="dataset root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="split folder under --data (default: val)")
    p.add_argument("--annotations", help="annotation CSV for the split (Kinetics layout)")
    p.add_argument("--clips", type=positive_int, default=10, help="temporal positions per video (default 10)")
    p.add_argument("--crops", type=positive_int, default=3, help="spatial crops per clip (default 3)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes")
    p.add_argument("--json", help="write the report here as JSON")
    p.add_argument("--per-class", help="write per-class accuracy here as CSV")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=positive_int,
                   help="test: videos per forward (default 1); speed: clips per step (default 8 GPU, 2 CPU)")
    p.add_argument("--size", choices=["Ti/16", "S/16", "B/16", "L/16"], help="speed: ViT size (B/16 GPU, Ti/16 CPU)")
    p.add_argument("--img-size", type=positive_int, help="speed: frame size (default 224 GPU, 112 CPU)")
    p.add_argument("--frames", type=positive_int, default=8, help="speed: frames per clip (default 8)")
    p.add_argument("--variants", nargs="+", choices=vit.VARIANTS, default=list(vit.VARIANTS),
                   help="speed: variants to time against vit (default: all 16)")
    p.add_argument("--heads", type=positive_int, default=2, help="speed: heads MSCA shifts (default 2)")
    p.add_argument("--patches", type=positive_int, default=16, help="speed: patches pMSCA shifts (default 16)")
    p.add_argument("--warmup", type=positive_int, default=2, help="speed: untimed steps per variant")
    p.add_argument("--repeats", type=positive_int, default=10, help="speed: timed steps per variant")
    p.add_argument("--peak-tflops", type=float, help="speed: GPU peak for MFU (default from the GPU name)")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error(f"--workers {args.workers}: must be 0 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.table:
            print(results_table(args.table))
            return
        try:
            device = torch.device(args.device)
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            raise UserError(f"--device {args.device}: not usable ({first_line(e)})")
        if args.speed:
            return run_speed(args, device)
        if args.batch_size is None:
            args.batch_size = 1
        return run_test(args, device)
    except UserError as e:
        sys.exit(f"evaluate.py: error: {e}")


if __name__ == "__main__":
    main()
