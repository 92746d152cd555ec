"""The one predictor: clip batching, multi-clip averaging and sliding windows over videos.

Evaluation, ``mfnet predict``, ``mfnet features`` and the demo all go through this module; the
video-level averaging of clip predictions (the paper's protocol) is written here and only here.
"""

from __future__ import annotations

import torch


def average_by_video(clip_probs: torch.Tensor, video_index: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Averages clip-level probabilities into video-level ones.

    The paper's test protocol: every clip (and crop) of a video is classified on its own, the softmax
    probabilities are averaged over that video's clips x crops, and the video's prediction is the argmax.

    Args:
        clip_probs: Per-clip class probabilities, ``(M, K)`` (softmax already applied).
        video_index: Video each clip belongs to, ``(M,)`` integers in ``[0, num_videos)``.
        num_videos: Number of videos ``V``.

    Returns:
        Video probabilities ``(V, K)``, float. A video with no clip gets a row of NaN (so it cannot be
        mistaken for a prediction; count such rows with ``torch.isnan(out[:, 0])``).

    Raises:
        ValueError: On mismatched shapes or an index outside ``[0, num_videos)``.
    """
    if clip_probs.ndim != 2 or video_index.ndim != 1 or clip_probs.shape[0] != video_index.shape[0]:
        raise ValueError(
            f"expected clip_probs (M, K) and video_index (M,), got {tuple(clip_probs.shape)} and "
            f"{tuple(video_index.shape)}"
        )
    index = video_index.to(device=clip_probs.device, dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_videos):
        raise ValueError(f"video_index must lie in [0, {num_videos}), got [{int(index.min())}, {int(index.max())}]")
    probs = clip_probs.float()
    sums = torch.zeros(num_videos, probs.shape[1], dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, index, probs)  # (V, K): sum of each video's clip probabilities
    counts = torch.bincount(index, minlength=num_videos).to(probs.dtype)  # (V,)
    return sums / counts.unsqueeze(1)  # 0/0 -> NaN for videos without clips
