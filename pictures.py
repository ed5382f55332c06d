"""Pictures drawn with OpenCV alone, as PNG bytes: attention maps over the frames their keys
come from, and training curves (evaluate.py --attention, --plot)."""
import math

import cv2
import numpy as np

CURVES = {"train_loss": "train loss", "train_top1": "train top-1 %", "val_top1": "val top-1 %"}
COLOURS = ((200, 90, 0), (0, 110, 240), (40, 150, 40), (30, 30, 210), (160, 0, 160), (0, 0, 0))
FONT = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, thickness=1, lineType=cv2.LINE_AA)
TILE = 128  # pixels per map: room for its two lines of labels
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a float32 loss beyond it is inf


def text_band(lines, width, scale=0.4, colour=(0, 0, 0)):
    band = np.full((round(37 * scale) * len(lines) + 4, width, 3), 255, np.uint8)
    for row, line in enumerate(lines):
        cv2.putText(band, line, (4, round(37 * scale) * (row + 1)), fontScale=scale, color=colour,
                    **FONT)
    return band


def labelled(image, *lines):
    """A BGR image enlarged to TILE (nearest: patches stay sharp) under its labels."""
    image = cv2.resize(np.ascontiguousarray(image), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    tile = np.concatenate([text_band(lines, TILE), image])
    return cv2.copyMakeBorder(tile, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))


def attention_maps(frames, weights, key_frame):
    """Row 0: the frames; row 1 + i: head i's maps, column t for the query of frame t, each
    drawn patch by patch over the frame that patch's key came from (hatched grey: zeros)."""
    size, grid = frames.shape[1], math.isqrt(weights.shape[2] - 1)
    stripes = np.add.outer(np.arange(size), np.arange(size)) % 6 < 2
    hatched = np.where(stripes, 90, 170).astype(np.uint8)[..., None].repeat(3, -1)
    sources = np.concatenate([frames[..., ::-1], hatched[None]])  # index -1: the zeros
    pixel_patch = np.arange(size) * grid // size
    rows = [[labelled(frame, f"frame {t}") for t, frame in enumerate(sources[:-1])]]
    for head in range(weights.shape[1]):
        rows.append([])
        for t, (weight, source) in enumerate(zip(weights[:, head], key_frame[:, head])):
            patch_source = source[1:].reshape(grid, grid)[pixel_patch[:, None], pixel_patch]
            background = sources[patch_source, np.arange(size)[:, None], np.arange(size)]
            heat = weight[1:].reshape(grid, grid)
            colours = cv2.applyColorMap(np.uint8(255 * heat / heat.max()), cv2.COLORMAP_JET)
            colours = cv2.resize(colours, (size, size), interpolation=cv2.INTER_NEAREST)
            names = [{-1: "t-1", 0: "t", 1: "t+1"}[f - t] if f >= 0 else "zeros"
                     for f in np.unique(source[1:])]
            rows[-1].append(labelled(cv2.addWeighted(background, 0.45, colours, 0.55, 0),
                                     f"head {head}, from {'/'.join(names)}",
                                     f"cls {weight[0]:.2f} max {heat.max():.2f}"))
    return np.concatenate([np.concatenate(row, axis=1) for row in rows])


def round_ticks(low, high, least_step):
    """Ticks 1, 2 or 5 times a power of ten apart, around low..high; at least least_step and a
    millionth of the largest value apart (a float64 holds no finer steps of values that large)."""
    least_step = max(least_step, 1e-6 * max(abs(low), abs(high)))
    if high - low < least_step:  # one value: in the middle, a tenth of it to either side
        pad = max(least_step, abs(low) / 10)
        low, high = low - pad, high + pad
    rough = max((high - low) / 5, least_step)
    step = min(m * 10.0 ** math.ceil(math.log10(rough / m)) for m in (1, 2, 5))
    return np.arange(math.floor(low / step), math.ceil(high / step) + 1) * step


def curve_panel(runs, column, width=420, height=300):
    """`column` against the epoch, a line per run in the order of COLOURS, on a ticked grid."""
    panel = np.full((height, width, 3), 255, np.uint8)
    points = np.array([p for curves in runs for p in curves[column]], float)
    ticks = [round_ticks(points[:, axis].min(), points[:, axis].max(), least)
             for axis, least in ((0, 1), (1, 1e-3))]
    low, high = np.array([t[0] for t in ticks]), np.array([t[-1] for t in ticks])
    corner, span = np.array([62, height - 40]), np.array([width - 80, 50 - height])

    def pixel(x, y, offset=(0, 0)):
        xy = corner + (np.array([x, y]) - low) / (high - low) * span + offset
        return tuple(int(v) for v in xy)

    for x in ticks[0]:
        cv2.line(panel, pixel(x, low[1]), pixel(x, high[1]), (225, 225, 225))
        cv2.putText(panel, f"{x:g}", pixel(x, low[1], (-4, 18)), fontScale=0.45, color=0, **FONT)
    for y in ticks[1]:
        cv2.line(panel, pixel(low[0], y), pixel(high[0], y), (225, 225, 225))
        cv2.putText(panel, f"{y:.3g}", pixel(low[0], y, (-56, 5)), fontScale=0.45, color=0, **FONT)
    cv2.rectangle(panel, pixel(*low), pixel(*high), (0, 0, 0))
    for curves, colour in zip(runs, COLOURS):
        line = np.array([pixel(*p) for p in curves[column]], np.int32)
        cv2.polylines(panel, [line], False, colour, 2, cv2.LINE_AA)
        if len(line) == 1:  # a lone point draws no line
            cv2.circle(panel, tuple(line[0].tolist()), 4, colour, -1, cv2.LINE_AA)
    cv2.putText(panel, "epoch", (width // 2 - 20, height - 4), fontScale=0.45, color=0, **FONT)
    return np.concatenate([text_band([f"{CURVES[column]} per epoch"], width, 0.55), panel])


def attention_picture(frames, weights, key_frame, title) -> bytes:
    """frames (T, S, S, 3) RGB, weights and key_frame (T, h, N+1) as vit.class_token_attention."""
    maps = attention_maps(frames, weights, key_frame)
    key = "colour: weight of a patch's key (red: the map's max); hatched: zeros beyond the clip"
    return png(np.concatenate([text_band([title, key], maps.shape[1]), maps]))


def drawable(curves):
    """{column: [(epoch, value)]} of a run less the values no axis holds: NaN, inf, and beyond
    float32."""
    return {c: [(e, v) for e, v in curve if abs(v) <= FLOAT32_MAX] for c, curve in curves.items()}


def curves_picture(runs, names) -> bytes:
    """runs: per run {column of CURVES: [(epoch, value)]}, values as `drawable` leaves them; a
    panel per column that has values."""
    panels = np.concatenate([curve_panel(runs, c) for c in CURVES
                             if any(curves[c] for curves in runs)], axis=1)
    legend = [text_band([f"---- {name}"], panels.shape[1], 0.5, colour)
              for name, colour in zip(names, COLOURS)]
    return png(np.concatenate([panels, *legend]))


def png(image) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()
