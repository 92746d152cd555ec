"""Readers on real files: codecs and containers, exact indices after seeking, lying headers, broken files."""

from __future__ import annotations

import random
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mfnet.data.readers import FrameFolderReader, PyAVReader, open_video
from mfnet.data.video_writer import numbered_frames, read_frame_number, write_video
from mfnet.errors import VideoError

CASES = [
    ("h264.mp4", "libx264", False),
    ("h264_audio.mkv", "libx264", True),
    ("mpeg4_audio.avi", "mpeg4", True),
    ("msmpeg4v2.avi", "msmpeg4v2", False),
    ("mjpeg.avi", "mjpeg", False),
    ("vp9_audio.webm", "libvpx-vp9", True),
    ("cinepak.avi", "cinepak", False),
    ("h264.mov", "h264", False),
]


def _numbers(frames: torch.Tensor) -> list[int]:
    return [read_frame_number(frame) for frame in frames]


@pytest.mark.parametrize(("name", "codec", "audio"), CASES)
def test_exact_indices_after_seeking_in_every_codec(tmp_path: Path, name: str, codec: str, audio: bool) -> None:
    path = write_video(tmp_path / name, numbered_frames(36), codec=codec, gop_size=10, audio=audio)
    rng = random.Random(name)
    with open_video(path) as reader:
        assert reader.num_frames == 36
        assert reader.fps == pytest.approx(25.0)
        # Random sets of indices in any order with repeats, forcing seeks backwards and over long gaps.
        for _ in range(6):
            indices = [rng.randrange(36) for _ in range(rng.randint(1, 6))]
            frames = reader.read(indices)
            assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
            assert _numbers(frames) == indices
        assert _numbers(reader.read([35, 0, 17, 17, 9])) == [35, 0, 17, 17, 9]


def test_clip_read_decodes_from_the_key_frame_not_the_start(numbered_video: Path, monkeypatch) -> None:
    decoded = 0
    original = PyAVReader._decode

    def counting(self):
        nonlocal decoded
        for frame in original(self):
            decoded += 1
            yield frame

    monkeypatch.setattr(PyAVReader, "_decode", counting)
    with open_video(numbered_video) as reader:
        reader.num_frames  # noqa: B018 - builds the packet index (no decoding)
        assert decoded == 0
        assert _numbers(reader.read([26, 28, 30])) == [26, 28, 30]
    # Key frames every 12 frames: decoding starts at frame 24 and stops at 30 (the decoder may buffer a few).
    assert decoded <= 12


def test_headers_that_lie_are_corrected(tmp_path: Path) -> None:
    # The AVI header of a file with an audio track counts one frame too many; webm/mkv headers give no count.
    avi = write_video(tmp_path / "audio.avi", numbered_frames(30), codec="mpeg4", audio=True)
    webm = write_video(tmp_path / "clip.webm", numbered_frames(30))
    with PyAVReader(avi) as reader:
        assert reader.header_frames != 30 and reader.num_frames == 30
        assert _numbers(reader.read([29])) == [29]
    with PyAVReader(webm) as reader:
        assert reader.header_frames == 0 and reader.num_frames == 30


def test_truncated_avi_reports_fewer_frames_and_lowers_its_count(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.avi", numbered_frames(60), codec="mpeg4", gop_size=10)
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with PyAVReader(cut) as reader:
        assert reader.header_frames == 60  # the header still claims the whole video
        count = reader.num_frames
        assert 10 <= count < 60  # AVI frames are counted by decoding: exactly what decodes
        try:
            frames = reader.read(list(range(count)))
        except VideoError:  # the last packet was cut in half: the count drops to what decodes
            assert reader.num_frames < count
            frames = reader.read(list(range(reader.num_frames)))
        assert _numbers(frames) == list(range(len(frames)))
        with pytest.raises(IndexError):
            reader.read([59])


def test_variable_frame_rate_indices(tmp_path: Path) -> None:
    times = [i * 0.04 + (0.5 if i >= 15 else 0.0) for i in range(30)]  # a 0.5 s gap in the middle
    path = write_video(tmp_path / "vfr.mkv", numbered_frames(30), timestamps=times, gop_size=8)
    with open_video(path) as reader:
        assert reader.num_frames == 30
        assert _numbers(reader.read([29, 14, 15, 16])) == [29, 14, 15, 16]


def test_frame_folder_reader(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(numbered_frames(12)):
        # Names sort wrongly as text (img_10 < img_2): the reader sorts by number.
        Image.fromarray(frame).save(folder / f"img_{i + 1}.jpg", quality=95)
    reader = open_video(folder)
    assert isinstance(reader, FrameFolderReader) and reader.num_frames == 12
    assert _numbers(reader.read([11, 1, 10, 2])) == [11, 1, 10, 2]
    (folder / "img_5.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoError, match=r"img_5\.jpg"):
        reader.read([4])


@pytest.mark.parametrize("kind", ["empty", "text", "random-bytes", "missing", "no-video-stream"])
def test_bad_files_raise_video_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "no-video-stream":
        path = tmp_path / "audio_only.m4a"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=44100)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    with pytest.raises(VideoError, match=re.escape(path.name)):
        reader = open_video(path)
        reader.read([0])


def test_truncated_mp4_without_index_has_no_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "whole.mp4", numbered_frames(30))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the moov index is written last
    try:
        reader = open_video(cut)
    except VideoError:
        return
    assert reader.num_frames == 0


def test_decode_all_counts_frames(numbered_video: Path) -> None:
    with PyAVReader(numbered_video) as reader:
        assert reader.decode_all() == 40
        assert _numbers(reader.read([3])) == [3]  # still readable after a full pass


def test_max_short_side_scales_while_converting(tmp_path: Path) -> None:
    path = write_video(tmp_path / "big.mp4", numbered_frames(12, 240, 320))
    with open_video(path, max_short_side=96) as reader:
        frames = reader.read([11, 4])
    assert frames.shape == (2, 96, 128, 3)
    assert _numbers(frames) == [11, 4]
    with open_video(path, max_short_side=480) as reader:  # never scaled up
        assert reader.read([0]).shape == (1, 240, 320, 3)


def test_stream_starting_without_a_key_frame(tmp_path: Path) -> None:
    """A cut file whose first packets are P-frames (as in clips cut from longer videos without re-encoding)."""
    source = write_video(tmp_path / "source.avi", numbered_frames(40), codec="mpeg4", gop_size=10)
    cut = tmp_path / "cut.avi"
    with av.open(str(source)) as inp, av.open(str(cut), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for number, packet in enumerate(inp.demux(inp.streams.video[0])):
            if packet.size and number >= 5:  # drop the first key frame and 4 P-frames
                packet.stream = stream
                out.mux(packet)
    with open_video(cut) as reader:
        assert reader.num_frames == 35
        frames = reader.read([0, 3, 5, 6, 20, 34])  # frames 0-4 reference a missing key frame: garbage, no error
        assert _numbers(frames[2:]) == [10, 11, 25, 39]
        assert _numbers(reader.read([34, 20, 2, 5])[[0, 1, 3]]) == [39, 25, 10]
