"""The rows of ``predict`` / ``features`` jobs as Arrow tables, the same for every engine.

Both engines of ``mfnet.engine.scaleout`` (local, and Ray through ``mfnet.engine.ray_engine``) turn results into
rows with these functions, so their outputs agree row for row.

Rows (one per video; one per clip x crop with ``per_clip``):

==============  =====================  =====================================================================
column          type                   meaning
==============  =====================  =====================================================================
``video_id``    string                 the manifest's id of the video (the path as written, or the id column)
``path``        string                 the file read
``status``      string                 ``ok`` or ``failed``
``error``       string (null if ok)    why the video failed, one sentence
``clips``       int32                  clips that decoded (crops not counted)
``seconds``     float64                duration of the video (NaN if unknown)
``topk_index``  list<int32>            predict: the top classes, most probable first (null if failed)
``topk_label``  list<string>           predict: their names
``topk_prob``   list<float32>          predict: their probabilities (mean softmax over clips x crops)
``clip_id``     int32                  features: the clip of the row, -1 for the mean over the video's clips
``embedding``   list<float32>          features: the pooled embedding ``(C,)`` (null if failed)
==============  =====================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mfnet.engine.manifest import ManifestEntry
from mfnet.engine.predictor import VideoEmbedding, VideoPrediction
from mfnet.errors import MfnetError

TASKS = ("predict", "features")
_COMMON = [
    ("video_id", pa.string()),
    ("path", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("clips", pa.int32()),
    ("seconds", pa.float64()),
]
PREDICTION_SCHEMA = pa.schema(
    [
        *_COMMON,
        ("topk_index", pa.list_(pa.int32())),
        ("topk_label", pa.list_(pa.string())),
        ("topk_prob", pa.list_(pa.float32())),
    ]
)
EMBEDDING_SCHEMA = pa.schema([*_COMMON, ("clip_id", pa.int32()), ("embedding", pa.list_(pa.float32()))])


@dataclass
class JobOptions:
    """What a job computes for each video (the predictor carries the model and the clip spec).

    Attributes:
        task: ``predict`` (top-k classes) or ``features`` (embeddings).
        topk: Classes kept per video (predict).
        classes: Class names for ``topk_label`` (default: ``class N``).
        per_clip: One embedding row per clip x crop instead of the video mean (features).
    """

    task: str = "features"
    topk: int = 5
    classes: list[str] | None = None
    per_clip: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise MfnetError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.topk <= 0:
            raise MfnetError("--topk must be positive")


def _label(classes: list[str] | None, index: int) -> str:
    return classes[index] if classes is not None and index < len(classes) else f"class {index}"


def prediction_table(
    results: Sequence[tuple[ManifestEntry, VideoPrediction]], *, topk: int, classes: list[str] | None = None
) -> pa.Table:
    """Rows of video predictions (``PREDICTION_SCHEMA``)."""
    rows = []
    for entry, prediction in results:
        top = prediction.topk(topk) if prediction.ok else []
        rows.append(
            {
                "video_id": entry.video_id,
                "path": str(entry.path),
                "status": "ok" if prediction.ok else "failed",
                "error": None if prediction.ok else prediction.error or "no clip decoded",
                "clips": prediction.clips,
                "seconds": prediction.seconds,
                "topk_index": [i for i, _ in top] if prediction.ok else None,
                "topk_label": [_label(classes, i) for i, _ in top] if prediction.ok else None,
                "topk_prob": [p for _, p in top] if prediction.ok else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def embedding_table(results: Sequence[tuple[ManifestEntry, VideoEmbedding]]) -> pa.Table:
    """Rows of video (or clip) embeddings (``EMBEDDING_SCHEMA``); a failed video gives one row without one."""
    ids, paths, status, errors, clips, seconds, clip_ids, vectors = [], [], [], [], [], [], [], []
    for entry, video in results:
        rows = video.features.shape[0] if video.ok else 0
        for r in range(max(rows, 1)):
            ids.append(entry.video_id)
            paths.append(str(entry.path))
            status.append("ok" if video.ok else "failed")
            errors.append(video.error)
            clips.append(video.clips)
            seconds.append(video.seconds)
            clip_ids.append(int(video.clip_id[r]) if rows else -1)
            vectors.append(video.features[r].float().numpy() if rows else None)
    width = next((len(v) for v in vectors if v is not None), 0)
    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([width if v is not None else 0 for v in vectors])
    flat = np.concatenate([v for v in vectors if v is not None]) if width else np.zeros(0, np.float32)
    mask = pa.array([v is None for v in vectors], type=pa.bool_())
    embedding = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()), mask=mask)
    columns = [ids, paths, status, errors, clips, seconds, clip_ids]
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, EMBEDDING_SCHEMA, strict=False)]
    return pa.Table.from_arrays([*arrays, embedding], schema=EMBEDDING_SCHEMA)


def empty_table(task: str) -> pa.Table:
    """A table of no rows with the task's schema."""
    return (PREDICTION_SCHEMA if task == "predict" else EMBEDDING_SCHEMA).empty_table()


# -- the local engine ---------------------------------------------------------------------------------------------
