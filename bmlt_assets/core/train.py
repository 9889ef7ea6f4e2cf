"""The training loop: seeded, class-weighted, early-stopped on the purged validation part.

One loop for one process and for DistributedDataParallel under torchrun (``core.distributed``):
a ``DistributedSampler`` deals each replica its share of every epoch's shuffled samples (all of
them when alone), ``training.batch_size`` is the global batch (each of N replicas takes 1/N of
it), and validation sums are combined over the replicas, so every one takes the same
early-stopping decision. Only the main replica writes the resumable state, logs and reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import PART_FIELDS, Part, TrainingData
from bmlt_assets.core.distributed import Replicas, alone_on
from bmlt_assets.core.files import StoredPath, atomic_write, readable
from bmlt_assets.core.models import OrderBookClassifier

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def class_weights(classes: np.ndarray, n_classes: int, scheme: str) -> torch.Tensor:
    """Loss weights from training-part class frequencies, normalized to mean 1."""
    counts = np.bincount(classes, minlength=n_classes).astype(np.float64)
    if scheme == "none":
        weights = np.ones(n_classes)
    else:
        inverse = counts.sum() / (n_classes * np.maximum(counts, 1))
        weights = inverse if scheme == "balanced" else np.sqrt(inverse)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def build_model(config: PlatformConfig, data: TrainingData) -> OrderBookClassifier:
    _, levels, _, assets = data.shape
    return OrderBookClassifier(config.model, levels, assets, len(data.horizons), data.n_classes)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # windows, calendar features, classes


class WindowSamples(torch.utils.data.Dataset):
    """The samples of a part; a batch is gathered with one vectorized index from the
    (memory-mapped) base, through ``__getitems__``, which DataLoader calls with a batch's indices.

    The sampler runs in the main process, so DataLoader workers only gather: the batches are
    identical for any number of workers.
    """

    def __init__(self, data: TrainingData, part: Part):
        self.data, self.part = data, part

    def __len__(self) -> int:
        return len(self.part)

    def __getitems__(self, rows: list[int]) -> Batch:
        index = np.asarray(rows)
        windows, calendar = self.data.source.inputs(self.part.steps[index])
        return torch.from_numpy(windows), torch.from_numpy(calendar), torch.from_numpy(self.part.classes[index])

    def __getitem__(self, row: int) -> Batch:
        windows, calendar, classes = self.__getitems__([row])
        return windows[0], calendar[0], classes[0]


def _already_batched(batch: Any) -> Any:  # __getitems__ gathered the batch: nothing to collate
    return batch


def batch_loader(
    data: TrainingData, part: Part, order: Iterable[int], batch_size: int, workers: int
) -> torch.utils.data.DataLoader:
    """Batches of ``part`` in the sample order ``order`` yields (a sampler, or any iterable)."""
    return torch.utils.data.DataLoader(
        WindowSamples(data, part),
        batch_size=batch_size,
        sampler=order,
        num_workers=workers,
        collate_fn=_already_batched,
    )


@torch.no_grad()
def predict_logits(model: nn.Module, data: TrainingData, steps: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, H, C) logits for the samples at ``steps`` (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(steps), batch_size):
        windows, times = data.source.inputs(steps[start : start + batch_size])
        logits = model(torch.from_numpy(windows).to(device), torch.from_numpy(times).to(device))
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, len(data.horizons), data.n_classes), np.float32)


def validate(model: nn.Module, data: TrainingData, part: Part, replicas: Replicas) -> tuple[float, list[float]]:
    """Log loss (nats, mean over horizons) and accuracy per horizon on ``part``. Each replica
    scores its own slice and the sums are combined: every replica gets the same numbers."""
    rows = np.array_split(np.arange(len(part)), replicas.world_size)[replicas.rank]
    logits = torch.from_numpy(predict_logits(model, data, part.steps[rows]))
    classes = torch.from_numpy(part.classes[rows])
    horizons = range(classes.shape[1])
    losses = [nn.functional.cross_entropy(logits[:, h], classes[:, h], reduction="sum").item() for h in horizons]
    correct = [float((logits[:, h].argmax(1) == classes[:, h]).sum()) for h in horizons]
    *sums, count = replicas.sum([*losses, *correct, float(len(rows))])
    return float(np.mean(sums[: len(horizons)]) / count), [c / count for c in sums[len(horizons) :]]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_log_loss: float
    val_accuracy: list[float]
    seconds: float
    samples_per_s: float

    def __str__(self) -> str:
        """The epoch's log line."""
        return (
            f"{self.epoch}: train loss {self.train_loss:.4f}, val log loss {self.val_log_loss:.4f}, "
            f"val accuracy {[round(a, 4) for a in self.val_accuracy]}, {self.samples_per_s:.0f} samples/s"
        )


@dataclass(frozen=True)
class FastPath:
    """How the training step runs on its device: autocast precision and memory format, and the
    samples/s each candidate reached when they were timed (empty when nothing was timed)."""

    precision: str  # fp32 | bf16
    channels_last: bool
    measured: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: OrderBookClassifier
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from: int = 0  # the last epoch restored from a checkpoint (0: a fresh start)
    device: str = "cpu"
    fast_path: FastPath = field(default_factory=lambda: FastPath("fp32", True))

    @property
    def samples_per_s(self) -> float:
        """Training samples per second over the epochs run here (all replicas together)."""
        timed = [r for r in self.history[self.resumed_from :] if r.samples_per_s > 0]
        return float(np.mean([r.samples_per_s for r in timed])) if timed else 0.0


# A GPU candidate is kept over plain fp32 only when it is at least this much faster: bf16 costs
# some precision, and a smaller gain is within the timing noise.
FAST_PATH_MARGIN = 1.05


def _training_step(
    net: nn.Module, batch: Batch, losses: Sequence[nn.Module], optimizer: torch.optim.Optimizer, bf16: bool
):
    windows, calendar, target = batch
    with torch.autocast(windows.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(windows, calendar).float()  # losses stay fp32
    loss = sum(losses[h](logits[:, h], target[:, h]) for h in range(len(losses))) / len(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def measure_fast_paths(
    build: Callable[[], nn.Module],
    batch: Batch,
    losses: Sequence[nn.Module],
    device: torch.device,
    candidates: list[tuple[str, bool]],
    steps: int = 10,
) -> dict[str, float]:
    """Training samples/s of each (precision, channels_last) candidate on ``batch``: a fresh model
    per candidate, a few warm-up steps, then ``steps`` timed ones. The random streams are restored
    afterwards, so the training that follows is the same as without the measurement."""
    measured = {}
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        for precision, channels_last in candidates:
            model = build().to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            optimizer = torch.optim.AdamW(model.parameters())
            model.train()
            for step in range(steps + 3):
                if step == 3:
                    _synchronize(device)
                    started = time.perf_counter()
                _training_step(model, batch, losses, optimizer, precision == "bf16")
            _synchronize(device)
            measured[f"{precision}{'+channels_last' if channels_last else ''}"] = (
                steps * len(batch[0]) / (time.perf_counter() - started)
            )
    return measured


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_fast_path(
    config: PlatformConfig,
    device: torch.device,
    measure: Callable[[list[tuple[str, bool]]], dict[str, float]],
    replicas: Replicas,
) -> FastPath:
    """``training.precision`` and ``channels_last``, with ``auto`` resolved: on a CPU fp32 and
    channels-last (measured in docs/benchmarks.md); on a GPU the fastest candidate ``measure``
    times, summed over the replicas so that every rank keeps the same one."""
    t = config.training
    precisions = ["fp32", "bf16"] if t.precision == "auto" else [t.precision]
    layouts = [False, True] if t.channels_last == "auto" else [bool(t.channels_last)]
    if device.type != "cuda":
        return FastPath(
            "fp32" if t.precision == "auto" else t.precision,
            True if t.channels_last == "auto" else bool(t.channels_last),
        )
    if not torch.cuda.is_bf16_supported():
        precisions = [p for p in precisions if p != "bf16"] or ["fp32"]
    candidates = [(p, c) for p in precisions for c in layouts]
    if len(candidates) == 1:
        return FastPath(*candidates[0])
    own = measure(candidates)
    totals = dict(zip(own, replicas.sum(list(own.values()))))
    names = list(totals)
    best = max(range(len(candidates)), key=lambda i: totals[names[i]])
    plain = candidates.index(("fp32", False)) if ("fp32", False) in candidates else best
    if totals[names[best]] < FAST_PATH_MARGIN * totals[names[plain]]:
        best = plain
    choice = FastPath(*candidates[best], measured={name: round(value, 1) for name, value in totals.items()})
    log.info(
        "on %s: %s%s chosen; training samples/s measured %s",
        device,
        choice.precision,
        " + channels-last" if choice.channels_last else "",
        choice.measured,
    )
    return choice


# Every config section that changes what a trained model means (its inputs, labels, split,
# architecture or training); storage, MLflow, evaluation and quality thresholds do not.
MEANINGFUL_SECTIONS = {"data", "representation", "labels", "dataset", "model", "training"}


def meaning_key(config: PlatformConfig, data_fingerprint: str, *extra: Any) -> str:
    """A hash of the data and every config part that gives training its meaning: state saved
    under one key (a checkpoint, a tuning study) must never be resumed under another."""
    meaningful = config.model_dump(mode="json", include=MEANINGFUL_SECTIONS)
    payload = json.dumps([data_fingerprint, meaningful, *extra], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Progress:
    """Where early stopping stands after ``epoch``: what a resumed run continues from."""

    epoch: int = 0  # the last finished epoch (0: none yet)
    best_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] | None = None  # the kept model's weights at ``best_epoch``
    best_epoch: int = 0
    stale: int = 0  # epochs since the validation loss last improved
    done: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    def record(self, record: EpochRecord, kept: nn.Module, patience: int) -> None:
        self.epoch = record.epoch
        self.history.append(record)
        if record.val_log_loss < self.best_loss - 1e-5:
            self.best_loss, self.stale, self.best_epoch = record.val_log_loss, 0, record.epoch
            self.best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        else:
            self.stale += 1
        self.done = self.stale >= patience


@dataclass
class TrainState:
    """Everything a killed run needs to continue after its last finished epoch: the progress, the
    weights (and their moving average), the optimizer, the schedule and the random streams.

    ``key`` is the run's :func:`meaning_key`: a state is resumed only by a run of the same data
    and meaningful config. Saved as one flat dict, the layout earlier versions wrote, so that
    their files resume too; in the object store when ``storage.uri`` is s3://, so any pod resumes it."""

    key: str
    progress: Progress
    model: dict[str, Any]
    averaged: dict[str, Any] | None
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None  # the training device's stream, on a GPU

    def save(self, path: StoredPath) -> None:
        p = self.progress
        payload = {
            "key": self.key,
            "epoch": p.epoch,
            "model": self.model,
            "averaged": self.averaged,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "torch_rng": self.torch_rng,
            "cuda_rng": self.cuda_rng,
            "best_loss": p.best_loss,
            "best_state": p.best_state,
            "stale": p.stale,
            "done": p.done,
            "best_epoch": p.best_epoch,
            "history": [asdict(r) for r in p.history],
        }
        atomic_write(path, partial(torch.save, payload))

    @classmethod
    def load(cls, path: StoredPath, key: str) -> TrainState | None:
        """The state saved at ``path``, or None when there is none or it was saved under another key."""
        if not path.exists():
            return None
        with readable(path) as local:
            payload = torch.load(local, weights_only=False, map_location="cpu")
        if payload["key"] != key:
            return None
        history = [EpochRecord(**r) for r in payload["history"]]
        progress = Progress(
            payload["epoch"],
            payload["best_loss"],
            payload["best_state"],
            payload["best_epoch"],
            payload["stale"],
            payload["done"],
            history,
        )
        return cls(
            key,
            progress,
            payload["model"],
            payload["averaged"],
            payload["optimizer"],
            payload["schedule"],
            payload["torch_rng"],
            payload.get("cuda_rng"),
        )


@dataclass
class _Training:
    """What changes while a model trains: the weights (``model``; ``net`` is what trains, the model
    itself or its DDP wrapper), their moving average, the optimizer and the schedule."""

    model: OrderBookClassifier
    net: nn.Module
    averaged: AveragedModel | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    losses: list[nn.CrossEntropyLoss]  # one per head, class-weighted by the training part

    @property
    def kept(self) -> nn.Module:
        """What is validated and kept: the model, or the moving average of its weights (and BatchNorm statistics)."""
        return self.averaged.module if self.averaged is not None else self.model

    def state(self, key: str, progress: Progress, device: torch.device) -> TrainState:
        averaged = self.averaged.state_dict() if self.averaged is not None else None
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return TrainState(
            key,
            progress,
            self.model.state_dict(),
            averaged,
            self.optimizer.state_dict(),
            self.schedule.state_dict(),
            torch.get_rng_state(),
            cuda_rng,
        )

    def restore(self, state: TrainState, device: torch.device) -> Progress:
        self.model.load_state_dict(state.model)
        if self.averaged is not None and state.averaged is not None:
            self.averaged.load_state_dict(state.averaged)
        self.optimizer.load_state_dict(state.optimizer)
        self.schedule.load_state_dict(state.schedule)
        torch.set_rng_state(state.torch_rng)
        if device.type == "cuda" and state.cuda_rng is not None:
            torch.cuda.set_rng_state(state.cuda_rng, device)
        return state.progress

    def run_epoch(self, batches: Iterable[Batch], device: torch.device, bf16: bool) -> float:
        """One pass over ``batches``, an optimizer step each; the summed loss (mean over the heads) times samples."""
        self.net.train()
        total = 0.0
        for batch in batches:
            windows, calendar, target = (tensor.to(device, non_blocking=True) for tensor in batch)
            # bf16 autocast: ~1.5x faster on CPUs with bf16 units (benchmarks/), losses stay fp32.
            loss = _training_step(self.net, (windows, calendar, target), self.losses, self.optimizer, bf16)
            self.schedule.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            total += loss.item() * len(target)
        return total

    def validate(self, data: TrainingData, part: Part, replicas: Replicas) -> tuple[float, list[float]]:
        """The kept model's validation log loss and accuracies, after every replica took rank 0's buffers."""
        replicas.sync_buffers(self.model)
        if self.averaged is not None:
            replicas.sync_buffers(self.averaged.module)
        return validate(self.kept, data, part, replicas)


def _training_part(part: Part, max_samples: int | None) -> Part:
    """The training part, or an evenly spaced subset of ``max_samples`` of it, which keeps the
    whole training period represented."""
    if not max_samples or len(part) <= max_samples:
        return part
    keep = np.linspace(0, len(part) - 1, max_samples).astype(np.int64)
    return Part(**{name: getattr(part, name)[keep] for name in PART_FIELDS})


def _fast_path(
    config: PlatformConfig, data: TrainingData, train_part: Part, losses: list[nn.CrossEntropyLoss], replicas: Replicas
) -> FastPath:
    """``training.precision`` and ``channels_last`` resolved for the device, timed on a first batch on a GPU."""
    t = config.training

    def measure(candidates: list[tuple[str, bool]]) -> dict[str, float]:
        first = next(
            iter(batch_loader(data, train_part, range(len(train_part)), t.batch_size // replicas.world_size, 0))
        )
        probe: Batch = tuple(tensor.to(replicas.device) for tensor in first)
        return measure_fast_paths(lambda: build_model(config, data), probe, losses, replicas.device, candidates)

    return choose_fast_path(config, replicas.device, measure, replicas)


def _prepare(
    config: PlatformConfig,
    data: TrainingData,
    fast: FastPath,
    losses: list[nn.CrossEntropyLoss],
    loader_batches: int,
    replicas: Replicas,
) -> _Training:
    t = config.training
    model = build_model(config, data)
    if fast.channels_last:  # ~1.3x faster convolutions on CPU (docs/benchmarks.md)
        # torch's stubs omit to()'s memory_format keyword, which nn.Module.to accepts at runtime.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = replicas.prepare(model)
    averaged = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True) if t.ema_decay else None
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    schedule: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * loader_batches)
        if t.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )
    return _Training(model, net, averaged, optimizer, schedule, losses)


def train(
    config: PlatformConfig,
    data: TrainingData,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
    checkpoint: StoredPath | None = None,
    data_fingerprint: str = "",
    replicas: Replicas | None = None,
) -> TrainResult:
    """Train with early stopping on validation log loss; the best epoch's weights are returned.

    With ``checkpoint``, the :class:`TrainState` is written there atomically after every epoch,
    and a run that finds a matching one continues after its epoch: a killed training run, run
    again, completes with the same result as an uninterrupted one. A checkpoint matches only the
    same ``data_fingerprint`` (content hash of the input partitions) and meaningful config.

    ``replicas``: this process's place among those training the model together (torchrun);
    default, this process alone on ``training.device``. ``on_epoch``, the log and the checkpoint
    happen on the main replica only."""
    t = config.training
    replicas = replicas or alone_on(t.device)
    if replicas.device.type == "cuda":
        # cuBLAS needs a fixed workspace for deterministic results (torch.use_deterministic_algorithms).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // replicas.world_size))
    seed_everything(t.seed)
    train_part, val_part = _training_part(data.parts["train"], t.max_train_samples), data.parts["val"]
    losses = [
        nn.CrossEntropyLoss(weight=class_weights(classes, data.n_classes, t.class_weights)).to(replicas.device)
        for classes in train_part.classes.T  # one loss per head
    ]
    fast = _fast_path(config, data, train_part, losses, replicas)
    sampler: DistributedSampler[int] = DistributedSampler(
        WindowSamples(data, train_part), num_replicas=replicas.world_size, rank=replicas.rank, seed=t.seed
    )
    loader = batch_loader(data, train_part, sampler, t.batch_size // replicas.world_size, t.loader_workers)
    training = _prepare(config, data, fast, losses, len(loader), replicas)
    key = meaning_key(config, data_fingerprint, list(data.shape), train_part.steps[[0, -1]].tolist(), len(train_part))
    state = TrainState.load(checkpoint, key) if checkpoint is not None else None
    progress = training.restore(state, replicas.device) if state is not None else Progress()
    resumed_from = progress.epoch
    for epoch in range(progress.epoch + 1, t.epochs + 1):
        if progress.done:
            break
        sampler.set_epoch(epoch)  # the epoch's shuffle: a function of (seed, epoch), so a resumed run repeats it
        started = time.perf_counter()
        show = t.progress_bar and replicas.is_main
        batches = tqdm(loader, desc=f"epoch {epoch}/{t.epochs}", disable=not show, mininterval=2.0, leave=False)
        total = training.run_epoch(batches, replicas.device, fast.precision == "bf16")
        train_seconds = time.perf_counter() - started
        val_loss, accuracy = training.validate(data, val_part, replicas)
        total, seen = replicas.sum([total, float(len(sampler))])
        record = EpochRecord(  # samples/s of all replicas together
            epoch, total / seen, val_loss, accuracy, time.perf_counter() - started, seen / train_seconds
        )
        progress.record(record, training.kept, t.early_stopping_patience)
        if not replicas.is_main:
            continue
        if checkpoint is not None:
            training.state(key, progress, replicas.device).save(checkpoint)
        log.info("epoch %s", record)
        on_epoch(record)
    if progress.best_state is not None:
        training.model.load_state_dict(progress.best_state)
    training.model.eval()
    return TrainResult(training.model, progress.best_epoch, progress.history, resumed_from, str(replicas.device), fast)


def epoch_metrics(record: EpochRecord, horizons_s: list[int]) -> dict[str, float]:
    """An epoch's numbers under their MLflow names, whichever process logs them."""
    metrics = {
        "train_loss": record.train_loss,
        "val_log_loss": record.val_log_loss,
        "samples_per_s": record.samples_per_s,
    }
    return metrics | {f"val_accuracy_{h}s": a for h, a in zip(horizons_s, record.val_accuracy)}


def save_result(result: TrainResult, path: StoredPath) -> None:
    """A training result for another process (torchrun's rank 0 hands it to the Dagster step)."""
    payload = {
        "model": {name: tensor.cpu() for name, tensor in result.model.state_dict().items()},
        "best_epoch": result.best_epoch,
        "history": [asdict(r) for r in result.history],
        "resumed_from": result.resumed_from,
        "device": result.device,
        "fast_path": asdict(result.fast_path),
    }
    atomic_write(path, partial(torch.save, payload))


def load_result(path: StoredPath, config: PlatformConfig, data: TrainingData) -> TrainResult:
    with readable(path) as local:
        payload = torch.load(local, weights_only=True)
    model = build_model(config, data)
    model.load_state_dict(payload["model"])
    model.eval()
    history = [EpochRecord(**r) for r in payload["history"]]
    fast = FastPath(**payload["fast_path"])
    return TrainResult(model, payload["best_epoch"], history, payload["resumed_from"], payload["device"], fast)
