"""The Ray engine: ``predict`` / ``features`` as a Ray Data pipeline (needs ``pip install 'mfnet[ray]'``).

::

    dataset of {video_id, path}
        -> map(decode)          CPU tasks: ``decode_video`` cuts and pre-processes every clip x crop of a video
        -> map_batches(actor)   a pool of model actors (a GPU each where asked): ``Predictor.predict_decoded`` /
                                ``features_decoded``, then the rows of ``mfnet.engine.scaleout``
        -> tables of whole videos, as blocks finish

A decode task never fails on a bad file (the video becomes a ``failed`` row); an actor that dies is restarted
by Ray and its batch retried. ``ray_results`` is the pipeline on a dataset of the caller's (for use inside a Ray
program); ``ray_tables`` is what ``mfnet predict/features --engine ray`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mfnet.engine.manifest import ManifestEntry
from mfnet.engine.predictor import DecodedVideo, Predictor, decode_video
from mfnet.engine.tables import JobOptions, embedding_table, prediction_table
from mfnet.errors import MfnetError

try:
    import ray
    import ray.data
except ImportError:  # the engine is optional
    ray = None


VIDEOS_PER_DECODE_TASK = 4
MAX_DECODE_TASKS = 10_000
DECODER_BYTES = 768 * 2**20  # memory of a decode worker (Python, PyTorch, the decoder), besides the clips


def _require_ray() -> None:
    if ray is None:
        raise MfnetError("--engine ray needs Ray: pip install 'mfnet[ray]' (or use the default --engine local)")


def connect(address: str | None = None) -> None:
    """Connects to a Ray cluster unless this process already is: ``address``, else ``RAY_ADDRESS``, else a new
    local cluster on this machine's CPUs and GPUs."""
    _require_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None)
    except ConnectionError as err:
        where = address or "RAY_ADDRESS"
        raise MfnetError(f"cannot reach the Ray cluster at {where} ({err}): check the address") from None


def _decode_row(row: dict[str, Any], *, predictor: _DecodeOnly) -> dict[str, Any]:
    """A Ray Data row ``{video_id, path}`` -> the same with the decoded clips (fixed shapes, zeros where failed)."""
    spec = predictor.spec
    try:
        video = decode_video(row["path"], spec=spec, num_clips=predictor.num_clips)
        clips, ok, clip_id = video.clips.numpy(), video.ok.numpy(), video.clip_id.numpy()
        errors, seconds = "\n".join(video.errors), video.seconds
    except Exception as err:  # a video must become a row, whatever its file does
        items = predictor.num_clips * spec.crops
        clips = np.zeros((items, *spec.input_shape()[1:]), dtype=np.float32)
        ok, clip_id = np.zeros(items, dtype=bool), np.arange(items) // spec.crops
        errors, seconds = f"cannot decode {row['path']} ({type(err).__name__}: {err})", math.nan
    return {
        "video_id": row["video_id"],
        "path": row["path"],
        "clips": clips.astype(np.float32, copy=False),  # (M, 3, T, H, W)
        "ok": ok,
        "clip_id": clip_id.astype(np.int64),
        "errors": errors,
        "seconds": float(seconds),
    }


class _ModelActor:
    """One model replica: the driver's predictor rebuilt on this actor's device."""

    def __init__(self, predictor: Predictor, options: JobOptions, device: str, threads: int | None) -> None:
        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)  # this actor's own process; Ray starts it with one per reserved CPU
        self.predictor = Predictor(
            predictor.model,
            spec=predictor.spec,
            num_clips=predictor.num_clips,
            batch_size=predictor.batch_size,
            num_workers=0,
            device=device,
            fixed_batch=predictor.fixed_batch,
        )
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        entries = [ManifestEntry(str(v), Path(str(p))) for v, p in zip(batch["video_id"], batch["path"], strict=True)]
        videos = [
            DecodedVideo(
                entry.path,
                torch.from_numpy(np.array(batch["clips"][i], dtype=np.float32)),  # a writable copy
                torch.from_numpy(np.asarray(batch["ok"][i], dtype=bool)),
                torch.from_numpy(np.asarray(batch["clip_id"][i], dtype=np.int64)),
                [e for e in str(batch["errors"][i]).split("\n") if e],
                float(batch["seconds"][i]),
            )
            for i, entry in enumerate(entries)
        ]
        if self.options.task == "predict":
            results = self.predictor.predict_decoded(videos)
            pairs = list(zip(entries, results, strict=True))
            return prediction_table(pairs, topk=self.options.topk, classes=self.options.classes)
        results = self.predictor.features_decoded(videos, per_clip=self.options.per_clip)
        return embedding_table(list(zip(entries, results, strict=True)))


def ray_results(
    dataset: ray.data.Dataset,
    predictor: Predictor,
    options: JobOptions,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    threads_per_worker: int | None = None,
    videos_per_batch: int | None = None,
) -> ray.data.Dataset:
    """The pipeline on a Ray dataset of ``{"video_id": str, "path": str}`` rows (lazy; nothing runs yet).

    Use it inside a Ray program to feed the rows elsewhere (``.write_parquet``, ``.iter_batches``, a join)::

        ds = ray.data.from_items([{"video_id": p, "path": p} for p in paths])
        rows = ray_results(ds, predictor, JobOptions(task="features"), workers=4, gpus_per_worker=1)

    Args:
        dataset: The videos; paths must be readable from every node.
        predictor: The model, clip spec, clips per video and batch size (clips per forward pass); pickled to
            each actor, which rebuilds it on its own device (CUDA when it has a GPU).
        options: What to compute (the rows of ``mfnet.engine.scaleout``).
        workers: Model actors.
        gpus_per_worker: GPUs per actor (0: CPU actors; a fraction packs several actors on a GPU).
        cpus_per_worker: CPUs reserved per actor.
        threads_per_worker: PyTorch threads of a CPU actor (default: Ray's, one per reserved CPU). More than
            the reserved CPUs lets the model use CPUs that decoding leaves idle (as the local engine does).
        videos_per_batch: Videos per actor call (default: enough clips for one forward pass).

    Returns:
        A dataset of result rows, one block per actor call (whole videos).
    """
    _require_ray()
    if workers <= 0 or gpus_per_worker < 0 or cpus_per_worker < 0 or (threads_per_worker or 1) <= 0:
        raise MfnetError("--workers and --threads-per-worker must be positive, --gpus-per-worker non-negative")
    items = predictor.num_clips * predictor.spec.crops
    per_batch = videos_per_batch or max(1, -(-predictor.batch_size // items))
    # A decode task reserves the memory of a video's clips (M, 3, T, H, W) float32 and the decoder's buffers. The
    # reservation also keeps decoding in tasks of its own (Ray Data fuses two operators only when their resources
    # agree), which spread over every free CPU instead of running inside the model actors.
    clip_bytes = items * 4 * math.prod(predictor.spec.input_shape()[1:])
    decoded = dataset.map(
        _decode_row,
        fn_kwargs={"predictor": _DecodeOnly(predictor)},
        num_cpus=1,
        memory=2 * clip_bytes + DECODER_BYTES,
    )
    return decoded.map_batches(
        _ModelActor,
        fn_constructor_kwargs={
            "predictor": predictor,
            "options": options,
            "device": "cuda" if gpus_per_worker > 0 else "cpu",
            "threads": threads_per_worker,
        },
        batch_size=per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        num_cpus=cpus_per_worker,
    )


class _DecodeOnly:
    """What a decode task needs of the predictor (its spec and clip count), without the model's weights."""

    def __init__(self, predictor: Predictor) -> None:
        self.spec = predictor.spec
        self.num_clips = predictor.num_clips


def ray_tables(
    entries: Sequence[ManifestEntry],
    predictor: Predictor,
    options: JobOptions,
    *,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    threads_per_worker: int | None = None,
    progress_bars: bool | None = None,
) -> Iterator[pa.Table]:
    """Runs ``entries`` on Ray (``connect(address)``), yielding a table of whole videos per finished block.

    ``progress_bars`` switches Ray Data's own progress bars in this process (``None``: leaves them as they are).
    """
    connect(address)
    _check_resources(workers, gpus_per_worker)
    if progress_bars is not None:
        ray.data.DataContext.get_current().enable_progress_bars = progress_bars
    rows = [{"video_id": e.video_id, "path": str(e.path)} for e in entries]
    # Decode tasks of a few videos each (many tasks keep every CPU busy), but not more tasks than Ray Data handles
    # lightly: a task's output still streams out in blocks of Ray Data's target size.
    blocks = max(1, min(math.ceil(len(rows) / VIDEOS_PER_DECODE_TASK), MAX_DECODE_TASKS))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    results = ray_results(
        dataset,
        predictor,
        options,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        threads_per_worker=threads_per_worker,
    )
    for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        if block.num_rows:
            yield block


def _check_resources(workers: int, gpus_per_worker: float) -> None:
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_worker > 0 and workers * gpus_per_worker > gpus:
        raise MfnetError(
            f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs {workers * gpus_per_worker:g} GPUs "
            f"but the Ray cluster has {gpus:g}: lower --workers"
        )
    if gpus_per_worker == 0 and workers >= cpus:
        raise MfnetError(
            f"--workers {workers} CPU model actors would take all {cpus:g} CPUs of the Ray cluster and leave none "
            f"to decode: use --workers {max(1, int(cpus) - 1)} or fewer (or --gpus-per-worker 1 on a GPU cluster)"
        )
