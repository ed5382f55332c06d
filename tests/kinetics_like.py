"""Kinetics-like clips for the tests of the prepared copy (tests/test_loader_speed.py measures it,
tests/test_prepared_copy.py holds it to its promise): a natural-image-like scene (dead leaves:
occluding disks of power-law radii, 1/f-textured, over a smooth background) seen by a camera that
pans, zooms and shakes, with textured objects that move, turn and deform, exposure drift and sensor
noise. The frames need numpy and OpenCV only; write_h264 (PyAV, x264 at CRF 23 as YouTube's 360p
and the 256-short-side copies of Kinetics) is for the measurement, write_opencv for CI. The detail
is set so that x264 needs about 300-600 kbit/s at 640x360 and so that the copies' sizes and PSNR
come within 10% and 1 dB of those measured on real Kinetics-like footage.
"""
import os

import cv2
import numpy as np

# the measurement's sources (width, height, fps): YouTube's 360p, Kinetics' 256-short-side copies
SOURCES = [(640, 360, 30), (640, 360, 25), (454, 256, 30), (640, 360, 30), (340, 256, 25),
           (640, 360, 25), (454, 256, 25), (640, 360, 30), (340, 256, 30), (640, 360, 25)]
CRF = 23
CONTRAST = 45  # std of a leaf's brightness about the background's there


def pink(rng, shape, slope):
    """Gaussian noise of amplitude spectrum 1 / f^slope (natural images: about 1), unit std."""
    f = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1]))
    f[0, 0] = np.inf
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** slope
    field = np.fft.irfft2(spectrum, shape)
    return (field / field.std()).astype(np.float32)


def scene(rng, shape, slope, leaves, blur=0.7):
    """float32 RGB: dead leaves (occluding disks, radii ~ r^-3 from 3 pixels to half the height:
    edges at every scale) over a smooth 1/f^2.5 background, each a muted colour near the
    background's brightness there, shaded by its own amount of 1/f^slope texture."""
    light = 40 * pink(rng, shape, 2.5) + 125
    background = light[..., None] + 6 * np.stack([pink(rng, shape, 2.5) for _ in range(3)], -1)
    labels = np.zeros(shape, np.int32)
    low, high = 3.0 ** -2, (shape[0] / 2) ** -2
    radii = (low - rng.random(leaves) * (low - high)) ** -0.5
    centres = (rng.random((leaves, 2)) * shape[::-1]).astype(int)
    for k, (r, (x, y)) in enumerate(zip(radii, centres), 1):
        cv2.circle(labels, (int(x), int(y)), int(r), k, -1, cv2.LINE_8)
    grey = light[centres[:, 1], centres[:, 0], None] + rng.normal(0, CONTRAST, (leaves, 1))
    colour = np.clip(grey, 20, 235) * np.clip(1 + rng.normal(0, 0.12, (leaves, 3)), 0.5, 1.5)
    texture = rng.uniform(0, 0.2, leaves + 1)[labels] * pink(rng, shape, slope)
    image = np.where(labels[..., None] > 0, colour[labels - 1], background)
    return cv2.GaussianBlur(image * (1 + texture[..., None]), (0, 0), blur)


def wave(rng, amplitude, periods=(2, 15)):
    """A smooth random path: t (s) -> offset, the sum of two sinusoids."""
    period, phase = rng.uniform(*periods, 2), rng.uniform(0, 2 * np.pi, 2)
    weight = amplitude * rng.dirichlet([1, 1])
    return lambda t: float(np.sum(weight * np.sin(2 * np.pi * t / period + phase)))


def mover(rng, slope, width, height):
    """A textured object that moves, turns and deforms: t -> (RGB, alpha) in the frame."""
    side = int(height * rng.uniform(0.3, 0.6))
    texture, mask = scene(rng, (side, side), slope, 1000), np.zeros((side, side), np.float32)
    x0, y0 = rng.uniform(0.25, 0.75) * width, rng.uniform(0.3, 0.7) * height
    x, y = wave(rng, 0.15 * width, (3, 12)), wave(rng, 0.08 * height, (3, 12))
    angle = wave(rng, 20, (1.5, 5))
    axes = [wave(rng, 0.12, (0.5, 2)) for _ in range(2)]

    def draw(t):
        mask[:] = 0
        radii = [int(side * (0.35 + a(t))) for a in axes]
        cv2.ellipse(mask, (side // 2, side // 2), radii, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle(t), 1.0)
        m[:, 2] += (x0 + x(t) - side / 2, y0 + y(t) - side / 2)
        return (cv2.warpAffine(texture, m, (width, height), flags=cv2.INTER_CUBIC),
                cv2.warpAffine(mask, m, (width, height))[..., None])
    return draw


def render(seed, width, height, fps, seconds):
    """uint8 RGB frames of one clip: a camera that pans, zooms and shakes over a scene, objects
    on top, exposure drift, sensor noise; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    slope, noise, leaves = rng.uniform(1.1, 1.4), rng.uniform(1.5, 3), np.exp(rng.uniform(6.5, 9))
    world = scene(rng, (int(height * 2.2), int(width * 2.6)), slope, int(leaves), 1.2)
    movers = [mover(rng, slope, width, height) for _ in range(rng.integers(1, 4))]
    pan = wave(rng, 0.2 * width, (4, 20)), wave(rng, 0.1 * height, (4, 20))
    shake = wave(rng, 1.5, (0.3, 1)), wave(rng, 1.5, (0.3, 1))
    zoom, gain = wave(rng, 0.15, (8, 30)), wave(rng, 0.06)
    for n in range(round(seconds * fps)):
        t, z = n / fps, 1.5 + zoom(n / fps)
        cx, cy = (size / 2 + p(t) + s(t) for size, p, s in zip(world.shape[1::-1], pan, shake))
        m = np.float32([[z, 0, cx - z * width / 2], [0, z, cy - z * height / 2]])
        frame = cv2.warpAffine(world, m, (width, height),
                               flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC)
        for draw in movers:
            pixels, alpha = draw(t)
            frame += alpha * (pixels - frame)
        frame *= 1 + gain(t)
        frame += rng.standard_normal(frame.shape, np.float32) * noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_h264(path, seed, width, height, fps, seconds):
    """A Kinetics-like .mp4: x264 at CRF 23, its defaults otherwise (keyframes 250 apart)."""
    import av  # not a dependency of the project: only the measurement needs it
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(CRF)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in render(seed, width, height, fps, seconds):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_opencv(path, seed, width, height, fps, seconds):
    """The same clip as an .mp4 of MPEG-4 part 2 by cv2.VideoWriter (CI has no PyAV). Like x264 at
    Kinetics' rates, and unlike an MJPEG at high quality, it smooths much of the sensor noise away:
    copies of these clips measure within about 0.5 dB of copies of the H.264 ones."""
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: cv2.VideoWriter cannot write mp4v here")
    for frame in render(seed, width, height, fps, seconds):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def shrunk(frame, short_side):
    """The reference: the frame area-averaged to short side `short_side`, unless smaller already."""
    height, width = frame.shape[:2]
    if min(height, width) <= short_side:
        return frame
    scale = short_side / min(height, width)
    return cv2.resize(frame, (round(width * scale), round(height * scale)),
                      interpolation=cv2.INTER_AREA)
