"""Frame exactness: the reader's frame ``i`` is the ``i``-th frame of a sequential decode, for every file.

Videos with B-frames (decode order differs from display order) in several codecs and containers, and a real
UCF-101-style XVID AVI with packed B-frames, are read through ``open_video`` with random sorted index sets, by
fresh readers and by one reused reader (seeking backwards and across gaps), and compared pixel for pixel with
the same indices of a plain PyAV decode from the start.
"""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pytest

from mfnet.data.readers import open_video
from mfnet.data.video_writer import numbered_frames, read_frame_number, write_video

XVID = Path(__file__).parent / "videos" / "ucf101_xvid_packed_bframes.avi"
NUM_FRAMES = 60
AV_PICTURE_TYPE_B = 3  # FFmpeg's picture type of a B-frame

# (file name, encoder): B-frames in each codec and container PyAV writes here.
B_FRAME_CASES = [
    ("h264_bframes.mp4", "libx264"),
    ("h264_bframes.mkv", "libx264"),
    ("h264_bframes.avi", "libx264"),
    ("mpeg4_bframes.avi", "mpeg4"),
    ("mpeg4_bframes.mkv", "mpeg4"),
    ("mpeg4_bframes.mov", "mpeg4"),
    ("mpeg2_bframes.mpg", "mpeg2video"),
    ("mpeg1_bframes.mpeg", "mpeg1video"),
]


def _sequential_decode(path: Path) -> np.ndarray:
    """All frames in the order a plain decode from the start yields them, RGB ``(T, H, W, 3)``."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _index_sets(rng: random.Random, total: int, count: int = 12) -> list[list[int]]:
    """Random sorted index sets: clips of 16 (or fewer) frames anywhere, with gaps that force seeks."""
    sets = [sorted(rng.sample(range(total), min(16, total))) for _ in range(count)]
    sets.append(list(range(total)))  # everything, read without a seek
    sets.append([total - 1, total - 1])  # the last frame alone, reached by a seek
    starts = [rng.randrange(total - 8) for _ in range(3)]
    sets += [list(range(start, start + 8, 2)) for start in starts]  # short strided clips
    return sets


def _check_exact(path: Path, seed: int) -> None:
    expected = _sequential_decode(path)
    rng = random.Random(seed)
    sets = _index_sets(rng, len(expected))
    with open_video(path) as reused:
        assert reused.num_frames == len(expected)
        for indices in sets:  # one reader: each read seeks from wherever the previous one stopped
            got = reused.read(indices).numpy()
            wrong = [i for i, frame in zip(indices, got, strict=True) if not np.array_equal(frame, expected[i])]
            assert not wrong, f"reused reader: frames {wrong} of {path.name} differ from a sequential decode"
        assert reused.num_frames == len(expected)
    for indices in reversed(sets):  # fresh readers: the first read of a file
        with open_video(path) as fresh:
            got = fresh.read(indices).numpy()
            assert fresh.num_frames == len(expected)
        wrong = [i for i, frame in zip(indices, got, strict=True) if not np.array_equal(frame, expected[i])]
        assert not wrong, f"fresh reader: frames {wrong} of {path.name} differ from a sequential decode"


@pytest.mark.parametrize(("name", "codec"), B_FRAME_CASES)
def test_b_frame_videos_read_frame_exact(tmp_path: Path, name: str, codec: str) -> None:
    path = write_video(tmp_path / name, numbered_frames(NUM_FRAMES), codec=codec, gop_size=10, b_frames=2)
    with av.open(str(path)) as container:  # the file really has B-frames
        types = [int(frame.pict_type) for frame in container.decode(video=0)]
    assert types.count(AV_PICTURE_TYPE_B) >= NUM_FRAMES // 3
    # The sequential decode is the source order, so the reader is exact against the frames written, too.
    assert [read_frame_number(frame) for frame in _sequential_decode(path)] == list(range(NUM_FRAMES))
    _check_exact(path, seed=len(name))


def test_ucf101_xvid_with_packed_b_frames_reads_frame_exact() -> None:
    with av.open(str(XVID)) as container:  # the decoder yields frames with out-of-order times
        stamps = [frame.pts for frame in container.decode(video=0)]
    assert stamps[:7] == [1, 2, 4, 3, 5, 7, 6] and len(stamps) == 164
    _check_exact(XVID, seed=101)


def test_ucf101_xvid_clips_of_16_frames() -> None:
    """The issue's measure: 10 random sorted 16-frame clips, each from a fresh reader; all 160 frames exact."""
    expected = _sequential_decode(XVID)
    rng = random.Random(0)
    for _ in range(10):
        indices = sorted(rng.sample(range(len(expected)), 16))
        with open_video(XVID) as reader:
            got = reader.read(indices).numpy()
        assert all(np.array_equal(frame, expected[i]) for i, frame in zip(indices, got, strict=True))


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_packed_b_frames_remuxed_out_of_avi_read_frame_exact(tmp_path: Path, container: str) -> None:
    """The XVID stream copied unchanged into another container: its packets have times, but the decoded
    frames' times contradict them; the reader notices and indexes the file by decoding."""
    path = tmp_path / f"xvid.{container}"
    with av.open(str(XVID)) as source, av.open(str(path), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    with av.open(str(path)) as copied:
        stamps = [frame.pts for frame in copied.decode(video=0)]
    assert stamps != sorted(stamps)  # the decoded frames' times are out of order
    _check_exact(path, seed=7)
