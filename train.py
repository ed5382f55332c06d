"""Train a frame-wise ViT, TokenShift or MSCA model for action recognition.

The paper's recipe on Kinetics-400 (SGD, lr 0.1 / 10 at epoch 10, 12 epochs, 21 clips per GPU x 10
accumulation steps, ImageNet-21k ViT-B/16):
    python train.py --variant KV --data /path/to/k400 --pretrained ViT-B_16.npz
    torchrun --nproc_per_node 2 train.py --variant KV --data /path/to/k400 --pretrained ViT-B_16.npz
Without --data it trains a small model from scratch on a synthetic task whose classes differ only in
temporal order, on CPU, in a few minutes:
    python train.py --variant KV

Writes OUT/args.json, OUT/log.csv (one row per epoch), OUT/last.pt (every epoch) and OUT/best.pt (best
validation top-1). `--resume` continues OUT/last.pt exactly where it stopped; `--epochs` may be raised.
"""
import argparse
import csv
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import data
import vit

# -----------------------------------------------------------------------------------------------------------
# Arguments. Flags default to None so that we can tell the ones the user set: those always win, over the
# recipe defaults below and, with --resume, over the arguments stored in the checkpoint.

COMMON = dict(variant="KV", heads=2, patches=16, msca_blocks=None, shift_div=4, momentum=0.9,
              label_smoothing=0.01, clip_grad=1.0, amp="auto", seed=0, compile=False, resume=False)
# Hashiguchi & Tamaki, Sec. 4.1: 8 frames, stride 32, 224 px, SGD 0.9, lr 0.1 / 10 at epoch 10, 12 epochs,
# 21 clips per GPU on 2 GPUs with an update every 10 iterations (effective batch 420).
PAPER = dict(size="B/16", img_size=224, frames=8, stride=32, epochs=12, optimizer="sgd", lr=0.1, lr_steps=[10],
             weight_decay=0.0, batch_size=21, accum_steps=10, workers=8)
# Small enough for 2 CPU cores in a few minutes: ViT-Ti, 4 frames of 64 px, from scratch on the synthetic task.
# From scratch (no pretrained weights to keep close to) AdamW finds the motion after 250-400 steps of 16 clips;
# SGD (lr 0.01-0.05) was slower in our tries, and plain ViT stays at chance whatever the optimizer.
SMALL = dict(size="Ti/16", img_size=64, frames=4, stride=10, epochs=6, optimizer="adamw", lr=3e-4, lr_steps=[5],
             weight_decay=0.05, batch_size=16, accum_steps=1, workers=1)
SYNTHETIC_VIDEOS = dict(train_per_class=1000, val_per_class=50, num_frames=32, size=96)
SYNTHETIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache",
                             f"synthetic-v{data.SYNTHETIC_VERSION}-{{train_per_class}}-{{val_per_class}}-"
                             "{num_frames}x{size}".format(**SYNTHETIC_VIDEOS))
MODEL_KWARGS = ("size", "img_size", "heads", "patches", "msca_blocks", "shift_div")  # of vit.build_model
FIXED_ON_RESUME = ("variant", *MODEL_KWARGS, "optimizer")
LOG_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "clips_per_s",
               "skipped", "seconds")


class UserError(Exception):
    """Bad flags or input files: reported as one line, exit status 2."""


class NonFiniteLoss(Exception):
    """The loss became NaN or inf: training stops, exit status 1, checkpoints stay as they were."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UserError(message)


def parse_args(argv):
    def default(key):
        if key in COMMON:
            return f" (default: {COMMON[key]})"
        return f" (default: {PAPER[key]}; without --data: {SMALL[key]})"

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", help="vit, tokenshift, Q K V QK KV QV QKV, pQ ... pQKV" + default("variant"))
    p.add_argument("--heads", type=int, help="heads shifted in total, half to t-1, half to t+1" + default("heads"))
    p.add_argument("--patches", type=int, help="tokens shifted in total by the p* variants" + default("patches"))
    p.add_argument("--msca-blocks", type=int, help="MSCA in the last k blocks only (default: all)")
    p.add_argument("--shift-div", type=int, help="TokenShift shifts D/div channels each way" + default("shift_div"))
    p.add_argument("--size", help="ViT size: Ti/16, S/16, B/16, L/16" + default("size"))
    p.add_argument("--img-size", type=int, help="frame size in pixels" + default("img_size"))
    p.add_argument("--frames", type=int, help="frames per clip" + default("frames"))
    p.add_argument("--stride", type=int, help="frames between sampled frames" + default("stride"))
    p.add_argument("--pretrained", help="ViT weights: Google .npz (e.g. ViT-B_16.npz) or a timm state dict")
    p.add_argument("--data", help="dataset root with train/ and val/ (default: the synthetic task)")
    p.add_argument("--annotations", help="annotation file listing the videos (see data.py)")
    p.add_argument("--epochs", type=int, help="total epochs" + default("epochs"))
    p.add_argument("--lr", type=float, help="learning rate" + default("lr"))
    p.add_argument("--lr-steps", type=int, nargs="*", help="epochs where lr is divided by 10" + default("lr_steps"))
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help=default("optimizer").strip(" ()"))
    p.add_argument("--momentum", type=float, help="SGD momentum" + default("momentum"))
    p.add_argument("--weight-decay", type=float, help=default("weight_decay").strip(" ()"))
    p.add_argument("--batch-size", type=int, help="clips per GPU and micro-batch" + default("batch_size"))
    p.add_argument("--accum-steps", type=int, help="micro-batches per optimizer step" + default("accum_steps"))
    p.add_argument("--label-smoothing", type=float, help=default("label_smoothing").strip(" ()"))
    p.add_argument("--clip-grad", type=float, help="max gradient norm, 0: off" + default("clip_grad"))
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                   help="auto: bf16 on GPUs that have it, else fp16 with loss scaling; fp32 on CPU")
    p.add_argument("--workers", type=int, help="data loading processes per GPU" + default("workers"))
    p.add_argument("--out", help="output folder (default: runs/<variant>, runs/synthetic-<variant> without --data)")
    p.add_argument("--resume", action="store_true", default=None, help="continue OUT/last.pt")
    p.add_argument("--seed", type=int, help=default("seed").strip(" ()"))
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


def resolve_args(given):
    """The run's arguments: what the user set, else those of the run being resumed, else the defaults."""
    variant = given.get("variant", COMMON["variant"])
    out = given.get("out") or os.path.join("runs", variant if given.get("data") else f"synthetic-{variant}")
    last = os.path.join(out, "last.pt")
    if given.get("resume"):
        if not os.path.isfile(last):
            raise UserError(f"--resume: {last} does not exist (pass the --out or --variant of the run)")
        saved = read_checkpoint(last)
        changed = [f"--{k.replace('_', '-')} (the run has {saved['args'][k]})" for k in FIXED_ON_RESUME
                   if k in given and given[k] != saved["args"][k]]
        if changed:
            raise UserError(f"--resume: the model and optimizer of {out} cannot change: {', '.join(changed)}")
        args = {**saved["args"], **given, "out": out}
        args["synthetic"] = saved["args"]["synthetic"] and "data" not in given
    else:
        if os.path.exists(last):
            raise UserError(f"{last} already exists: pass --resume to continue that run, or another --out")
        args = {**COMMON, **(PAPER if given.get("data") else SMALL), "annotations": None, "pretrained": None,
                **given, "out": out, "synthetic": "data" not in given}
        if args["synthetic"]:
            args["data"] = SYNTHETIC_DIR  # made on first use; stored in the checkpoint for evaluate.py
    check_args(args)
    return argparse.Namespace(**args)


def check_args(a):
    if a["variant"] not in vit.VARIANTS:
        raise UserError(f"--variant {a['variant']!r} is unknown; choose one of {', '.join(vit.VARIANTS)}")
    for key in ("frames", "stride", "epochs", "batch_size", "accum_steps", "img_size"):
        if a[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} {a[key]}: must be at least 1")
    for key in ("lr", "momentum", "weight_decay", "label_smoothing", "clip_grad", "workers"):
        if not a[key] >= 0:
            raise UserError(f"--{key.replace('_', '-')} {a[key]}: must be >= 0")
    if a["label_smoothing"] >= 1:
        raise UserError(f"--label-smoothing {a['label_smoothing']}: must be below 1")
    if not a["synthetic"] and not os.path.isdir(a["data"]):
        raise UserError(f"--data {a['data']}: no such folder")
    for key in ("annotations", "pretrained"):
        if a[key] is not None and not os.path.isfile(a[key]):
            raise UserError(f"--{key} {a[key]}: no such file")


# -----------------------------------------------------------------------------------------------------------
# Distributed setup, seeding, precision


def setup_distributed():
    """(rank, world size, device); torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def seed_epoch(seed, epoch, rank):
    """Seeds every RNG from (seed, epoch, rank) alone: an epoch replays identically after --resume on every
    rank (the checkpoint holds rank 0's RNG states only) and with any number of DataLoader workers."""
    state = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(state)
    np.random.seed(state)
    torch.manual_seed(state)  # also seeds every CUDA device


def rng_states():
    """The RNG states, as tensors and plain values so that `torch.load(weights_only=True)` reads them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                   gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states):
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def autocast_dtype(amp, device):
    """None for fp32; fp32 is the `auto` choice on CPU, where bf16/fp16 autocast is slower."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# -----------------------------------------------------------------------------------------------------------
# Data


def make_synthetic(root, rank):
    """Rank 0 makes the synthetic dataset on first use (data.py reuses it after that); the others wait."""
    if rank == 0:
        try:
            data.make_synthetic(root, **SYNTHETIC_VIDEOS)
        except (OSError, data.VideoError) as error:
            raise UserError(f"synthetic dataset: {error}") from None
    if dist.is_initialized():
        dist.barrier()


def open_split(args, split, train):
    """The split as a dataset. Validation uses one view per video."""
    views = {} if train else dict(clips=1, crops=1)
    try:
        return data.KineticsDataset(args.data, split, train=train, annotations=args.annotations,
                                    num_frames=args.frames, stride=args.stride, size=args.img_size, **views)
    except (OSError, ValueError) as error:
        raise UserError(f"--data {args.data}: {error}") from None


def make_loader(dataset, args, rank, world, train, device):
    """Training: a shuffled DistributedSampler, whose order depends on (seed, epoch) only, and full batches
    so that every micro-batch weighs the same. Validation: every rank takes every world-th video."""
    common = dict(batch_size=args.batch_size, num_workers=args.workers, pin_memory=device.type == "cuda")
    if train:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed, drop_last=True)
        return DataLoader(dataset, sampler=sampler, drop_last=True, **common)
    return DataLoader(Subset(dataset, range(rank, len(dataset), world)), **common)


# -----------------------------------------------------------------------------------------------------------
# Training and validation


def build_model(args, num_classes):
    """The model that a run's arguments (a dict, as stored in its checkpoints) describe."""
    return vit.build_model(args["variant"], num_classes, args["frames"], **{k: args[k] for k in MODEL_KWARGS})


def make_optimizer(model, args):
    if args.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def lr_at(args, epoch):
    """Step schedule: lr, divided by 10 at each epoch of --lr-steps (0-based: 10 = from the 11th epoch)."""
    return args.lr * 0.1 ** sum(epoch >= step for step in args.lr_steps)


def train_one_epoch(model, loader, optimizer, criterion, *, accum_steps, scaler, amp_dtype=None, clip_grad=0.0,
                    desc="train", show_bar=False):
    """One pass over `loader`; the optimizer steps every `accum_steps` micro-batches and at the end.
    Returns the mean loss, top-1 (%), clips, seconds and optimizer steps of this process."""
    model.train()
    device = next(model.parameters()).device
    distributed = isinstance(model, DistributedDataParallel)
    world = dist.get_world_size() if distributed else 1
    num_batches = len(loader)
    loss_sum, correct, clips, window_loss, steps = (torch.zeros((), device=device) for _ in range(5))
    start = time.time()
    bar = tqdm(loader, desc, disable=not show_bar, dynamic_ncols=True)
    for i, (video, label) in enumerate(bar):
        video, label = video.to(device, non_blocking=True), label.to(device, non_blocking=True)
        window_start = i - i % accum_steps
        window_len = min(accum_steps, num_batches - window_start)  # the last window of an epoch may be short
        stepping = i == window_start + window_len - 1
        # DDP all-reduces gradients in backward; between optimizer steps only the local sum is needed
        with nullcontext() if stepping or not distributed else model.no_sync():
            with autocast(device, amp_dtype):
                logits = model(video)
            loss = criterion(logits.float(), label)
            # Each micro-batch's mean loss weighs 1/window_len, so the summed gradients are those of the
            # mean loss over the whole window: one batch of batch_size x window_len clips.
            scaler.scale(loss / window_len).backward()
        window_loss += loss.detach()
        loss_sum += loss.detach() * len(label)
        correct += (logits.argmax(1) == label).sum()
        clips += len(label)
        if not stepping:
            continue
        if distributed:
            dist.all_reduce(window_loss)  # every rank must see a NaN to stop together
        mean_loss = window_loss.item() / (window_len * world)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"loss is {mean_loss} at micro-batch {i + 1}/{num_batches} of this epoch")
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)  # with fp16, skips steps whose gradients overflowed and lowers the scale
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_loss.zero_()
        steps += 1
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                        clips_s=f"{clips.item() * world / (time.time() - start):.1f}")
    seconds = time.time() - start
    n = max(clips.item(), 1)
    return dict(loss=loss_sum.item() / n, top1=100 * correct.item() / n, clips=clips.item(), seconds=seconds,
                steps=int(steps.item()))


@torch.no_grad()
def validate(model, loader, amp_dtype, show_bar=False):
    """Top-1 and top-5 (%) over all ranks, one view per video."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(3, device=device)  # top-1 hits, top-5 hits, videos
    for video, label in tqdm(loader, "val", disable=not show_bar, dynamic_ncols=True, leave=False):
        video, label = video[:, 0].to(device, non_blocking=True), label.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(video)
        top5 = logits.topk(min(5, logits.size(1)), dim=1).indices
        counts += torch.stack([(top5[:, 0] == label).sum(), (top5 == label[:, None]).any(1).sum(), top5.new_tensor(len(label))])
    if dist.is_initialized():
        dist.all_reduce(counts)
    return 100 * counts[0].item() / counts[2].item(), 100 * counts[1].item() / counts[2].item()


# -----------------------------------------------------------------------------------------------------------
# Files. Everything is written to a temporary file first and renamed, so a crash never leaves half a file.


def atomic_write(path, mode, write):
    """Calls write(f) on a temporary file beside `path`, flushed to disk, then renames it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_save(obj, path):
    atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
    atomic_write(path, "w", lambda f: f.write(text))


def read_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file: say which, whatever torch raised
        raise UserError(f"--resume: {path} is not a readable checkpoint ({type(error).__name__})") from None


def read_log(path, epochs_done):
    """The rows of an earlier log.csv up to the checkpoint being resumed (a crash may have left one more)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= epochs_done]


def write_log(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# -----------------------------------------------------------------------------------------------------------
# Main


def train(args, rank, world, device):
    log = print if rank == 0 else (lambda *_, **__: None)
    if args.synthetic:
        make_synthetic(args.data, rank)
        log(f"no --data: the synthetic temporal-order task in {args.data}, small CPU recipe "
            f"(flags you set win): size {args.size}, {args.frames}x{args.img_size} px, stride {args.stride}, "
            f"{args.epochs} epochs, lr {args.lr}")
    train_set = open_split(args, "train", True)
    try:
        val_set = open_split(args, "val", False)
    except UserError as error:
        val_set = None
        log(f"no validation ({error}): best.pt will not be written")
    classes = train_set.classes
    if val_set is not None and val_set.classes != classes:
        raise UserError(f"--data {args.data}: val classes differ from train classes")
    if len(train_set) < args.batch_size * world:
        raise UserError(f"--data {args.data}: {len(train_set)} training videos, fewer than one batch "
                        f"({args.batch_size} x {world}); lower --batch-size")

    torch.manual_seed(args.seed)
    try:
        model = build_model(vars(args), len(classes))
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.pretrained and not args.resume:
        try:
            vit.load_pretrained(model, args.pretrained, log=log)
        except (OSError, ValueError) as error:
            raise UserError(f"--pretrained: {error}") from None
    model.to(device)
    optimizer = make_optimizer(model, args)
    amp_dtype = autocast_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    last_path, best_path = os.path.join(args.out, "last.pt"), os.path.join(args.out, "best.pt")
    log_path = os.path.join(args.out, "log.csv")
    start_epoch, step, best_top1 = 0, 0, None
    if args.resume:
        ckpt = read_checkpoint(last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
        start_epoch, step, best_top1 = ckpt["epoch"], ckpt["step"], ckpt["best_top1"]
        if start_epoch >= args.epochs:
            raise UserError(f"--resume: {last_path} has already trained {start_epoch} epochs; raise --epochs")
        log(f"resuming {last_path} after epoch {start_epoch} (step {step})")
    rows = read_log(log_path, start_epoch) if args.resume else []
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, "args.json"), json.dumps(vars(args), indent=2) + "\n")

    net = torch.compile(model) if args.compile else model
    trained = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    train_loader = make_loader(train_set, args, rank, world, True, device)
    val_loader = make_loader(val_set, args, rank, world, False, device) if val_set is not None else None
    unit = "GPU" if device.type == "cuda" else "process"
    log(f"{args.variant} {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{len(classes)} classes, {len(train_set)} train / {len(val_set) if val_set else 0} val videos, "
        f"{device.type} {amp_dtype or torch.float32}")
    log(f"effective batch {args.batch_size} per {unit} x {args.accum_steps} accumulation x {world} {unit}"
        f"{'es' if unit == 'process' else 's'} = {args.batch_size * args.accum_steps * world}")

    run_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        seed_epoch(args.seed, epoch, rank)
        train_loader.sampler.set_epoch(epoch)
        lr = lr_at(args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        skipped_before = train_set.skipped + (val_set.skipped if val_set else 0)
        epoch_start = time.time()
        stats = train_one_epoch(trained, train_loader, optimizer, criterion, accum_steps=args.accum_steps,
                                scaler=scaler, amp_dtype=amp_dtype, clip_grad=args.clip_grad,
                                desc=f"epoch {epoch + 1}/{args.epochs}", show_bar=rank == 0)
        step += stats["steps"]
        top1 = top5 = None
        if val_loader is not None:
            top1, top5 = validate(net, val_loader, amp_dtype, show_bar=rank == 0)
        totals = torch.tensor([stats["loss"] * stats["clips"], stats["top1"] * stats["clips"], stats["clips"],
                               train_set.skipped + (val_set.skipped if val_set else 0) - skipped_before],
                              dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(totals)
        loss_sum, top1_sum, clips, skipped = totals.tolist()
        row = dict(epoch=epoch + 1, step=step, lr=f"{lr:.6g}", train_loss=f"{loss_sum / clips:.4f}",
                   train_top1=f"{top1_sum / clips:.2f}", val_top1="" if top1 is None else f"{top1:.2f}",
                   val_top5="" if top5 is None else f"{top5:.2f}",
                   clips_per_s=f"{clips / stats['seconds']:.2f}", skipped=int(skipped),
                   seconds=f"{time.time() - epoch_start:.1f}")
        is_best = top1 is not None and (best_top1 is None or top1 > best_top1)
        if is_best:
            best_top1 = top1
        if rank == 0:
            rows.append(row)
            write_log(log_path, rows)  # before last.pt: a crash in between is undone on resume
            ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scaler=scaler.state_dict() if scaler.is_enabled() else None, epoch=epoch + 1, step=step,
                        rng=rng_states(), args=vars(args), classes=classes, best_top1=best_top1)
            atomic_save(ckpt, last_path)
            if is_best:
                atomic_save(ckpt, best_path)
        log(f"epoch {epoch + 1}: loss {row['train_loss']}, train top-1 {row['train_top1']}%"
            + (f", val top-1 {top1:.1f}% top-5 {top5:.1f}%" if top1 is not None else "")
            + f", {row['clips_per_s']} clips/s")

    minutes, seconds = divmod(round(time.time() - run_start), 60)
    final = rows[-1] if rows else {}
    if final.get("val_top1"):
        log(f"done in {minutes}m{seconds:02d}s: {args.variant} val top-1 {final['val_top1']}% "
            f"(best {best_top1:.2f}%, chance {100 / len(classes):.1f}%) after {args.epochs} epochs; {args.out}")
    else:
        log(f"done in {minutes}m{seconds:02d}s: {args.variant} train top-1 {final.get('train_top1')}% after "
            f"{args.epochs} epochs (no val split); {args.out}")


def main(argv=None):
    rank, world, device = setup_distributed()
    try:
        train(resolve_args(parse_args(argv)), rank, world, device)
        return 0
    except UserError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"train.py: {error}; stopped, the last checkpoint is untouched", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
