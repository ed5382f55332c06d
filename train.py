"""Train a frame-wise ViT, TokenShift or MSCA model for action recognition.

    python train.py                           # MSCA-KV on the synthetic task: tiny, CPU, minutes
    python train.py --variant pKV --patches 16 --data k400 --annotations train.csv \\
        --val-annotations validate.csv --pretrained ViT-B_16.npz --shift-layout released
    torchrun --nproc_per_node 2 train.py ...  # the paper's 2 GPUs x 21 clips
    python train.py --resume --out runs/pKV   # go on after a crash or with more --epochs, exactly

Without --data: a small model from scratch on a synthetic task whose two classes differ only in
frame order (SMALL). With --data: the paper's recipe (PAPER). Flags you set win over both. Writes
OUT/log.csv, OUT/last.pt (every epoch), OUT/best.pt (best validation top-1) and OUT/args.json.
"""
import argparse
import csv
import fcntl
import glob
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace


def interrupted(signum, frame):  # while the imports below load: one line, not a traceback
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
    os._exit(130)  # nothing started yet that would need finishing


SIGINT_HANDLER = signal.signal(signal.SIGINT, interrupted)
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import attention
import data
import prepare
import vit
from shift import LAYOUTS
signal.signal(signal.SIGINT, SIGINT_HANDLER)  # Python's own again: main() answers a Ctrl-C

# Hashiguchi & Tamaki, Sec. 4.1, on 2 GPUs: an effective batch of 2 x 21 clips x 10 iterations
PAPER = dict(size="B/16", img_size=224, frames=8, stride=32, epochs=12, optimizer="sgd", lr=0.1,
             lr_steps=[10], weight_decay=0.0, batch_size=21, accum_steps=10, workers=8)
# Small enough for 2 CPU cores in a few minutes. From scratch AdamW finds the motion after 250-400
# steps of 16 clips; SGD was slower in our tries.
SMALL = dict(size="Ti/16", img_size=64, frames=4, stride=10, epochs=6, optimizer="adamw",
             lr=3e-4, lr_steps=[5], weight_decay=0.05, batch_size=16, accum_steps=1, workers=1)
COMMON = dict(variant="KV", heads=2, patches=16, msca_blocks=None, shift_div=4, momentum=0.9,
              # the text writes [244, 330], TokenShift's code (whose settings it uses) [224, 330)
              short_side=[224, 330], shift_layout="paper",
              # not in the text; the released code's LabelSmoothingCrossEntropy() default
              label_smoothing=0.1, clip_grad=1.0, amp="auto", seed=0, pretrained=None,
              annotations=None, val_annotations=None, compile=False, resume=False, sampling="dense")
SYNTHETIC_VIDEOS = dict(train_per_class=1000, val_per_class=50, num_frames=32, size=96)
SYNTHETIC_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), ".cache",
    "synthetic-v{}-{}-{}-{}x{}".format(prepare.SYNTHETIC_VERSION, *SYNTHETIC_VIDEOS.values()))
MODEL_FLAGS = ("variant", "size", "img_size", "frames", "heads", "patches", "msca_blocks",
               "shift_div", "shift_layout")
LOG_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5",
               "clips_per_s", "skipped", "seconds")
# A resumed run continues exactly: only these may change (accum_steps: see check_resume)
MAY_CHANGE_ON_RESUME = ("epochs", "lr_steps", "workers", "compile", "pretrained", "out", "resume",
                        "data", "annotations", "val_annotations", "accum_steps")


def shown(value):  # as typed on the command line: 224 330, not [224, 330]
    return " ".join(map(str, value)) if isinstance(value, list) else value


def parse_flags(argv):
    """{setting: value} of the flags on the command line only: configure() fills in the rest."""
    p = argparse.ArgumentParser(description=__doc__, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = data.refuse

    def add(name, text, **kwargs):  # the help ends with the default: the recipes' or COMMON's
        key = name[2:].replace("-", "_")
        if key in PAPER:
            text += f" (paper {shown(PAPER[key])}, synthetic {shown(SMALL[key])})"
        elif COMMON.get(key) is not None:
            text += f" (default {shown(COMMON[key])})"
        p.add_argument(name, help=text, **kwargs)

    add("--variant", "model", choices=vit.VARIANTS)
    add("--heads", "heads shifted in total, half from t-1, half from t+1", type=int)
    add("--patches", "tokens shifted in total by the p* variants", type=int)
    add("--msca-blocks", "MSCA in the last k blocks only (default: all)", type=int)
    add("--shift-div", "TokenShift shifts D/div channels each way", type=int)
    add("--shift-layout", "paper: the text's equations; released: the authors' code, which gave "
        "Table 1-5", choices=LAYOUTS)
    add("--size", "ViT size", choices=vit.SIZES)
    add("--img-size", "frame size in pixels", type=int)
    add("--frames", "frames per clip T", type=int)
    add("--stride", "frames between sampled frames", type=int)
    add("--sampling", "dense: --stride apart; uniform: a frame of each of T equal segments (TSN)",
        choices=("dense", "uniform"))
    add("--short-side", "random short side for 224 px crops, scaled for others", type=int,
        nargs=2, metavar=("LOW", "HIGH"))
    add("--pretrained", "ViT weights: Google .npz (e.g. ViT-B_16.npz), a timm state dict or a "
        "train.py checkpoint (its head replaced on other classes)")
    add("--data", "dataset root (default: the synthetic task)")
    add("--annotations", "training list: Kinetics CSV or list file (see data.py)")
    add("--val-annotations", "validation list (default: --annotations, its split column)")
    add("--epochs", "total epochs", type=int)
    add("--lr", "learning rate", type=float)
    add("--lr-steps", "epochs where lr is divided by 10", type=int, nargs="*")
    add("--optimizer", "SGD or AdamW", choices=("sgd", "adamw"))
    add("--momentum", "SGD momentum", type=float)
    add("--weight-decay", "of weight matrices only", type=float)
    add("--batch-size", "clips per GPU and micro-batch", type=int)
    add("--accum-steps", "micro-batches per optimizer step", type=int)
    add("--label-smoothing", "as the released code", type=float)
    add("--clip-grad", "max gradient norm, 0: off; as the released code", type=float)
    add("--amp", "auto: bf16 or fp16 on GPUs, fp32 on CPU", choices=vit.AMP)
    add("--workers", "data loading processes per GPU", type=int)
    add("--out", "output folder (default: runs/<variant>, runs/synthetic-<variant> without --data)")
    add("--seed", "of the weights, the clip order and the augmentation", type=int)
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument("--compile", action="store_true", help="torch.compile a graph per block kind")
    return vars(p.parse_args(argv))


def out_folder(given):
    variant = given.get("variant", COMMON["variant"])
    return given.get("out") or os.path.join("runs", variant if "data" in given else
                                            "synthetic-" + variant)


def configure(given):
    """The run's arguments and, with --resume, its checkpoint. Errors are ValueError/OSError."""
    paper, out = "data" in given, out_folder(given)
    # stored absolute, so that evaluate.py run from another folder finds the same files
    given = {**given, **{key: os.path.abspath(given[key]) for key in
                         ("data", "annotations", "val_annotations") if given.get(key)}}
    args = {**COMMON, **(PAPER if paper else SMALL), "data": SYNTHETIC_DIR, "synthetic": not paper,
            **given}
    last, ckpt = os.path.join(out, "last.pt"), None
    if given.get("resume"):
        if not os.path.isfile(last):
            raise ValueError(f"--resume: {last} does not exist (give the run's --out or --variant)")
        ckpt = vit.load_torch_file(last)
        check_resume(given, ckpt, out)
        args = {**COMMON, **ckpt["args"], **given}  # COMMON: settings added since the run began
    elif os.path.exists(last):
        raise ValueError(f"{last} exists: pass --resume to continue that run, or another --out")
    args = argparse.Namespace(**{**args, "out": out})
    for key in ("frames", "stride", "epochs", "batch_size", "accum_steps", "img_size"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(args, key)}: must be at least 1")
    for key in ("lr", "momentum", "weight_decay", "label_smoothing", "clip_grad", "workers"):
        if not 0 <= getattr(args, key) < math.inf:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(args, key)}: must be a finite "
                             "number >= 0")
    low, high = args.short_side
    if not (args.label_smoothing < 1 and 0 <= args.seed < 2 ** 32 and 1 <= low <= high):
        raise ValueError(f"--label-smoothing {args.label_smoothing} must be below 1, --seed "
                         f"{args.seed} in 0..2^32-1 and --short-side {args.short_side} two sizes "
                         "LOW <= HIGH")
    return args, ckpt


def check_resume(given, ckpt, out):
    """Refuses flags that would not continue the run exactly, and another effective batch."""
    missing = [key for key in ("args", "effective_batch", "log") if key not in ckpt]
    if missing:
        raise ValueError(f"--resume: {out}/last.pt was written by an older train.py (no "
                         f"{', '.join(missing)}): it cannot be resumed exactly")
    run = {**COMMON, **ckpt["args"]}  # COMMON: settings added since the run began
    changed = [f"--{k.replace('_', '-')} {shown(given[k])} (the run has {shown(run[k])})"
               for k in given if k not in MAY_CHANGE_ON_RESUME and given[k] != run[k]]
    if changed:
        raise ValueError(f"--resume continues {out} exactly; these cannot change: "
                         + ", ".join(changed))
    # processes x accumulation may change together: the same clips then make each update
    world, batch = int(os.environ.get("WORLD_SIZE", 1)), run["batch_size"]
    accum, effective = given.get("accum_steps", run["accum_steps"]), ckpt["effective_batch"]
    if batch * accum * world != effective:
        fits = effective % (batch * world) == 0
        keep = (f"--accum-steps {effective // (batch * world)} keeps it" if fits else
                f"no --accum-steps keeps it with {world} processes")
        raise ValueError(f"--resume: {out} was trained with an effective batch of {effective}; "
                         f"{world} processes x {batch} clips x {accum} accumulation make "
                         f"{world * batch * accum}: {keep}")


@contextmanager
def own_out(out):
    """Rank 0 locks OUT for the run, refusing a second run; the kernel unlocks it on any exit."""
    if os.environ.get("RANK", "0") != "0":  # torchrun's other processes write nothing there
        yield
        return
    data.check_writable(os.path.join(out, "last.pt"))  # an unwritable --out fails now
    folder = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--out {out}: another train.py is running into it") from None
        for leftover in glob.glob(os.path.join(out, ".tmp-*")):  # of a run killed while saving
            os.remove(leftover)
        yield
    finally:
        os.close(folder)


def setup_distributed():
    """(rank, world size, device); torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    if "RANK" not in os.environ:
        return 0, 1, device
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def open_datasets(args, rank, world, ckpt):
    """Train and validation datasets (validation: None when the data has no val split)."""
    if args.synthetic and rank == 0:
        prepare.make_synthetic(args.data, **SYNTHETIC_VIDEOS)  # made once, reused after that
    if dist.is_initialized():
        dist.barrier()
    # other ranks' broken videos are reported by rank 0 (KineticsDataset.sync_broken)
    common = dict(num_frames=args.frames, stride=args.stride, img_size=args.img_size,
                  report=rank == 0, sampling=args.sampling)
    train_set = data.KineticsDataset(args.data, "train", annotations=args.annotations,
                                     short_side=args.short_side, **common)
    classes = train_set.classes
    if ckpt is not None and ckpt["classes"] != classes:
        raise ValueError(f"--resume: {args.out} was trained on {len(ckpt['classes'])} classes, "
                         f"--data {args.data} has {len(classes)}; they differ: it "
                         + class_difference(classes, ckpt["classes"]))
    if len(train_set) < args.batch_size * world:
        raise ValueError(f"--data {args.data}: {len(train_set)} training videos, fewer than one "
                         f"batch ({args.batch_size} x {world}); lower --batch-size")
    lists = args.val_annotations or args.annotations
    try:  # one view per video: the centre clip, the centre crop
        val_set = data.KineticsDataset(args.data, "val", train=False, clips=1, crops=1,
                                       annotations=lists, **common)
    except ValueError as error:
        if args.val_annotations:  # only an implicit validation split may be absent
            raise
        print(f"no validation ({error}): best.pt will not be written", file=sys.stderr)
        return train_set, None
    if val_set.classes != classes:
        remedy = "validation needs every training class and no other"
        # a list without classes.txt beside it names its classes by the labels up to its largest
        if lists and any(all(map(str.isdigit, names)) for names in (classes, val_set.classes)):
            remedy = "a classes.txt naming every class beside each list gives both the same ones"
        raise ValueError(f"{lists or args.data}: the validation classes differ from the training "
                         f"classes: validation {class_difference(val_set.classes, classes)}; "
                         + remedy)
    shared = set(map(os.path.realpath, train_set.videos)) & set(
        map(os.path.realpath, val_set.videos))
    if shared:
        raise ValueError(f"--data {args.data}: {len(shared)} validation videos are training videos "
                         f"too (e.g. {min(shared)}); give validation its own list with "
                         "--val-annotations")
    return train_set, val_set


def class_difference(have, want):
    """How the classes `have` differ from `want`: "lacks a, b and adds c", the first 5 of each."""
    lacks, adds = [n for n in want if n not in have], [n for n in have if n not in want]
    named = [f"{what} {', '.join(names[:5])}" for what, names in (("lacks", lacks), ("adds", adds))
             if names]
    return " and ".join(named) or "has the same names in another order"


def make_model(args, classes, ckpt, log):
    """(model, model_args): `vit.build_model(**model_args)` rebuilds it from a checkpoint."""
    model_args = dict(num_classes=len(classes), num_frames=args.frames,
                      **{key: getattr(args, key) for key in MODEL_FLAGS if key != "frames"})
    torch.manual_seed(args.seed)
    model = vit.build_model(**model_args)
    if args.pretrained and ckpt is None:  # first: a refused file is then the only line
        vit.load_pretrained(model, args.pretrained, log=log, classes=classes)
    if args.variant not in ("vit", "tokenshift"):  # e.g. 16 patches are 8% of 197 tokens, 94% of 17
        log(attention.describe_shift(args.variant, model.blocks[0].attn.num_heads,
                                     model.pos_embed.shape[1], args.heads, args.patches,
                                     args.shift_layout))
    return model, model_args


def make_optimizer(model, args):
    """AdamW decays weight matrices only, not biases, LayerNorms, cls_token, pos_embed (as timm)."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    matrix = {n for n, p in model.named_parameters()
              if p.dim() >= 2 and n not in ("cls_token", "pos_embed")}
    groups = [{"params": [p for n, p in model.named_parameters() if (n in matrix) == decays],
               "weight_decay": args.weight_decay if decays else 0.0} for decays in (True, False)]
    return torch.optim.AdamW(groups, lr=args.lr)


def restore(run, args, ckpt):
    """Loads the resumed run's state: weights, optimizer, scaler, epochs, log rows, best top-1."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.step = ckpt["epoch"], ckpt["step"]
    if run.start_epoch >= args.epochs:
        raise ValueError(f"--resume: {args.out} has already trained {run.start_epoch} epochs; "
                         "raise --epochs")
    run.log(f"resuming {args.out} after epoch {run.start_epoch} (step {run.step})")
    log_path, best_path = (os.path.join(args.out, name) for name in ("log.csv", "best.pt"))
    best = {"log": []}
    if os.path.isfile(best_path):
        best = vit.load_torch_file(best_path)
    try:  # up to last.pt: a crash may have left one more row
        with open(log_path, newline="") as f:
            run.rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= run.start_epoch]
    except FileNotFoundError:
        pass
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"--resume: {log_path} is not a log.csv of train.py "
                         f"({type(error).__name__}); move it away to resume without it") from None
    # the columns known when last.pt is saved are a run's fingerprint
    others = [path for path, log in ((log_path, run.rows), (best_path, best["log"]))
              if fingerprint(log) != fingerprint(ckpt["log"])[:len(log)]]
    if others:
        raise ValueError(f"--resume: {' and '.join(others)} of another run than {args.out}/last.pt;"
                         " move them away to resume without them")
    scores = [float(row["val_top1"]) for row in run.rows if row["val_top1"]]
    if "val_top1" in best:
        scores.append(best["val_top1"])
    run.best = max(scores, default=None)


def fingerprint(log):
    return [[str(row[key]) for key in LOG_COLUMNS[:5]] for row in log]


def build_run(args, ckpt, rank, world, device):
    """What the epochs share: data, model, optimizer, loss scaler; where a resumed run left off."""
    run = SimpleNamespace(rank=rank, world=world, device=device, start_epoch=0, step=0, rows=[],
                          best=None, log=print if rank == 0 else lambda *_, **__: None)
    run.train_set, run.val_set = open_datasets(args, rank, world, ckpt)
    run.classes = run.train_set.classes
    run.model, run.model_args = make_model(args, run.classes, ckpt, run.log)
    run.model.to(device)
    run.optimizer = make_optimizer(run.model, args)
    run.amp_dtype = vit.amp_dtype(args.amp, device)
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    run.criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    if ckpt is not None:
        restore(run, args, ckpt)
    run.trained = vit.compile_blocks(run.model) if args.compile else run.model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        run.trained = DistributedDataParallel(run.trained, device_ids=device_ids)
    # the workers stay for the whole run: set_epoch reaches them through shared memory
    loader = dict(batch_size=args.batch_size, num_workers=args.workers,
                  pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    sampler = DistributedSampler(run.train_set, world, rank, shuffle=True, seed=args.seed,
                                 drop_last=True)  # full batches only: each weighs the same
    run.train_loader = DataLoader(run.train_set, sampler=sampler, drop_last=True, **loader)
    run.val_loader = []  # validates nothing without a validation split
    if run.val_set is not None:  # each process validates every world-th video
        mine = Subset(run.val_set, range(rank, len(run.val_set), world))
        run.val_loader = DataLoader(mine, collate_fn=data.collate_readable, **loader)
    source, frames = args.data, f"stride {args.stride}"
    if args.synthetic:
        source = f"the synthetic task (made once) in {args.data}"
    if args.sampling == "uniform":
        frames = f"uniform sampling: a frame from each of {args.frames} equal segments"
    parameters = sum(p.numel() for p in run.model.parameters()) / 1e6
    val_videos = len(run.val_set) if run.val_set is not None else 0
    if data.describe_flips(run.classes):
        run.log(data.describe_flips(run.classes))
    run.log(f"data: {source}; clips of {args.frames} frames of {args.img_size} px, {frames}")
    run.log(f"{args.variant} {args.size}: {parameters:.1f}M parameters, {len(run.classes)} "
            f"classes, {len(run.train_set)} train / {val_videos} val videos, {device.type} "
            f"{run.amp_dtype or torch.float32}; effective batch {args.batch_size} x "
            f"{args.accum_steps} accumulation x {world} processes = "
            f"{args.batch_size * args.accum_steps * world}")
    return run


def lr_at(args, epoch):
    """Step schedule: lr / 10 at each epoch of --lr-steps (0-based: 10 = from the 11th epoch)."""
    return args.lr * 0.1 ** sum(epoch >= step for step in args.lr_steps)


def train_one_epoch(model, loader, optimizer, criterion, *, accum_steps, scaler, amp_dtype=None,
                    clip_grad=0.0, desc="train", show_bar=False):
    """One pass over `loader`; the optimizer steps every `accum_steps` micro-batches and at the end.
    Returns this process's summed loss, correct predictions and clips, and its optimizer steps."""
    model.train()
    device = next(model.parameters()).device
    distributed = isinstance(model, DistributedDataParallel)
    world = dist.get_world_size() if distributed else 1
    sums, window_loss, steps = torch.zeros(3, device=device, dtype=torch.float64), 0.0, 0
    start = time.time()
    bar = tqdm(loader, desc, disable=not show_bar, dynamic_ncols=True)
    for i, (video, label) in enumerate(bar):
        video, label = video.to(device, non_blocking=True), label.to(device, non_blocking=True)
        window_start = i - i % accum_steps
        window_len = min(accum_steps, len(loader) - window_start)  # the last one may be short
        stepping = i == window_start + window_len - 1
        # DDP all-reduces gradients in backward; between optimizer steps the local sum will do
        with nullcontext() if stepping or not distributed else model.no_sync():
            with vit.autocast(device, amp_dtype):
                logits = model(video)
            loss = criterion(logits.float(), label)
            # each micro-batch weighs 1/window_len: the gradients of one batch of the whole window
            scaler.scale(loss / window_len).backward()
        window_loss = window_loss + loss.detach()
        hits = (logits.argmax(1) == label).sum()
        sums += torch.stack([loss.detach() * len(label), hits, sums.new_tensor(len(label))])
        if not stepping:
            continue
        if distributed:
            dist.all_reduce(window_loss)  # every rank must see a NaN to stop together
        mean_loss = window_loss.item() / (window_len * world)
        # fp16 overflows now and then (the scaler skips the step); below scale 1 it is no overflow
        if not math.isfinite(mean_loss) and not (scaler.is_enabled() and scaler.get_scale() >= 1):
            raise FloatingPointError(f"loss is {mean_loss} at micro-batch {i + 1}/{len(loader)} of "
                                     "this epoch")
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


def train_epoch(run, args, epoch):
    """Trains epoch `epoch` (0-based) at its lr; returns its log row, validation still empty."""
    run.train_loader.sampler.set_epoch(epoch)
    run.train_set.set_epoch(args.seed, epoch)  # augmentation of video i: (seed, epoch, i) alone
    lr = lr_at(args, epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    start = time.time()
    sums, steps = train_one_epoch(run.trained, run.train_loader, run.optimizer, run.criterion,
                                  accum_steps=args.accum_steps, scaler=run.scaler,
                                  amp_dtype=run.amp_dtype, clip_grad=args.clip_grad,
                                  desc=f"epoch {epoch + 1}/{args.epochs}", show_bar=run.rank == 0)
    run.step += steps
    if run.world > 1:
        dist.all_reduce(sums)
    loss_sum, correct, clips = sums.tolist()
    return dict(epoch=epoch + 1, step=run.step, lr=f"{lr:.6g}",
                train_loss=f"{loss_sum / clips:.4f}", train_top1=f"{100 * correct / clips:.2f}",
                val_top1="", val_top5="", clips_per_s=f"{clips / (time.time() - start):.2f}",
                skipped=0, seconds="")


@torch.no_grad()
def validate(model, loader, amp_dtype, show_bar=False):
    """Top-1 and top-5 hits and readable videos, summed over all ranks; broken ones do not count."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(3, device=device, dtype=torch.float64)
    for views, labels, _ in tqdm(loader, "val", disable=not show_bar, leave=False):
        if views is None:
            continue
        with vit.autocast(device, amp_dtype):
            scores = vit.video_scores(model, views.to(device, non_blocking=True))
        labels = labels.to(device)
        top1, top5 = (vit.topk_hits(scores, labels, k).sum() for k in (1, 5))
        counts += torch.stack([top1, top5, counts.new_tensor(len(labels))])
    if dist.is_initialized():
        dist.all_reduce(counts)
    return counts.tolist()


def write_log(path, rows):
    with data.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def save_epoch(run, args, row):
    """Writes log.csv with the epoch's training, last.pt and args.json; returns the checkpoint."""
    scaler = run.scaler.state_dict() if run.scaler.is_enabled() else None
    state = dict(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                 epoch=row["epoch"], step=row["step"], scaler=scaler, model_args=run.model_args,
                 classes=run.classes, args=vars(args), log=run.rows + [row],  # see fingerprint
                 effective_batch=args.batch_size * args.accum_steps * run.world)
    # log.csv before last.pt: a crash in between is undone on resume
    write_log(os.path.join(args.out, "log.csv"), run.rows + [row])
    save_checkpoint(state, os.path.join(args.out, "last.pt"))
    with data.atomic_path(os.path.join(args.out, "args.json")) as tmp, open(tmp, "w") as f:
        json.dump(vars(args), f, indent=2)
    return state


def save_checkpoint(state, path):
    with data.atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:  # into a Python file: torch turns its OSError (a full disk), or a Ctrl-C while
            torch.save(state, f)  # writing, into "unexpected pos"
        except RuntimeError as error:
            cause = error.__context__
            raise cause if isinstance(cause, (OSError, KeyboardInterrupt)) else error


def epoch_line(row, num_classes):
    validation = row["val_top1"] and f", val top-1 {row['val_top1']}%"
    if validation and num_classes > 5:  # top-5 of 5 classes or fewer is always 100%
        validation += f" top-5 {row['val_top5']}%"
    return (f"epoch {row['epoch']}: loss {row['train_loss']}, train top-1 {row['train_top1']}%"
            f"{validation}, {row['clips_per_s']} clips/s, {row['skipped']} broken videos skipped")


def done_line(run, args, seconds):
    minutes, seconds = divmod(round(seconds), 60)
    last = run.rows[-1]
    result = f"train top-1 {last['train_top1']}% (no val split)"
    epoch = next((f", epoch {row['epoch']}" for row in run.rows  # none if log.csv was moved away
                  if row["val_top1"] and float(row["val_top1"]) == run.best), "")
    if run.best is not None:
        result = (f"last epoch val top-1 {last['val_top1']}% (best {run.best:.2f}% in best.pt"
                  f"{epoch}, chance {100 / len(run.classes):.1f}%)")
    return (f"done in {minutes}m{seconds:02d}s: {args.variant} {result} after {args.epochs} "
            f"epochs; {args.out}")


def train(args, ckpt, rank, world, device, progress):
    """Each epoch: train, save, validate, save the validation, log; rank 0 writes the files."""
    run = build_run(args, ckpt, rank, world, device)
    run_start = time.time()
    for epoch in range(run.start_epoch, args.epochs):
        epoch_start = time.time()
        row = train_epoch(run, args, epoch)
        if rank == 0:  # saved before validation, so that a failure there loses no training
            state = save_epoch(run, args, row)
            progress["saved"] = row["epoch"]
        # eager: the compiled blocks would recompile for the validation shapes and no_grad
        with torch.compiler.set_stance("force_eager"):
            top1, top5, videos = validate(run.model, run.val_loader, run.amp_dtype, rank == 0)
        if run.val_set is not None and not videos:
            raise ValueError(f"--data {args.data}: none of the {len(run.val_set)} validation "
                             "videos can be decoded")
        if videos:  # percent of the readable validation videos
            row.update(val_top1=f"{100 * top1 / videos:.2f}", val_top5=f"{100 * top5 / videos:.2f}")
        row.update(skipped=sum(d.sync_broken(device) for d in (run.train_set, run.val_set) if d),
                   seconds=f"{time.time() - epoch_start:.1f}")
        run.rows.append(row)
        if rank == 0:  # the validation into log.csv; best.pt when it beats every earlier one
            write_log(os.path.join(args.out, "log.csv"), run.rows)
            if row["val_top1"] and (run.best is None or float(row["val_top1"]) > run.best):
                run.best = float(row["val_top1"])
                save_checkpoint({**state, "val_top1": run.best}, os.path.join(args.out, "best.pt"))
        run.log(epoch_line(row, len(run.classes)))
    run.log(done_line(run, args, time.time() - run_start))


def interrupt_once(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # torchrun passes the Ctrl-C on a second time
    raise KeyboardInterrupt


def main(argv=None):
    progress = {"saved": None}
    if "RANK" in os.environ:
        signal.signal(signal.SIGINT, interrupt_once)
    try:
        given = parse_flags(argv)
        with own_out(out_folder(given)):
            args, ckpt = configure(given)
            progress["saved"] = ckpt and ckpt["epoch"]
            rank, world, device = setup_distributed()
            try:
                train(args, ckpt, rank, world, device, progress)
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
        return 0
    except (ValueError, OSError, data.VideoError) as error:
        # a DataLoader worker's error ends with its message
        print(f"train.py: error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # NaN or inf loss: stop, the checkpoints stay as they were
        print(f"train.py: {error}; stopped, the last checkpoint is untouched", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        saved = progress["saved"] or "none"
        if os.environ.get("RANK", "0") == "0":  # torchrun's processes all get it: one speaks
            print(f"train.py: interrupted; last checkpoint epoch {saved}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
