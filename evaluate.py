"""Test trained models with the paper's multi-view test (Sec. 4.1: 10 clips x 3 crops = 30 views
per video, their softmax scores averaged, top-1 / top-5 over the videos that decode); one video's
top-5, reports and tables, and pictures of what the heads look at and of training runs.

    python evaluate.py --checkpoint runs/synthetic-KV/best.pt --json runs/synthetic-KV/eval.json
    python evaluate.py --checkpoint runs/KV/best.pt --data k400 --annotations validate.csv
    python evaluate.py --checkpoint runs/KV/best.pt --video clip.mp4  # its top-5 classes
    python evaluate.py --checkpoint runs/KV/best.pt --frame-order reversed  # does time matter?
    python evaluate.py --checkpoint tokshift_k400.pth.tar --variant tokenshift \
        --shift-layout released --data k400-288 --annotations k400-288/validate.csv
    python evaluate.py --table runs/*/eval.json  # a Markdown table of --json reports
    python evaluate.py --checkpoint runs/KV/best.pt --video clip.mp4 --attention kv.png  # + kv.npz
    python evaluate.py --plot runs/a/log.csv runs/b/log.csv --png curves.png
"""
import argparse
import csv
import io
import json
import os
import signal
import sys
import time


def interrupted(signum, frame):  # while the imports below load: one line, not a traceback
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
    os._exit(130)  # nothing started yet that would need finishing


SIGINT_HANDLER = signal.signal(signal.SIGINT, interrupted)
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import data
import pictures
import vit
signal.signal(signal.SIGINT, SIGINT_HANDLER)  # Python's own again: main() answers a Ctrl-C

# A checkpoint without model_args (the authors' releases) holds the paper's model (Sec. 4.1) unless
# the flags say otherwise; the variant defaults to the one that adds nothing to the ViT.
PAPER_MODEL = dict(variant="vit", shift_layout="paper", size="B/16", img_size=224, frames=8,
                   stride=32, heads=2, patches=16, shift_div=4)
ORDERS = ("original", "reversed", "shuffled")  # --frame-order


def parse_args(argv):
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = data.refuse
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--checkpoint", help="checkpoint to test: train.py's (e.g. runs/KV/best.pt)"
                      " or one the model flags describe (e.g. the authors' .pth.tar)")
    mode.add_argument("--table", nargs="+", metavar="JSON",
                      help="print a Markdown table of --json reports")
    mode.add_argument("--plot", nargs="+", metavar="CSV", help="draw these train.py log.csv files")
    p.add_argument("--png", help="with --plot: the picture to write")
    p.add_argument("--attention", metavar="OUT.png", help="with --video: draw the class-token "
                   "attention of the centre view; its numbers go to OUT.npz")
    p.add_argument("--block", type=int, help="with --attention: this block (default the last)")
    p.add_argument("--video", help="with --checkpoint: print the top-5 classes of this one video")
    p.add_argument("--data", help="dataset root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", help="split folder under --data (default: val)")
    p.add_argument("--annotations", help="Kinetics CSV or list file of the split")
    p.add_argument("--clips", type=int, default=10,
                   help="temporal positions per video (default 10)")
    p.add_argument("--crops", type=int, default=3, help="spatial crops per clip (default 3)")
    p.add_argument("--average", choices=("softmax", "logits"), default="softmax",
                   help="how views combine: softmax (default) or logits (as the released code)")
    p.add_argument("--amp", choices=vit.AMP, default="auto",
                   help="auto: bf16 on GPUs that have it; fp32 on CPU")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loader processes")
    p.add_argument("--json", help="write the report here as JSON")
    p.add_argument("--per-class", help="write per-class accuracy here as CSV")
    p.add_argument("--device", type=vit.usable_device,
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=1, help="videos per forward (default 1)")
    p.add_argument("--frame-order", choices=ORDERS, default="original",
                   help="feed each view's T frames as sampled (default), reversed, or shuffled "
                   "by one permutation per video (from --seed and the video's index)")
    p.add_argument("--seed", type=int, default=0, help="of --frame-order shuffled (default 0)")
    add_model_flags(p)
    args = p.parse_args(argv)
    for flag in ("clips", "crops", "batch_size", "img_size", "frames", "stride", "shift_div"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} {value}: must be a positive integer")
    if args.seed < 0:
        p.error(f"--seed {args.seed}: must be >= 0")
    for flag, needs in (("plot", "png"), ("png", "plot"), ("attention", "video"),
                        ("block", "attention")):
        if getattr(args, flag) is not None and not getattr(args, needs):
            p.error(f"--{flag} needs --{needs}")
    if args.attention and args.json:
        p.error("--json: --attention writes no report; its numbers go to the .npz beside it")
    if args.video and (args.per_class or args.split):
        refuse_with_video(["per_class", "split"], args)
    args.npz = args.attention and os.path.splitext(args.attention)[0] + ".npz"
    args.order = {"frame_order": args.frame_order}  # as the reports record it
    if args.frame_order == "shuffled":
        args.order["seed"] = args.seed
    check_outputs(args)
    return args


def check_outputs(args):
    """Refuses an output that is an input of the command or another of its outputs (compared as
    files: a symlink or hard link is the file it names); then checks each can be written, all
    before the test."""
    inputs = [("--checkpoint", args.checkpoint), ("--video", args.video),
              ("--annotations", args.annotations)]
    inputs += [("--plot", path) for path in args.plot or []]
    inputs += [("--table", path) for path in args.table or []]
    outputs = [("--json", args.json), ("--per-class", args.per_class), ("--png", args.png),
               ("--attention", args.attention), ("the .npz of --attention", args.npz)]
    outputs = [(flag, path) for flag, path in outputs if path]
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in inputs + outputs[:i]:
            if other and same_file(path, other):
                raise ValueError(f"{flag} {path}: the same file as {other_flag} {other}")
    for _, path in outputs:
        data.check_writable(path)


def same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def refuse_with_video(flags, args):
    """One line for the dataset flags given beside --video, which tests one file."""
    given = [f"--{flag.replace('_', '-')}" for flag in flags if getattr(args, flag)]
    if given:
        raise ValueError(f"--video tests one file: {', '.join(given)} apply to a dataset only")


def add_model_flags(p):
    """What a checkpoint without model_args holds (see PAPER_MODEL; a train.py one needs none)."""
    p.add_argument("--variant", choices=vit.VARIANTS, help="model of the checkpoint (default vit)")
    p.add_argument("--shift-layout", choices=vit.LAYOUTS, help="its shift layout (default paper)")
    p.add_argument("--size", choices=vit.SIZES, help="ViT size (default B/16)")
    p.add_argument("--img-size", type=int, help="frame size (default 224)")
    p.add_argument("--frames", type=int, help="frames per clip (default 8)")
    p.add_argument("--stride", type=int, help="frames between sampled frames (default 32)")
    p.add_argument("--heads", type=int, help="heads MSCA shifts (default 2)")
    p.add_argument("--patches", type=int, help="patches pMSCA shifts (default 16)")
    p.add_argument("--shift-div", type=int, help="TokenShift moves D/div channels (default 4)")


def write_text(path, text):  # or bytes
    with data.atomic_path(path) as tmp, open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)


# checkpoint -> model -> multi-view test
def model_settings(args, defaults):
    """The settings PAPER_MODEL names: `defaults`, overridden by the flags given."""
    given = {key: getattr(args, key) for key in PAPER_MODEL}
    return {**defaults, **{key: value for key, value in given.items() if value is not None}}


def describe_model(args, ckpt):
    """(model_args, stride, classes): a train.py checkpoint's own, where a flag that says otherwise
    is refused; else the model flags' over PAPER_MODEL, and the classes of the dataset: those its
    --annotations (a list's classes.txt) or its class folders name."""
    path = args.checkpoint
    if not (isinstance(ckpt, dict) and "model_args" in ckpt):
        folders = args.data and os.path.isdir(os.path.join(args.data, args.split or "val"))
        if not (args.data and args.annotations or folders):
            raise ValueError(f"--checkpoint {path}: holds no classes (not a train.py checkpoint): "
                             "pass the --data it was trained on, with its --annotations unless "
                             "its class folders name them")
        settings = model_settings(args, PAPER_MODEL)
        frames, stride = settings.pop("frames"), settings.pop("stride")
        return dict(settings, num_frames=frames), stride, None
    missing = [k for k in ("model", "classes", "args") if k not in ckpt]
    if missing:
        raise ValueError(f"--checkpoint {path}: not a train.py checkpoint "
                         f"(no {', '.join(missing)})")
    model_args, stride = ckpt["model_args"], ckpt["args"]["stride"]
    own = dict(model_args, frames=model_args["num_frames"], stride=stride)
    for key, value in model_settings(args, {}).items():
        if value != own.get(key):
            raise ValueError(f"--{key.replace('_', '-')} {value}: {path} holds a model "
                             f"with {key} {own.get(key)}")
    return model_args, stride, ckpt["classes"]


def reorder(views, order, seed, index):
    """views (..., 3, T, S, S) with their T frames in --frame-order: the same permutation for all
    views of a video, for shuffled drawn from (seed, the video's index) alone."""
    if order == "original":
        return views
    steps = np.arange(views.size(-3))[::-1]
    if order == "shuffled":
        steps = np.random.default_rng([seed, index]).permutation(views.size(-3))
    return views[..., torch.from_numpy(steps.copy()), :, :]


class InFrameOrder(torch.utils.data.Dataset):
    """A test dataset's items in --frame-order. Item i is reordered by its index, in whichever
    DataLoader worker loads it: the numbers do not depend on the workers."""

    def __init__(self, dataset, order, seed):
        self.dataset, self.order, self.seed = dataset, order, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if item is None:
            return None
        return reorder(item[0], self.order, self.seed, index), item[1]


@torch.no_grad()
def predict_videos(model, dataset, *, device, amp_dtype=None, batch_size=1, workers=0,
                   average="softmax", frame_order="original", seed=0):
    """The multi-view test over a KineticsDataset(train=False): scores (videos, classes), labels,
    and the number of broken videos skipped. Only videos that decode are scored."""
    loader = DataLoader(InFrameOrder(dataset, frame_order, seed), batch_size=batch_size,
                        num_workers=workers, collate_fn=data.collate_readable,
                        pin_memory=device.type == "cuda")
    scores, labels, skipped = [], [], 0
    for views, label, dropped in tqdm(loader, desc="test", unit="batch", dynamic_ncols=True):
        skipped += dropped
        if views is not None:
            with vit.autocast(device, amp_dtype):
                views = views.to(device, non_blocking=True)
                scores.append(vit.video_scores(model, views, average).cpu())
            labels.append(label)
    if not scores:
        raise ValueError(f"--data {dataset.root}: none of its {skipped} videos could be decoded")
    return torch.cat(scores), torch.cat(labels), skipped


def per_class_csv(scores, labels, classes):
    """One row per class: how many videos it has, its top-1 / top-5 accuracy in percent."""
    top1, top5 = vit.topk_hits(scores, labels, 1), vit.topk_hits(scores, labels, 5)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "videos", "top1", "top5"])
    for index, name in enumerate(classes):
        mine = labels == index
        n = int(mine.sum())
        accuracy = [f"{100 * hits[mine].float().mean():.2f}" if n else "nan"
                    for hits in (top1, top5)]
        writer.writerow([name, n] + accuracy)
    return out.getvalue()


def classify_video(model, args, classes, view_args, device):
    """The top-5 classes of one video (index 0 for --frame-order) by the multi-view test, printed
    and returned."""
    views = reorder(data.test_views(args.video, **view_args), args.frame_order, args.seed, 0)
    with torch.no_grad(), vit.autocast(device, vit.amp_dtype(args.amp, device)):
        scores = vit.video_scores(model, views[None].to(device), args.average)[0]
    top = scores.topk(min(5, len(classes)))
    top5 = {classes[i]: p for p, i in zip(top.values.tolist(), top.indices.tolist())}
    for name, p in top5.items():
        print(f"{p:8.4f}  {name}")  # probability, or mean logit with --average logits
    return {"video": args.video, "top5": top5, **args.order}


def draw_attention(model, args, view_args, variant, device):
    """--attention: one block's class-token attention on the centre view (1 clip, 1 crop), its
    frames in --frame-order (video index 0): the npz and the picture hold them as fed."""
    block = len(model.blocks) - 1 if args.block is None else args.block
    if not 0 <= block < len(model.blocks):
        raise ValueError(f"--block {block}: the model has blocks 0..{len(model.blocks) - 1}")
    view = data.test_views(args.video, **{**view_args, "clips": 1, "crops": 1})[0]
    view = reorder(view, args.frame_order, args.seed, 0)
    frames = ((view.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    video = data.to_tensor(frames / 255.0)[None]  # the same view, rebuilt from the saved frames
    weights, key_frame = vit.class_token_attention(model, video.to(device), block)
    weights, key_frame = weights[0].float().cpu().numpy(), key_frame.numpy()
    with data.atomic_path(args.npz) as tmp:
        np.savez(tmp, frames=frames, attention=weights, key_frame=key_frame)
    title = (f"{os.path.basename(args.video)}: {variant}, class-token attention of block {block}, "
             f"frames {args.frame_order}")
    write_text(args.attention, pictures.attention_picture(frames, weights, key_frame, title))
    print(f"wrote {args.attention} and {args.npz}")


def read_curves(path):
    """{column: [(epoch, value)]} of a train.py log.csv, rows without the value left out."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {c: [(int(r["epoch"]), float(r[c])) for r in rows if r[c]] for c in pictures.CURVES}
    except (OSError, KeyError, ValueError, TypeError) as error:
        problem = f"not a readable train.py log.csv ({type(error).__name__})"
        raise ValueError(f"--plot {path}: {problem}") from None


def plot_runs(paths, png):
    """--plot: train loss, train and val top-1 per epoch of every log.csv, a colour per run."""
    if len(paths) > len(pictures.COLOURS):
        raise ValueError(f"--plot: at most {len(pictures.COLOURS)} runs, one colour each")
    runs = [pictures.drawable(read_curves(path)) for path in paths]
    if not any(curve for curves in runs for curve in curves.values()):
        raise ValueError(f"--plot {paths[0]}: no epoch with a finite value to draw")
    write_text(png, pictures.curves_picture(runs, paths))
    print(f"wrote {png}")


def run_test(args, device):
    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
    ckpt = vit.load_torch_file(args.checkpoint)
    model_args, stride, classes = describe_model(args, ckpt)
    trained = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}  # a train.py run's flags
    view_args = dict(num_frames=model_args["num_frames"], stride=stride,
                     img_size=model_args["img_size"], clips=args.clips, crops=args.crops,
                     sampling=trained.get("sampling", "dense"))  # dense: before --sampling
    one_video = args.video or args.attention
    if one_video and classes is not None:  # the checkpoint names its classes: no dataset needed
        refuse_with_video(["data", "annotations"], args)
    dataset, root, split = None, args.data or trained["data"], args.split or "val"
    if classes is None or not one_video:
        dataset = data.KineticsDataset(root, split, train=False,
                                       annotations=args.annotations, **view_args)
    classes = classes or dataset.classes  # a file that names no classes: those of --annotations
    model = vit.build_model(**dict(model_args, num_classes=len(classes)))
    weights = vit.state_dict_of(ckpt, args.checkpoint)
    model = vit.load_state(model, weights, args.checkpoint).to(device).eval()
    if args.attention:
        return draw_attention(model, args, view_args, model_args["variant"], device)
    if args.video:
        report = classify_video(model, args, classes, view_args, device)
        if args.json:
            write_text(args.json, json.dumps(report, indent=2))
        return report
    about = {"variant": model_args["variant"], "checkpoint": args.checkpoint,
             "epoch": ckpt.get("epoch"), "data": root, "split": split, "model_args": model_args}
    return test_dataset(args, model, dataset, classes, device, about)


def test_dataset(args, model, dataset, classes, device, about):
    """The multi-view test of `dataset`: prints top-1/top-5, writes --json and --per-class."""
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        raise ValueError(f"--data {dataset.root}: classes the checkpoint was not trained on: "
                         f"{', '.join(unknown[:5])}")
    start = time.time()
    scores, labels, skipped = predict_videos(
        model, dataset, device=device, amp_dtype=vit.amp_dtype(args.amp, device),
        batch_size=args.batch_size, workers=args.workers, average=args.average,
        frame_order=args.frame_order, seed=args.seed)
    # the split may hold fewer classes than the checkpoint
    labels = torch.tensor([classes.index(c) for c in dataset.classes])[labels]
    top1 = 100.0 * vit.topk_hits(scores, labels, 1).float().mean().item()
    top5 = None  # top-5 of 5 classes or fewer is always 100 %
    if len(classes) > 5:
        top5 = 100.0 * vit.topk_hits(scores, labels, 5).float().mean().item()
    report = {"top1": top1, "top5": top5, "views": args.clips * args.crops,
              "clips": args.clips, "crops": args.crops, "average": args.average,
              "sampling": dataset.sampling, **args.order, "videos": len(labels),
              "skipped": skipped, **about, "seconds": round(time.time() - start, 1)}
    top5_text = f"(top-5: {len(classes)} classes)"
    if top5 is not None:
        top5_text = f"top-5 {top5:.2f}%"
    print(f"{report['variant']}, frames {args.frame_order}: top-1 {top1:.2f}%  {top5_text}  over "
          f"{len(labels)} videos x {report['views']} views ({skipped} broken videos skipped)")
    reports = {args.json: json.dumps(report, indent=2),
               args.per_class: per_class_csv(scores, labels, classes)}
    for path, text in reports.items():
        if path:
            write_text(path, text)
    return report


def results_table(paths):
    """A Markdown table of evaluate.py --json test reports."""
    lines = ["| variant | frame order | top-1 % | top-5 % | videos | views | skipped "
             "| checkpoint (epoch) |", "|---|---|---|---|---|---|---|---|"]
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"--table {path}: no such file")
        try:
            with open(path) as f:
                r = json.load(f)
            top5 = "-" if r["top5"] is None else f"{r['top5']:.1f}"
            order = r.get("frame_order", "original")  # reports from before --frame-order
            if order == "shuffled":
                order = f"shuffled (seed {r['seed']})"
            checkpoint = f"{r['checkpoint']} ({r.get('epoch')})"
            lines.append(f"| {r['variant']} | {order} | {r['top1']:.1f} | {top5} | {r['videos']} "
                         f"| {r['views']} | {r['skipped']} | {checkpoint} |")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = f"not an evaluate.py --json report ({type(error).__name__})"
            raise ValueError(f"--table {path}: {problem}") from None
    return "\n".join(lines)


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.table:
            print(results_table(args.table))
            return None
        if args.plot:
            return plot_runs(args.plot, args.png)
        return run_test(args, args.device)
    except (ValueError, OSError, data.VideoError) as error:
        # a worker's error carries the worker's traceback and ends with its message
        print(f"evaluate.py: error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("evaluate.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
