"""Train a frame-wise ViT, TokenShift or MSCA model for action recognition.

    python train.py                            # MSCA-KV on the synthetic task: tiny model, CPU, minutes
    python train.py --variant pKV --patches 16 --data k400 --annotations train.csv \\
        --val-annotations validate.csv --pretrained ViT-B_16.npz --shift-layout released
    torchrun --nproc_per_node 2 train.py ...   # the paper's 2 GPUs x 21 clips
    python train.py --resume --out runs/pKV    # continue after a crash or with more --epochs, exactly

Without --data: a small model from scratch on a synthetic task whose two classes differ only in frame order
(SMALL below). With --data: the paper's recipe (PAPER below). Flags you set win over both. Writes OUT/log.csv
(a row per epoch), OUT/last.pt (every epoch), OUT/best.pt (best validation top-1) and OUT/args.json.
Checkpoints hold `model_args`, `vit.build_model(**ckpt["model_args"])` rebuilds the model, and `classes`.
"""
import argparse
import csv
import glob
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import attention
import data
import vit
from shift import LAYOUTS

# Hashiguchi & Tamaki, Sec. 4.1: 8 frames, stride 32, 224 px, SGD 0.9 without weight decay, lr 0.1 / 10 at epoch
# 10, 12 epochs, 21 clips per GPU on 2 GPUs with an update every 10 iterations (effective batch 420).
PAPER = dict(size="B/16", img_size=224, frames=8, stride=32, epochs=12, optimizer="sgd", lr=0.1, lr_steps=[10],
             weight_decay=0.0, batch_size=21, accum_steps=10, workers=8)
# Small enough for 2 CPU cores in a few minutes: ViT-Ti, 4 frames of 64 px, from scratch on the synthetic task.
# From scratch AdamW finds the motion after 250-400 steps of 16 clips; SGD was slower in our tries.
SMALL = dict(size="Ti/16", img_size=64, frames=4, stride=10, epochs=6, optimizer="adamw", lr=3e-4, lr_steps=[5],
             weight_decay=0.05, batch_size=16, accum_steps=1, workers=1)
SYNTHETIC_VIDEOS = dict(train_per_class=1000, val_per_class=50, num_frames=32, size=96)
SYNTHETIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "synthetic-v{}-{}-{}-{}x{}".format(
    data.SYNTHETIC_VERSION, *SYNTHETIC_VIDEOS.values()))
MODEL_FLAGS = ("variant", "size", "img_size", "frames", "heads", "patches", "msca_blocks", "shift_div",
               "shift_layout")
LOG_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "clips_per_s",
               "skipped", "seconds")


def parse_args(argv):
    """(args, the flags set on the command line). Flags left at None take the recipe's value (PAPER or SMALL),
    or with --resume the run's own."""
    recipe = "paper {}, synthetic {}".format
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = data.refuse
    p.add_argument("--variant", default="KV", choices=vit.VARIANTS, help="model (default KV)")
    p.add_argument("--heads", type=int, default=2, help="heads shifted in total, half from t-1, half from t+1")
    p.add_argument("--patches", type=int, default=16, help="tokens shifted in total by the p* variants")
    p.add_argument("--msca-blocks", type=int, help="MSCA in the last k blocks only (default: all)")
    p.add_argument("--shift-div", type=int, default=4, help="TokenShift shifts D/div channels each way")
    p.add_argument("--shift-layout", default="paper", choices=LAYOUTS,
                   help="paper: the text's equations; released: the authors' code, which gave Table 1-5")
    p.add_argument("--size", choices=vit.SIZES, help=recipe("B/16", "Ti/16"))
    p.add_argument("--img-size", type=int, help="frame size in pixels: " + recipe(224, 64))
    p.add_argument("--frames", type=int, help="frames per clip T: " + recipe(8, 4))
    p.add_argument("--stride", type=int, help="frames between sampled frames: " + recipe(32, 10))
    # the text writes [244, 330]; TokenShift's code, whose settings it says it uses, draws from [224, 330)
    p.add_argument("--short-side", type=int, nargs=2, metavar=("LOW", "HIGH"), default=[224, 330],
                   help="random short side for 224 px crops, scaled for others (default 224 330)")
    p.add_argument("--pretrained", help="ViT weights: Google .npz (e.g. ViT-B_16.npz) or a timm state dict")
    p.add_argument("--data", help="dataset root (default: the synthetic task)")
    p.add_argument("--annotations", help="training list: Kinetics CSV or list file (see data.py)")
    p.add_argument("--val-annotations", help="validation list (default: --annotations, its split column)")
    p.add_argument("--epochs", type=int, help="total epochs: " + recipe(12, 6))
    p.add_argument("--lr", type=float, help=recipe(0.1, 3e-4))
    p.add_argument("--lr-steps", type=int, nargs="*", help="epochs where lr is divided by 10: " + recipe(10, 5))
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help=recipe("sgd", "adamw"))
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="of weight matrices only: " + recipe(0, 0.05))
    p.add_argument("--batch-size", type=int, help="clips per GPU and micro-batch: " + recipe(21, 16))
    p.add_argument("--accum-steps", type=int, help="micro-batches per optimizer step: " + recipe(10, 1))
    # the text gives no value; the released code builds LabelSmoothingCrossEntropy() (smoothing 0.1) and reads
    # its config's LABEL_SMOOTH: 0.01 only as an on/off switch
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1, as the released code")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm, 0: off (released code: 1)")
    p.add_argument("--amp", choices=vit.AMP, default="auto", help="auto: bf16 or fp16 on GPUs, fp32 on CPU")
    p.add_argument("--workers", type=int, help="data loading processes per GPU: " + recipe(8, 1))
    p.add_argument("--out", help="output folder (default: runs/<variant>, runs/synthetic-<variant> without --data)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args(argv)
    # parsed again into a namespace that already has every name: argparse then fills in no defaults
    given = vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args)))))
    return args, {k: v for k, v in given.items() if v is not None and v is not False}


def configure(args, given):
    """The run's arguments and, with --resume, its checkpoint. Errors are ValueError/OSError (one line)."""
    args.out = args.out or os.path.join("runs", args.variant if args.data else f"synthetic-{args.variant}")
    last = os.path.join(args.out, "last.pt")
    ckpt = None
    if args.resume:
        if not os.path.isfile(last):
            raise ValueError(f"--resume: {last} does not exist (pass the --out or --variant of the run)")
        ckpt = vit.load_torch_file(last)
        run = ckpt["args"]
        changed = [f"--{k.replace('_', '-')} (the run has {run[k]})" for k in MODEL_FLAGS + ("optimizer",)
                   if k in given and given[k] != run[k]]
        if changed:
            raise ValueError(f"--resume: the model and optimizer of {args.out} cannot change: {', '.join(changed)}")
        args = argparse.Namespace(**{**run, **given, "out": args.out, "resume": True})
    else:
        if os.path.exists(last):
            raise ValueError(f"{last} already exists: pass --resume to continue that run, or another --out")
        for key, value in (PAPER if args.data else SMALL).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        args.synthetic, args.data = args.data is None, args.data or SYNTHETIC_DIR
    for key in ("frames", "stride", "epochs", "batch_size", "accum_steps", "img_size"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(args, key)}: must be at least 1")
    for key in ("lr", "momentum", "weight_decay", "label_smoothing", "clip_grad", "workers"):
        if not 0 <= getattr(args, key) < math.inf:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(args, key)}: must be a finite number >= 0")
    if not (args.label_smoothing < 1 and 0 <= args.seed < 2 ** 32 and 1 <= args.short_side[0] <= args.short_side[1]):
        raise ValueError(f"--label-smoothing {args.label_smoothing} must be below 1, --seed {args.seed} in "
                         f"0..2^32-1 and --short-side {args.short_side} two sizes LOW <= HIGH")
    return args, ckpt


def setup_distributed():
    """(rank, world size, device); torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if "RANK" not in os.environ:
        return 0, 1, device
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def open_datasets(args, rank):
    """Train and validation datasets (validation: None when the data has no val split)."""
    if args.synthetic and rank == 0:
        data.make_synthetic(args.data, **SYNTHETIC_VIDEOS)  # made once, reused after that
    if dist.is_initialized():
        dist.barrier()
    # other ranks' broken videos are reported by rank 0 (sync_broken)
    common = dict(num_frames=args.frames, stride=args.stride, img_size=args.img_size, report=rank == 0)
    train_set = data.KineticsDataset(args.data, "train", annotations=args.annotations,
                                     short_side=args.short_side, **common)
    try:  # one view per video: the centre clip, the centre crop
        val_set = data.KineticsDataset(args.data, "val", train=False, annotations=args.val_annotations or
                                       args.annotations, clips=1, crops=1, **common)
    except ValueError as error:
        print(f"no validation ({error}): best.pt will not be written", file=sys.stderr)
        return train_set, None
    if val_set.classes != train_set.classes:
        raise ValueError(f"--data {args.data}: the validation classes differ from the training classes")
    shared = set(map(os.path.realpath, train_set.videos)) & set(map(os.path.realpath, val_set.videos))
    if shared:
        raise ValueError(f"--data {args.data}: {len(shared)} validation videos are training videos too (e.g. "
                         f"{min(shared)}); give validation its own list with --val-annotations")
    return train_set, val_set


def make_optimizer(model, args):
    """AdamW decays the weight matrices only, not biases, LayerNorms, cls_token or pos_embed (as nanoGPT, timm)."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    matrix = {n for n, p in model.named_parameters() if p.dim() >= 2 and n not in ("cls_token", "pos_embed")}
    return torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if (n in matrix) == decays],
                               "weight_decay": args.weight_decay if decays else 0.0} for decays in (True, False)],
                             lr=args.lr)


def lr_at(args, epoch):
    """Step schedule: lr, divided by 10 at each epoch of --lr-steps (0-based: 10 = from the 11th epoch)."""
    return args.lr * 0.1 ** sum(epoch >= step for step in args.lr_steps)


def train_one_epoch(model, loader, optimizer, criterion, *, accum_steps, scaler, amp_dtype=None, clip_grad=0.0,
                    desc="train", show_bar=False):
    """One pass over `loader`; the optimizer steps every `accum_steps` micro-batches and at the end.
    Returns the summed loss, correct predictions and clips of this process, and its optimizer steps."""
    model.train()
    device = next(model.parameters()).device
    distributed = isinstance(model, DistributedDataParallel)
    sums, window_loss, steps = torch.zeros(3, device=device, dtype=torch.float64), 0.0, 0
    start = time.time()
    bar = tqdm(loader, desc, disable=not show_bar, dynamic_ncols=True)
    for i, (video, label) in enumerate(bar):
        video, label = video.to(device, non_blocking=True), label.to(device, non_blocking=True)
        window_start = i - i % accum_steps
        window_len = min(accum_steps, len(loader) - window_start)  # the last window of an epoch may be short
        stepping = i == window_start + window_len - 1
        # DDP all-reduces gradients in backward; between optimizer steps only the local sum is needed
        with nullcontext() if stepping or not distributed else model.no_sync():
            with vit.autocast(device, amp_dtype):
                logits = model(video)
            loss = criterion(logits.float(), label)
            # Each micro-batch's mean loss weighs 1/window_len, so the summed gradients are those of the
            # mean loss over the whole window: one batch of batch_size x window_len clips.
            scaler.scale(loss / window_len).backward()
        window_loss = window_loss + loss.detach()
        hits = (logits.argmax(1) == label).sum()
        sums += torch.stack([loss.detach() * len(label), hits, sums.new_tensor(len(label))])
        if not stepping:
            continue
        if distributed:
            dist.all_reduce(window_loss)  # every rank must see a NaN to stop together
        mean_loss = window_loss.item() / (window_len * (dist.get_world_size() if distributed else 1))
        # fp16 overflows now and then: the scaler skips that step and lowers the scale; give up only when the
        # scale has been halved below 1, i.e. the loss is not finite at any scale
        if not math.isfinite(mean_loss) and not (scaler.is_enabled() and scaler.get_scale() >= 1):
            raise FloatingPointError(f"loss is {mean_loss} at micro-batch {i + 1}/{len(loader)} of this epoch")
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)  # with fp16, skips steps whose gradients overflowed
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_loss, steps = 0.0, steps + 1
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                        clips_s=f"{sums[2].item() / (time.time() - start):.1f}")
    return sums, steps


@torch.no_grad()
def validate(model, loader, amp_dtype, show_bar=False):
    """Top-1 and top-5 hits and readable videos, summed over all ranks; broken videos are not counted."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(3, device=device, dtype=torch.float64)
    for views, labels, _ in tqdm(loader, "val", disable=not show_bar, dynamic_ncols=True, leave=False):
        if views is None:
            continue
        with vit.autocast(device, amp_dtype):
            scores = vit.video_scores(model, views.to(device, non_blocking=True))
        labels = labels.to(device)
        counts += torch.stack([vit.topk_hits(scores, labels, 1).sum(), vit.topk_hits(scores, labels, 5).sum(),
                               counts.new_tensor(len(labels))])
    if dist.is_initialized():
        dist.all_reduce(counts)
    return counts.tolist()


def sync_broken(datasets, device):
    """Every rank learns the broken videos of all ranks (so none decodes them again), rank 0 reports the ones it
    has not met itself, and all count each once: returns how many distinct broken videos are known."""
    for dataset in datasets if dist.is_initialized() else []:
        flags = np.frombuffer(dataset.broken, dtype=np.int8)
        merged = torch.from_numpy(flags.astype(np.int32)).to(device)
        dist.all_reduce(merged, op=dist.ReduceOp.MAX)
        for i in np.flatnonzero(merged.cpu().numpy() > flags) if dataset.report else []:
            print(f"data: skipping broken video: {dataset.videos[i]} (found by another process)", file=sys.stderr)
        flags[:] = merged.cpu().numpy()
    return sum(sum(dataset.broken) for dataset in datasets)


def read_log(path, epochs_done):
    """The rows of an earlier log.csv up to the checkpoint being resumed (a crash may have left one more)."""
    try:
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["epoch"]) <= epochs_done]
    except FileNotFoundError:
        return []
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"--resume: {path} is not a log.csv of train.py ({type(error).__name__}); "
                         f"move it away to resume without it") from None


def write_log(path, rows):
    with data.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def train(args, ckpt, rank, world, device, progress):
    log = print if rank == 0 else (lambda *_, **__: None)
    if rank == 0:
        data.check_writable(os.path.join(args.out, "last.pt"))  # an unwritable --out fails now, not after an epoch
        for leftover in glob.glob(os.path.join(args.out, ".tmp-*")):  # of a run killed while saving
            os.remove(leftover)
    train_set, val_set = open_datasets(args, rank)
    classes = train_set.classes
    if ckpt is not None and ckpt["classes"] != classes:
        diff = sorted(set(ckpt["classes"]) ^ set(classes)) or ["the same names in another order"]
        raise ValueError(f"--resume: {args.out} was trained on {len(ckpt['classes'])} classes, --data {args.data} "
                         f"has {len(classes)}; they differ in: {', '.join(diff[:5])}")
    if len(train_set) < args.batch_size * world:
        raise ValueError(f"--data {args.data}: {len(train_set)} training videos, fewer than one batch "
                         f"({args.batch_size} x {world}); lower --batch-size")

    model_args = dict(num_classes=len(classes), num_frames=args.frames,
                      **{flag: getattr(args, flag) for flag in MODEL_FLAGS if flag != "frames"})
    torch.manual_seed(args.seed)
    model = vit.build_model(**model_args)
    if args.variant not in ("vit", "tokenshift"):  # e.g. 16 patches are 8% of 197 tokens but 94% of 17
        log(attention.describe_shift(args.variant, model.blocks[0].attn.num_heads, model.pos_embed.shape[1],
                                     args.heads, args.patches, args.shift_layout))
    if args.pretrained and ckpt is None:
        vit.load_pretrained(model, args.pretrained, log=log)
    model.to(device)
    optimizer = make_optimizer(model, args)
    amp_dtype = vit.amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        if start_epoch >= args.epochs:
            raise ValueError(f"--resume: {args.out} has already trained {start_epoch} epochs; raise --epochs")
        log(f"resuming {args.out} after epoch {start_epoch} (step {step})")
    log_path = os.path.join(args.out, "log.csv")
    rows = read_log(log_path, start_epoch) if ckpt is not None else []
    best_top1 = max((float(r["val_top1"]) for r in rows if r["val_top1"]), default=None)

    net = torch.compile(model) if args.compile else model
    trained = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    loader = dict(batch_size=args.batch_size, num_workers=args.workers, pin_memory=device.type == "cuda")
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed, drop_last=True)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=True, **loader)  # full batches weigh the same
    val_loader = None if val_set is None else DataLoader(Subset(val_set, range(rank, len(val_set), world)),
                                                         collate_fn=data.collate_readable, **loader)
    log(f"{args.variant} {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{len(classes)} classes, {len(train_set)} train / {len(val_set) if val_set else 0} val videos, "
        f"{device.type} {amp_dtype or torch.float32}; effective batch {args.batch_size} x {args.accum_steps} "
        f"accumulation x {world} processes = {args.batch_size * args.accum_steps * world}")

    run_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train_set.epoch_seed = (args.seed, epoch)  # the augmentation of video i depends on (seed, epoch, i) alone
        lr = lr_at(args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_start = time.time()
        sums, steps = train_one_epoch(trained, train_loader, optimizer, criterion, accum_steps=args.accum_steps,
                                      scaler=scaler, amp_dtype=amp_dtype, clip_grad=args.clip_grad,
                                      desc=f"epoch {epoch + 1}/{args.epochs}", show_bar=rank == 0)
        step += steps
        if world > 1:
            dist.all_reduce(sums)
        loss_sum, correct, clips = sums.tolist()
        row = dict(epoch=epoch + 1, step=step, lr=f"{lr:.6g}", train_loss=f"{loss_sum / clips:.4f}",
                   train_top1=f"{100 * correct / clips:.2f}", val_top1="", val_top5="",
                   clips_per_s=f"{clips / (time.time() - epoch_start):.2f}", skipped=0, seconds="")
        ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch + 1, step=step,
                    scaler=scaler.state_dict() if scaler.is_enabled() else None, model_args=model_args,
                    classes=classes, args=vars(args))
        if rank == 0:  # saved before validation, so that a failure there loses no training
            write_log(log_path, rows + [row])  # before last.pt: a crash in between is undone on resume
            with data.atomic_path(os.path.join(args.out, "last.pt")) as tmp:
                torch.save(ckpt, tmp)
            with data.atomic_path(os.path.join(args.out, "args.json")) as tmp, open(tmp, "w") as f:
                json.dump(vars(args), f, indent=2)
            progress["saved"] = epoch + 1
        if val_loader is not None:
            top1, top5, videos = validate(model, val_loader, amp_dtype, show_bar=rank == 0)  # eager: no recompiles
            if not videos:
                raise ValueError(f"--data {args.data}: none of the {len(val_set)} validation videos can be decoded")
            row.update(val_top1=f"{100 * top1 / videos:.2f}", val_top5=f"{100 * top5 / videos:.2f}")
        row.update(skipped=sync_broken([d for d in (train_set, val_set) if d], device),
                   seconds=f"{time.time() - epoch_start:.1f}")
        rows.append(row)
        if rank == 0:
            write_log(log_path, rows)
            if row["val_top1"] and (best_top1 is None or float(row["val_top1"]) > best_top1):
                best_top1 = float(row["val_top1"])
                with data.atomic_path(os.path.join(args.out, "best.pt")) as tmp:
                    torch.save(ckpt, tmp)
        log(f"epoch {epoch + 1}: loss {row['train_loss']}, train top-1 {row['train_top1']}%"
            + (f", val top-1 {row['val_top1']}%" if row["val_top1"] else "") + (f" top-5 {row['val_top5']}%" if
               row["val_top1"] and len(classes) > 5 else "") + f", {row['clips_per_s']} clips/s, {row['skipped']} "
            "broken videos skipped")

    minutes, seconds = divmod(round(time.time() - run_start), 60)
    log(f"done in {minutes}m{seconds:02d}s: {args.variant} " + (
        f"val top-1 {rows[-1]['val_top1']}% (best {best_top1:.2f}%, chance {100 / len(classes):.1f}%)"
        if best_top1 is not None else f"train top-1 {rows[-1]['train_top1']}% (no val split)")
        + f" after {args.epochs} epochs; {args.out}")


def main(argv=None):
    progress = {"saved": None}
    try:
        args, ckpt = configure(*parse_args(argv))
        progress["saved"] = ckpt and ckpt["epoch"]
        rank, world, device = setup_distributed()
        try:
            train(args, ckpt, rank, world, device, progress)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return 0
    except (ValueError, OSError, data.VideoError) as error:  # a DataLoader worker's error ends with its message
        print(f"train.py: error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # NaN or inf loss: stop, the checkpoints stay as they were
        print(f"train.py: {error}; stopped, the last checkpoint is untouched", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"train.py: interrupted; last checkpoint epoch {progress['saved'] or 'none'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
