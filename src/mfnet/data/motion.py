"""A synthetic action dataset whose classes differ by motion only: real H.264 videos and UCF-101-style split lists.

Eight classes in four pairs; the two classes of a pair are the same kind of motion in opposite directions::

    move_right / move_left     move_down / move_up     rotate_clockwise / rotate_anticlockwise     grow / shrink

Every video draws its appearance at random from distributions shared by all classes: background (a smooth colour
field with static grain), object shape (disk, square, triangle, cross, ellipse), two object colours and a texture
(halves, stripes, an off-centre dot) painted in the object's own frame, size, position, speed within a range, and
per-frame sensor noise and gain flicker. Rotation turns the object about a pivot beside it, like a clock hand, so
the turn shows for every shape. The second class of a pair is made by playing the first class's rendering
backwards, so within a pair every frame comes from exactly the same distribution and no single frame (or unordered
set of frames) can tell the classes apart: only the order of frames can.

On disk (``root`` is the folder given to ``make_motion_dataset``)::

    root/classInd.txt              "1 move_right" ... (1-based, UCF-101 style)
    root/trainlist01.txt           "move_right/move_right_0003.mp4 1"
    root/testlist01.txt            "move_right/move_right_0000.mp4"
    root/<class>/<class>_NNNN.mp4  H.264, ``size`` x ``size`` pixels, ``num_frames`` frames at 25 fps
    root/motion.json               the generation settings (a second call with the same settings reuses the files)

Load it with ``mfnet.data.annotations.load_annotations("ucf101", root, root, split=1)``. Video ``i`` of every class
is rendered from the random stream ``(seed, pair, i)`` alone, so the videos do not depend on the order or number of
videos generated and a seed gives the same rendered frames everywhere (libx264's encoding of them is not
byte-reproducible from run to run: a few files differ slightly).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mfnet.data.video_writer import write_video
from mfnet.errors import DataError

# Pairs of classes that are the same motion in opposite directions; the second of each is the first reversed.
MOTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("move_down", "move_up"),
    ("rotate_clockwise", "rotate_anticlockwise"),
    ("grow", "shrink"),
)
MOTION_CLASSES: tuple[str, ...] = tuple(name for pair in MOTION_PAIRS for name in pair)
SHAPES = ("disk", "square", "triangle", "cross", "ellipse")
TEXTURES = ("halves", "stripes", "dot")
SPEC_FILE = "motion.json"
FPS = 25


@dataclass(frozen=True)
class MotionSpec:
    """How a motion dataset is generated.

    Attributes:
        videos_per_class: Videos of each class (train and test together).
        test_fraction: Share of each class's videos in the test list (the first ones by index).
        num_frames: Frames per video.
        size: Height and width of the videos in pixels (even, for H.264's 4:2:0 colour).
        seed: The seed every video's random stream starts from.
    """

    videos_per_class: int = 40
    test_fraction: float = 0.25
    num_frames: int = 32
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.videos_per_class < 2:
            raise DataError(f"videos_per_class is {self.videos_per_class}: ask for at least 2 (one train, one test)")
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"test_fraction is {self.test_fraction}: give a share strictly between 0 and 1")
        if self.num_frames < 2:
            raise DataError(f"num_frames is {self.num_frames}: a motion needs at least 2 frames")
        if self.size < 16 or self.size % 2:
            raise DataError(f"size is {self.size}: give an even number of pixels of at least 16")

    @property
    def test_per_class(self) -> int:
        """Test videos per class (at least one, and at least one training video is left)."""
        return min(max(1, round(self.videos_per_class * self.test_fraction)), self.videos_per_class - 1)


@dataclass(frozen=True)
class MotionDataset:
    """A generated dataset on disk.

    Attributes:
        root: The dataset folder.
        spec: The settings it was generated with.
        classes: Class names, index = label.
        num_train: Training videos.
        num_test: Test videos.
        reused: Whether the files were already there and were kept.
    """

    root: Path
    spec: MotionSpec
    classes: tuple[str, ...]
    num_train: int
    num_test: int
    reused: bool


def motion_pair_of(label: int) -> int:
    """The pair (0..3) a class label belongs to: ``label // 2``."""
    return label // 2


def render_motion(pair: int, rng: np.random.Generator, *, num_frames: int = 32, size: int = 64) -> np.ndarray:
    """Renders one video of the first class of ``MOTION_PAIRS[pair]``; reverse it in time for the second class.

    Args:
        pair: Index into ``MOTION_PAIRS`` (0: horizontal move, 1: vertical move, 2: rotation, 3: scaling).
        rng: The random stream that decides everything about the video.
        num_frames: Frames ``T``.
        size: Height and width ``H = W``.

    Returns:
        uint8 RGB frames ``(T, H, W, 3)``.
    """
    if not 0 <= pair < len(MOTION_PAIRS):
        raise ValueError(f"pair must be in 0..{len(MOTION_PAIRS) - 1}, got {pair}")
    background = _background(rng, size)  # (H, W, 3) float in [0, 255]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    colours = _object_colours(rng)  # (2, 3)
    stripes = float(rng.uniform(2.0, 3.5))  # texture frequency in the object's unit frame
    # Appearance at the middle of the video, in pixels; every class starts from the same distributions.
    radius = float(rng.uniform(0.16, 0.24)) * size
    centre = size / 2 + rng.uniform(-0.12, 0.12, size=2) * size  # (x, y)
    angle = float(rng.uniform(0.0, 2 * math.pi))
    tau = np.arange(num_frames, dtype=np.float64) - (num_frames - 1) / 2  # time from the middle frame
    xs = np.full(num_frames, centre[0])
    ys = np.full(num_frames, centre[1])
    angles = np.full(num_frames, angle)
    radii = np.full(num_frames, radius)
    # Motions are set for the whole video (first to last frame), so fewer frames make faster motion.
    if pair in (0, 1):  # move right (x grows) or down (y grows: image rows go down) by 30-50% of the frame
        travel = float(rng.uniform(0.35, 0.55)) * size
        (xs if pair == 0 else ys)[:] += travel * tau / (num_frames - 1)
    elif pair == 2:  # turn clockwise by 180-270 degrees about a pivot beside the object, like a clock hand
        # (image rows point down, so a growing angle turns clockwise on screen); the object's centre circles the
        # pivot, which makes the turn visible for any shape, including a plain disk
        turn = math.radians(float(rng.uniform(180.0, 270.0)))
        arm = float(rng.uniform(0.12, 0.20)) * size
        phase = angle + turn * tau / (num_frames - 1)
        xs = centre[0] + arm * np.cos(phase)
        ys = centre[1] + arm * np.sin(phase)
        angles = phase
    else:  # grow: the radius changes by a factor of 2 to 3
        total = float(rng.uniform(2.0, 3.0))
        radii = radius * np.exp(math.log(total) * tau / (num_frames - 1))
    noise = rng.normal(0.0, 3.0, size=(num_frames, size, size, 3))
    gains = rng.uniform(0.97, 1.03, size=num_frames)
    ys_grid, xs_grid = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        alpha, paint = _object(
            xs_grid - xs[t], ys_grid - ys[t], angles[t], radii[t], shape=shape, texture=texture, stripes=stripes
        )
        obj = colours[0] * (1.0 - paint[..., None]) + colours[1] * paint[..., None]  # (H, W, 3)
        frame = background * (1.0 - alpha[..., None]) + obj * alpha[..., None]
        frames[t] = np.clip(frame * gains[t] + noise[t], 0, 255).astype(np.uint8)
    return frames


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field plus static grain, ``(H, W, 3)`` in [0, 255]."""
    coarse = rng.uniform(40, 215, size=(4, 4, 3))
    grid = np.linspace(0, 3, size)
    i0 = np.minimum(grid.astype(int), 2)
    f = (grid - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (H, 4, 3)
    field = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]  # (H, W, 3)
    contrast = rng.uniform(0.2, 0.6)
    grain = rng.normal(0.0, 4.0, size=(size, size, 1))
    return 128 + (field - 128) * contrast + grain


def _object_colours(rng: np.random.Generator) -> np.ndarray:
    """Two clearly different colours, ``(2, 3)`` in [0, 255]."""
    first = rng.uniform(0, 255, size=3)
    second = 255 - first + rng.uniform(-40, 40, size=3)  # roughly complementary, so the texture is visible
    return np.clip(np.stack([first, second]), 0, 255)


def _object(
    dx: np.ndarray, dy: np.ndarray, angle: float, radius: float, *, shape: str, texture: str, stripes: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``alpha`` and texture mix ``paint`` (both ``(H, W)`` in [0, 1]) of the object at one instant.

    ``dx, dy`` are pixel offsets from the object's centre; the object's unit frame ``(u, v)`` is them turned by
    ``-angle`` and divided by ``radius``.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx + sin * dy) / radius
    v = (-sin * dx + cos * dy) / radius
    sdf = _SDF[shape](u, v) * radius  # signed distance in pixels (negative inside)
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)  # one-pixel anti-aliased edge: sub-pixel motion stays visible
    if texture == "halves":
        pattern = u + 0.3 * v
    elif texture == "stripes":
        pattern = np.sin(stripes * math.pi * u)
    else:  # an off-centre dot: a pointer that shows the turn even on a round object
        pattern = 0.35 - np.hypot(u - 0.45, v)
    paint = np.clip(0.5 + pattern * radius / 2, 0.0, 1.0)
    return alpha, paint


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sides = [u * math.cos(a) + v * math.sin(a) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) - 0.6


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bar_x = np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.35)
    bar_y = np.maximum(np.abs(u) - 0.35, np.abs(v) - 1.0)
    return np.minimum(bar_x, bar_y)


# Approximate signed distances in the unit frame (exact for the disk; good enough for a 1-pixel soft edge).
_SDF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disk": lambda u, v: np.hypot(u, v) - 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.85,
    "triangle": _sdf_triangle,
    "cross": _sdf_cross,
    "ellipse": lambda u, v: (np.hypot(u, v / 0.55) - 1.0) * 0.55,
}


def video_stream(spec: MotionSpec, pair: int, index: int) -> np.random.Generator:
    """The random stream of video ``index`` of ``pair``; both classes of the pair share it."""
    return np.random.default_rng([spec.seed, pair, index])


def make_motion_dataset(
    root: str | Path, spec: MotionSpec | None = None, *, progress: bool = True, overwrite: bool = False
) -> MotionDataset:
    """Writes the motion dataset to ``root``, or reuses it when ``root/motion.json`` holds the same settings.

    Args:
        root: The dataset folder (created).
        spec: The settings (default ``MotionSpec()``).
        progress: Show a tqdm progress bar on stderr.
        overwrite: Regenerate even when a complete dataset with the same settings is there.

    Returns:
        A :class:`MotionDataset` describing the files.

    Raises:
        DataError: When ``root`` holds a motion dataset made with other settings (use another folder or
            ``overwrite``), or a file that is not a folder.
    """

    spec = spec or MotionSpec()
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file: give a folder for the motion dataset")
    n_test = spec.test_per_class
    n_train = spec.videos_per_class - n_test
    info = MotionDataset(root, spec, MOTION_CLASSES, n_train * len(MOTION_CLASSES), n_test * len(MOTION_CLASSES), True)
    spec_path = root / SPEC_FILE
    if spec_path.exists() and not overwrite:
        stored = _read_spec(spec_path)
        if stored != spec:
            raise DataError(
                f"{root} holds a motion dataset made with other settings ({_describe(stored)}): "
                "choose another folder, or regenerate it with --overwrite"
            )
        if _complete(root, spec):
            return info
    spec_path.unlink(missing_ok=True)  # written last: its presence marks a complete dataset
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(pair, i) for i in range(spec.videos_per_class) for pair in range(len(MOTION_PAIRS))]
    bar = tqdm(jobs, desc="make-motion", unit="video", disable=None if progress else True, total=len(jobs))
    for pair, i in bar:
        frames = render_motion(pair, video_stream(spec, pair, i), num_frames=spec.num_frames, size=spec.size)
        forward, backward = MOTION_PAIRS[pair]
        write_video(root / _relative(forward, i), frames, fps=FPS, codec="libx264", gop_size=spec.num_frames)
        write_video(root / _relative(backward, i), frames[::-1], fps=FPS, codec="libx264", gop_size=spec.num_frames)
    (root / "classInd.txt").write_text("".join(f"{k + 1} {name}\n" for k, name in enumerate(MOTION_CLASSES)))
    train_lines, test_lines = [], []
    for k, name in enumerate(MOTION_CLASSES):
        for i in range(spec.videos_per_class):
            if i < n_test:
                test_lines.append(f"{_relative(name, i)}\n")
            else:
                train_lines.append(f"{_relative(name, i)} {k + 1}\n")
    (root / "trainlist01.txt").write_text("".join(train_lines))
    (root / "testlist01.txt").write_text("".join(test_lines))
    tmp = spec_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"generator": "mfnet.data.motion", "classes": list(MOTION_CLASSES), **asdict(spec)}))
    tmp.replace(spec_path)
    return MotionDataset(root, spec, MOTION_CLASSES, info.num_train, info.num_test, False)


def _relative(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.mp4"


def _complete(root: Path, spec: MotionSpec) -> bool:
    lists = ("classInd.txt", "trainlist01.txt", "testlist01.txt")
    if not all((root / name).is_file() for name in lists):
        return False
    return all((root / _relative(name, i)).is_file() for name in MOTION_CLASSES for i in range(spec.videos_per_class))


def _read_spec(path: Path) -> MotionSpec:
    try:
        data = json.loads(path.read_text())
        return MotionSpec(**{k: data[k] for k in MotionSpec.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not a motion dataset description ({err}): remove the folder and regenerate"
        ) from err


def _describe(spec: MotionSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(spec).items())
