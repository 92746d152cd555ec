"""Small real videos written with PyAV, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mfnet.data.video_writer import numbered_frames, write_video

NUM_FRAMES = 40


@pytest.fixture(scope="session")
def numbered_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.264 mp4 of 40 frames, 64x48, key frame every 12 frames; frame i shows the number i."""
    return write_video(tmp_path_factory.mktemp("videos") / "numbered.mp4", numbered_frames(NUM_FRAMES), gop_size=12)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of six short videos; video ``k`` shows the numbers ``100 k + i``."""
    folder = tmp_path_factory.mktemp("clips")
    for k in range(6):
        write_video(folder / f"v{k}.mp4", numbered_frames(30, start=100 * k), gop_size=10)
    return folder


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Data code runs in single-threaded DataLoader workers; on a shared 2-core machine two intra-op threads
    only wait for each other, so the data tests run single-threaded too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
