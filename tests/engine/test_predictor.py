"""Tests of mfnet.engine.predictor."""

from __future__ import annotations

import math

import pytest
import torch

from mfnet.engine.predictor import average_by_video


def test_average_by_video_hand_computed() -> None:
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0], [0.1, 0.9], [0.3, 0.7]])
    index = torch.tensor([0, 0, 2, 0, 2])
    out = average_by_video(probs, index, 3)
    assert out.shape == (3, 2)
    assert torch.allclose(out[0], torch.tensor([0.3, 0.7]))  # (0.2+0.6+0.1)/3, (0.8+0.4+0.9)/3
    assert torch.allclose(out[2], torch.tensor([0.65, 0.35]))  # (1.0+0.3)/2, (0.0+0.7)/2
    assert all(math.isnan(v) for v in out[1].tolist())  # video 1 has no clip


def test_average_by_video_rejects_bad_index() -> None:
    with pytest.raises(ValueError):
        average_by_video(torch.ones(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError):
        average_by_video(torch.ones(2, 3), torch.tensor([0]), 3)
