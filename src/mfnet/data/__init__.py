"""Video data: annotations -> records, readers -> frames, samplers -> indices, transforms -> clips, datasets.

Modules (imported on demand, so ``import mfnet.data`` stays light):

- ``mfnet.data.annotations``: ``load_annotations(format, annotations, root, *, split=None)`` -> ``Annotations``.
- ``mfnet.data.readers``: ``open_video(path)`` -> a reader with ``num_frames``, ``fps``, ``read(indices)``.
- ``mfnet.data.sampling``: ``RandomClipSampler``, ``UniformClipSampler``, ``SegmentSampler`` -> ``ClipIndices``.
- ``mfnet.data.transforms``: ``train_transform``, ``eval_transform`` (uint8 ``(T, H, W, C)`` -> float ``(C, T, H, W)``).
- ``mfnet.data.datasets``: ``VideoClipDataset`` and ``ImageDataset`` (robust to bad files).
- ``mfnet.data.loader``: ``build_loader`` (per-worker and per-epoch seeding, DDP sharding).
- ``mfnet.data.check``: ``check_videos`` (decode every video, list unreadable and too-short ones).
- ``mfnet.data.video_writer``: ``write_video`` and frame-number stamps (tests, benchmarks, demo data).
"""
