"""Training: ``train(recipe, out_dir=..., data=...)`` for one process or many under ``torchrun``.

The loop, top to bottom::

    for epoch:                          seed every RNG from (seed, epoch, rank); build the epoch's loader
        for step:                       lr = schedule(step); clip (N, C, T, H, W) -> logits (N, K)
            micro-batches               loss = cross-entropy (label smoothing); backward (DDP all-reduces)
            NaN/inf check               any rank non-finite -> stop with DivergedError, checkpoints untouched
            optimizer step              (gradient clipping / fp16 scaler when asked)
            log, checkpoint             JSON lines + TensorBoard; every N steps a training checkpoint
        validation                      clip- and video-level accuracy (mfnet.engine.evaluate)
        epoch checkpoint
    RUN_DIR/model.pt                    the final model in the package's checkpoint format

Run directory::

    RUN_DIR/recipe.json  data.json  metrics.jsonl  tb/  checkpoints/step-*.pt  model.pt  summary.json  figures/*.png

**Exact resume.** Every RNG is re-seeded from ``(seed, epoch, rank)`` at the start of an epoch, before its loader
is built, so the order and augmentation of an epoch do not depend on what ran before. A checkpoint in the middle
of an epoch stores the step and each process's RNG state; resuming rebuilds the epoch's loader, skips the batches
already used (``mfnet.data`` datasets seed each item from ``(seed, epoch, index)``, so only their indices are
drawn; other datasets are read and dropped) and restores the RNG states.
On CPU with the same number of processes and threads the resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mfnet.engine import checkpoints as ckpt
from mfnet.engine.distributed import DistContext, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed
from mfnet.engine.evaluate import run_evaluation
from mfnet.engine.input_spec import input_spec_of_recipe
from mfnet.engine.inputs import DataSpec, batches_after, build_datasets, make_loader, save_data_spec, video_names_of
from mfnet.engine.metrics import MetricsLog, RunningMeans, read_metrics, topk_correct
from mfnet.engine.optim import build_optimizer
from mfnet.engine.recipes import Recipe
from mfnet.engine.schedule import LRSchedule
from mfnet.errors import MfnetError
from mfnet.fastpath import prepare_for_training, to_channels_last
from mfnet.models import create_model
from mfnet.models.base import first_conv_weight
from mfnet.models.checkpoint import save_checkpoint

logger = logging.getLogger("mfnet")

__all__ = ["DataSpec", "DivergedError", "TrainResult", "train"]


class DivergedError(MfnetError):
    """The loss became NaN or infinite; the run stopped and its checkpoints are those before the bad step."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run left behind.

    Attributes:
        run_dir: The run directory.
        model_path: ``RUN_DIR/model.pt`` (the final model; ``None`` when stopped early by ``max_steps``).
        checkpoint: The newest training checkpoint.
        epochs_done: Complete epochs.
        steps: Optimizer steps done in total.
        metrics: The last epoch's summary (``train_loss``, ``train_top1``, ``val_clip_top1``, ``val_video_top1``,
            ...), on rank 0 (empty on the other processes).
        history: One summary per epoch.
        finished: Whether all ``recipe.epochs`` epochs ran.
    """

    run_dir: Path
    model_path: Path | None
    checkpoint: Path | None
    epochs_done: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


def train(
    recipe: Recipe,
    *,
    out_dir: str | Path,
    data: DataSpec | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    classes: list[str] | None = None,
    resume: bool = False,
    device: str | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    on_finish: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Trains ``recipe`` and writes the run to ``out_dir``.

    Run it as is for one process, or under ``torchrun`` for distributed data parallel training (one process per
    GPU, or per CPU slot with gloo); only rank 0 logs and writes files.

    Args:
        recipe: The settings (see ``mfnet.engine.recipes``).
        out_dir: The run directory (created).
        data: Where the data is; the train/val datasets are built from it with the recipe's clip settings.
        train_dataset: A ready dataset instead of ``data``: items are dicts with ``"clip"`` ``(C, T, H, W)``
            (or ``(C, H, W)``) float and ``"label"`` int (and ``"video_index"`` for video-level validation).
        val_dataset: A ready validation dataset (same item layout); ``None`` skips validation unless ``data``.
        classes: Class names (taken from ``data`` when it is given).
        resume: Continue from the newest complete checkpoint of ``out_dir`` (starts afresh when there is none).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA if available).
        max_steps: Stop after this many optimizer steps in total (saving a checkpoint), e.g. for a smoke test.
        progress: Show tqdm progress bars on stderr.
        on_finish: Called on rank 0 with the run directory once ``model.pt`` and ``summary.json`` are written
            (``mfnet train`` passes ``mfnet.tools.report.write_figures``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        DivergedError: When the loss became NaN or infinite.
        MfnetError: On unusable settings or data.
    """
    ctx = init_distributed(device)
    try:
        return _Trainer(recipe, ctx, Path(out_dir), progress=progress).run(
            data=data,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            classes=classes,
            resume=resume,
            max_steps=max_steps,
            on_finish=on_finish,
        )
    finally:
        cleanup(ctx)


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of every RNG at the start of ``epoch`` on ``rank``."""
    return (seed * 1_000_003 + epoch * 9_973 + rank * 101) % 2**63


class _Trainer:
    """State of one run; ``run`` is the whole training."""

    def __init__(self, recipe: Recipe, ctx: DistContext, run_dir: Path, *, progress: bool) -> None:
        self.recipe = recipe
        self.ctx = ctx
        self.run_dir = run_dir
        self.progress = progress and ctx.is_main
        if recipe.batch_size % (ctx.world_size * recipe.accumulate_steps):
            raise MfnetError(
                f"batch_size {recipe.batch_size} is not divisible by {ctx.world_size} processes x "
                f"{recipe.accumulate_steps} accumulation steps: set --set batch_size=... to a multiple"
            )
        self.rank_batch = recipe.batch_size // ctx.world_size
        self._resumed_sums: dict[str, float] | None = None  # the epoch sums of the checkpoint resumed from
        self._meter: RunningMeans | None = None  # the running sums of the epoch in progress

    # ------------------------------------------------------------------ set-up
    def _build_model(self, num_classes: int) -> nn.Module:
        r = self.recipe
        kwargs = {**r.model_kwargs, "drop_rate": r.drop_rate}
        self.model_kwargs = kwargs
        model = create_model(r.model, num_classes=num_classes, weights=r.init_weights, inflate=r.inflate, **kwargs)
        model.to(self.ctx.device)
        if r.channels_last:
            prepare_for_training(model)
        return model

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.ctx.distributed:
            return model
        if self.recipe.sync_bn:
            if self.ctx.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.ctx.is_main:
                logger.warning("sync_bn is ignored on CPU (PyTorch's SyncBatchNorm needs GPUs)")
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.recipe.amp and self.ctx.device.type == "cuda":
            dtype = torch.float16 if self.recipe.amp_dtype == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ the run
    def run(
        self,
        *,
        data: DataSpec | None,
        train_dataset: Dataset | None,
        val_dataset: Dataset | None,
        classes: list[str] | None,
        resume: bool,
        max_steps: int | None,
        on_finish: Callable[[Path], None] | None,
    ) -> TrainResult:
        r, ctx = self.recipe, self.ctx
        if r.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if data is not None:
            built = build_datasets(data, r, train=train_dataset is None, val=val_dataset is None)
            train_dataset = train_dataset or built.train
            val_dataset = val_dataset or built.val
            classes = classes or built.classes
        if train_dataset is None:
            raise MfnetError("no training data: pass data=DataSpec(...) or train_dataset=...")
        num_classes = len(classes) if classes else r.num_classes
        if classes and len(classes) != r.num_classes and ctx.is_main:
            logger.info(
                "the data has %d classes (the recipe says %d): the classifier follows the data",
                len(classes),
                r.num_classes,
            )
        self.classes = list(classes) if classes else None
        self.val_names = video_names_of(val_dataset) if val_dataset is not None else None

        steps_per_epoch = len(train_dataset) // r.batch_size
        if steps_per_epoch == 0:
            raise MfnetError(
                f"the training set has {len(train_dataset)} clips, fewer than one batch of {r.batch_size}: "
                "lower batch_size with --set batch_size=N"
            )
        self.steps_per_epoch = steps_per_epoch
        total_steps = steps_per_epoch * r.epochs
        schedule = LRSchedule(
            base_lr=r.scaled_lr(),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            kind=r.schedule,
            milestones=r.lr_milestones,
            gamma=r.lr_gamma,
            warmup_epochs=r.warmup_epochs,
            warmup_start_factor=r.warmup_start_factor,
            warmup_mode=r.warmup_mode,
        )

        seed_everything(r.seed)
        model = self._build_model(num_classes)
        optimizer = build_optimizer(model, r)
        use_scaler = r.amp and r.amp_dtype == "fp16" and ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None

        start_epoch, start_epoch_step, step, saved_rng = 0, 0, 0, None
        latest = ckpt.load_latest(self.run_dir) if resume else None
        if latest is not None:
            path, state = latest
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, start_epoch_step, step = state["epoch"], state["epoch_step"], state["step"]
            self._resumed_sums = dict(state.get("epoch_sums") or {}) if start_epoch_step else None
            rng = state.get("rng") or []
            saved_rng = rng[ctx.rank] if len(rng) == ctx.world_size else None
            if start_epoch_step and saved_rng is None:
                raise MfnetError(
                    f"{path} was written by {len(rng)} processes: resume it with the same number of processes"
                )
            if ctx.is_main:
                logger.info("resuming from %s (epoch %d, step %d)", path, start_epoch, step)
        elif ctx.is_main:
            if self.run_dir.exists() and ckpt.list_checkpoints(self.run_dir) and not resume:
                raise MfnetError(
                    f"{self.run_dir} already holds a run: pass --resume to continue it, or choose another --out"
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier(ctx)

        if ctx.is_main:
            (self.run_dir / "recipe.json").write_text(json.dumps(r.to_dict(), indent=2) + "\n")
            if data is not None:
                save_data_spec(self.run_dir, data)
            if self.classes is not None:
                (self.run_dir / "classes.txt").write_text("".join(c + "\n" for c in self.classes))
            if step == 0:
                _save_initial_filters(model, self.run_dir)
        log = MetricsLog(self.run_dir, enabled=ctx.is_main, resume_step=step)
        log.truncate_after(step)
        net = self._wrap(model)
        self.model, self.net, self.optimizer, self.scaler, self.log = model, net, optimizer, scaler, log

        history = _epoch_history(self.run_dir) if ctx.is_main else []
        last_ckpt = latest[0] if latest else None
        epoch = start_epoch
        stopped = False
        try:
            for epoch in range(start_epoch, r.epochs):
                first = start_epoch_step if epoch == start_epoch else 0
                summary, step, stop_ckpt = self._train_epoch(
                    train_dataset,
                    schedule,
                    epoch=epoch,
                    first_step=first,
                    step=step,
                    saved_rng=saved_rng if epoch == start_epoch else None,
                    max_steps=max_steps,
                )
                last_ckpt = stop_ckpt or last_ckpt
                if summary is None:  # stopped by max_steps
                    stopped = True
                    break
                self._average_buffers()
                if val_dataset is not None and r.eval_every_epochs and (epoch + 1) % r.eval_every_epochs == 0:
                    summary.update(self._validate(val_dataset, num_classes))
                summary.update(epoch=epoch + 1, step=step, lr=schedule.lr(max(0, step - 1)))
                log.log(
                    "epoch",
                    step=step,
                    epoch=epoch + 1,
                    **{k: v for k, v in summary.items() if k not in ("epoch", "step")},
                )
                history.append(summary)
                last_ckpt = self._save(epoch=epoch + 1, epoch_step=0, step=step) or last_ckpt
                if ctx.is_main:
                    logger.info("epoch %d: %s", epoch + 1, _format(summary))
        finally:
            log.close()

        model_path = None
        finished = not stopped and epoch + 1 >= r.epochs if r.epochs else True
        if finished and ctx.is_main:
            model_path = save_checkpoint(
                self.run_dir / "model.pt",
                model,
                model_name=r.model,
                model_kwargs=self.model_kwargs,
                classes=self.classes,
                input_spec=input_spec_of_recipe(r).to_dict(),
            )
            (self.run_dir / "summary.json").write_text(
                json.dumps({"recipe": r.name, "history": history}, indent=2) + "\n"
            )
            if on_finish is not None:
                on_finish(self.run_dir)
        barrier(ctx)
        epochs_done = (history[-1]["epoch"] if history else start_epoch) if ctx.is_main else epoch
        return TrainResult(
            run_dir=self.run_dir,
            model_path=model_path,
            checkpoint=last_ckpt,
            epochs_done=int(epochs_done),
            steps=step,
            metrics=dict(history[-1]) if history else {},
            history=history,
            finished=finished,
        )

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(
        self,
        dataset: Dataset,
        schedule: LRSchedule,
        *,
        epoch: int,
        first_step: int,
        step: int,
        saved_rng: dict[str, Any] | None,
        max_steps: int | None,
    ) -> tuple[dict[str, float] | None, int, Path | None]:
        r, ctx = self.recipe, self.ctx
        seed_everything(epoch_seed(r.seed, epoch, ctx.rank))
        loader = make_loader(
            dataset,
            batch_size=self.rank_batch,
            shuffle=True,
            num_workers=r.num_workers,
            seed=r.seed,
            epoch=epoch,
            ctx=ctx,
            drop_last=True,
        )
        batches: Iterator[dict[str, Any]] = batches_after(loader, first_step)  # resuming inside the epoch
        if saved_rng is not None and first_step:
            ckpt.restore_rng(saved_rng)
        self.net.train()
        meter = RunningMeans()
        if first_step and self._resumed_sums:  # the steps of this epoch before the resume count too
            meter.count = int(self._resumed_sums.pop("count", 0))
            meter.sums = {k: float(v) for k, v in self._resumed_sums.items()}
        self._resumed_sums, self._meter = None, meter
        window = RunningMeans()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=first_step,
            desc=f"epoch {epoch + 1}/{r.epochs}",
            disable=None if self.progress else True,  # None: no bar when stderr is not a terminal
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        epoch_step = first_step
        stop_ckpt = None
        substitutions = 0  # clips of unreadable videos replaced by other videos (see mfnet.data.datasets)
        tic = time.perf_counter()
        try:
            while epoch_step < self.steps_per_epoch:
                if max_steps is not None and step >= max_steps:
                    stop_ckpt = self._save(epoch=epoch, epoch_step=epoch_step, step=step)
                    return None, step, stop_ckpt
                batch = next(batches)
                lr = schedule.apply(self.optimizer, step)
                stats = self._step(batch)
                step += 1
                epoch_step += 1
                totals = all_reduce_sum(ctx, stats)  # [loss sum, top1, top5, clips, substituted] over processes
                loss_sum, top1, top5, count, substituted = (float(v) for v in totals)
                substitutions += int(substituted)
                if not math.isfinite(loss_sum):
                    raise DivergedError(
                        f"the loss became {loss_sum / max(count, 1)} at step {step} (epoch {epoch + 1}): lower the "
                        "learning rate (--set base_lr=...) or turn on gradient clipping (--set grad_clip_norm=1.0); "
                        "the checkpoints in the run directory are from before this step"
                    )
                meter.update(int(count), loss=loss_sum, top1=top1, top5=top5)
                window.update(int(count), loss=loss_sum, top1=top1, top5=top5)
                bar.update(1)
                if epoch_step % max(1, r.log_every_steps) == 0 or epoch_step == self.steps_per_epoch:
                    elapsed = time.perf_counter() - tic
                    means = window.means()
                    clips_per_s = window.count / max(elapsed, 1e-9)
                    self.log.log(
                        "train",
                        step=step,
                        epoch=epoch + epoch_step / self.steps_per_epoch,
                        loss=means["loss"],
                        top1=means["top1"],
                        top5=means["top5"],
                        lr=lr,
                        clips_per_s=clips_per_s,
                    )
                    bar.set_postfix(
                        loss=f"{means['loss']:.3f}", acc=f"{means['top1']:.3f}", clips_s=f"{clips_per_s:.1f}"
                    )
                    window = RunningMeans()
                    tic = time.perf_counter()
                every = r.checkpoint_every_steps
                if every and step % every == 0 and epoch_step < self.steps_per_epoch:
                    stop_ckpt = self._save(epoch=epoch, epoch_step=epoch_step, step=step)
        finally:
            bar.close()
            del batches
        means = meter.means()
        summary = {"train_loss": means["loss"], "train_top1": means["top1"], "train_top5": means["top5"]}
        if substitutions:
            summary["train_substituted"] = substitutions
            if ctx.is_main:
                logger.warning(
                    "epoch %d: %d clips came from substitute videos (unreadable files)", epoch + 1, substitutions
                )
        return summary, step, stop_ckpt

    def _step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimizer step on this process's batch; returns ``[loss sum, top-1, top-5 hits, clips, substituted]``."""
        r, device = self.recipe, self.ctx.device
        clip = batch["clip"].to(device, non_blocking=True)
        if r.channels_last:
            clip = to_channels_last(clip)
        label = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
        n = label.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        hits = torch.zeros(2, device=device)
        parts = r.accumulate_steps
        for j in range(parts):
            x, y = clip[j::parts], label[j::parts]  # interleaved micro-batches
            sync = contextlib.nullcontext()
            if j < parts - 1 and isinstance(self.net, DistributedDataParallel):
                sync = self.net.no_sync()
            with sync:
                with self._autocast():
                    logits = self.net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
                weighted = loss * (y.shape[0] / n)
                if self.scaler is not None:
                    self.scaler.scale(weighted).backward()
                else:
                    weighted.backward()
            loss_sum += loss.detach() * y.shape[0]
            correct = topk_correct(logits.detach().float(), y, (1, 5))
            hits += torch.tensor([correct[1], correct[5]], device=device, dtype=hits.dtype)
        # A non-finite loss on any process stops the run before the weights change (checked by the caller after
        # the all-reduce); skip this step's update here so the in-memory weights stay finite as well.
        finite = torch.isfinite(loss_sum)
        if self.ctx.distributed:
            finite = all_reduce_sum(self.ctx, (~finite).float().view(1)).item() == 0
        if bool(finite):
            if r.grad_clip_norm > 0:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), r.grad_clip_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        substituted = float(torch.as_tensor(batch.get("substituted", 0)).sum())
        return torch.tensor(
            [float(loss_sum), float(hits[0]), float(hits[1]), float(n), substituted], dtype=torch.float64
        )

    # ------------------------------------------------------------------ validation and checkpoints
    def _validate(self, dataset: Dataset, num_classes: int) -> dict[str, float]:

        result = run_evaluation(
            self.model,
            dataset,
            ctx=self.ctx,
            batch_size=self.rank_batch,
            num_workers=self.recipe.num_workers,
            num_classes=num_classes,
            classes=self.classes,
            video_names=self.val_names,
            num_videos=len(self.val_names) if self.val_names else None,
            progress=self.progress,
            channels_last=self.recipe.channels_last,
        )
        if self.ctx.is_main:
            result.save(self.run_dir / "eval")
        return {f"val_{k}": v for k, v in result.summary().items() if isinstance(v, (int, float))}

    def _average_buffers(self) -> None:
        """Averages the BN running statistics over processes (each process saw its own shard of the epoch)."""
        if not self.ctx.distributed:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(all_reduce_sum(self.ctx, buffer) / self.ctx.world_size)

    def _save(self, *, epoch: int, epoch_step: int, step: int) -> Path | None:
        rng = all_gather_objects(self.ctx, ckpt.capture_rng())
        path = None
        if self.ctx.is_main:
            path = ckpt.save_training_state(
                self.run_dir,
                model=self.model,
                model_name=self.recipe.model,
                model_kwargs=self.model_kwargs,
                classes=self.classes,
                input_spec=input_spec_of_recipe(self.recipe).to_dict(),
                optimizer=self.optimizer,
                scaler=self.scaler,
                epoch=epoch,
                epoch_step=epoch_step,
                step=step,
                rng=rng,
                recipe=self.recipe.to_dict(),
                keep=self.recipe.keep_checkpoints,
                epoch_sums={"count": self._meter.count, **self._meter.sums} if epoch_step and self._meter else None,
            )
        barrier(self.ctx)
        return path


def _save_initial_filters(model: nn.Module, run_dir: Path) -> None:
    """Keeps conv1's initial weights (``RUN_DIR/conv1_init.pt``) for the before/after filter figure."""
    weight = first_conv_weight(model)
    if weight is not None:
        torch.save(weight.detach().cpu().contiguous(), run_dir / "conv1_init.pt")


def _epoch_history(run_dir: Path) -> list[dict[str, Any]]:

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        {k: v for k, v in rec.items() if k not in ("kind", "time")}
        for rec in read_metrics(path)
        if rec.get("kind") == "epoch"
    ]


def _format(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())


def recipe_of_run(run_dir: str | Path) -> Recipe:
    """The recipe a run directory was trained with (``RUN_DIR/recipe.json``)."""
    path = Path(run_dir) / "recipe.json"
    if not path.exists():
        raise MfnetError(f"{run_dir} is not a training run directory (no recipe.json): pass the --out of `mfnet train`")
    return Recipe.from_dict(json.loads(path.read_text()))
