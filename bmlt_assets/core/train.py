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


def train(
    config: PlatformConfig,
    data: TrainingData,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
    checkpoint: StoredPath | None = None,
    data_fingerprint: str = "",
    replicas: Replicas | None = None,
) -> TrainResult:
    """Train with early stopping on validation log loss; the best epoch's weights are returned.

    With ``checkpoint``, the full training state (weights, optimizer, schedule, random stream,
    early-stopping state) is written there atomically after every epoch, and a run that finds a
    matching checkpoint continues after its epoch: a killed training run, run again, completes
    with the same result as an uninterrupted one. A checkpoint matches only the same
    ``data_fingerprint`` (content hash of the input partitions) and meaningful config.

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
    train_part, val_part = data.parts["train"], data.parts["val"]
    if t.max_train_samples and len(train_part) > t.max_train_samples:
        # An evenly spaced subset keeps the whole training period represented.
        keep = np.linspace(0, len(train_part) - 1, t.max_train_samples).astype(np.int64)
        train_part = Part(**{name: getattr(train_part, name)[keep] for name in PART_FIELDS})
    losses = [
        nn.CrossEntropyLoss(weight=class_weights(train_part.classes[:, h], data.n_classes, t.class_weights)).to(
            replicas.device
        )
        for h in range(len(data.horizons))
    ]

    def measure(candidates: list[tuple[str, bool]]) -> dict[str, float]:
        first = next(
            iter(batch_loader(data, train_part, range(len(train_part)), t.batch_size // replicas.world_size, 0))
        )
        probe: Batch = tuple(tensor.to(replicas.device) for tensor in first)
        return measure_fast_paths(lambda: build_model(config, data), probe, losses, replicas.device, candidates)

    fast = choose_fast_path(config, replicas.device, measure, replicas)
    model = build_model(config, data)
    if fast.channels_last:  # ~1.3x faster convolutions on CPU (docs/benchmarks.md)
        # torch's stubs omit to()'s memory_format keyword, which nn.Module.to accepts at runtime.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = replicas.prepare(model)  # what trains: the model itself, or its DDP wrapper
    # What is validated and kept: the model, or the moving average of its weights (and BatchNorm statistics).
    averaged = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True) if t.ema_decay else None
    )
    kept = averaged.module if averaged is not None else model
    sampler: DistributedSampler[int] = DistributedSampler(
        WindowSamples(data, train_part), num_replicas=replicas.world_size, rank=replicas.rank, seed=t.seed
    )
    loader = batch_loader(data, train_part, sampler, t.batch_size // replicas.world_size, t.loader_workers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * len(loader))
        if t.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )

    result = TrainResult(model=model, best_epoch=0, device=str(replicas.device), fast_path=fast)
    best_loss, best_state, stale, done, first_epoch = np.inf, None, 0, False, 1
    key = meaning_key(config, data_fingerprint, list(data.shape), train_part.steps[[0, -1]].tolist(), len(train_part))
    if checkpoint is not None and checkpoint.exists():
        with readable(checkpoint) as local:  # in object storage when storage.uri is s3://: any pod resumes it
            state = torch.load(local, weights_only=False, map_location="cpu")
        if state["key"] == key:
            model.load_state_dict(state["model"])
            if averaged is not None:
                averaged.load_state_dict(state["averaged"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"])
            if replicas.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], replicas.device)
            best_loss, best_state, stale, done = state["best_loss"], state["best_state"], state["stale"], state["done"]
            result.best_epoch, result.history = state["best_epoch"], [EpochRecord(**r) for r in state["history"]]
            first_epoch = state["epoch"] + 1
            result.resumed_from = state["epoch"]
    for epoch in range(first_epoch, t.epochs + 1):
        if done:
            break
        net.train()
        sampler.set_epoch(epoch)  # the epoch's shuffle: a function of (seed, epoch), so a resumed run repeats it
        started = time.perf_counter()
        total, seen = 0.0, 0.0
        for batch in tqdm(
            loader,
            desc=f"epoch {epoch}/{t.epochs}",
            disable=not (t.progress_bar and replicas.is_main),
            mininterval=2.0,
            leave=False,
        ):
            moved = tuple(tensor.to(replicas.device, non_blocking=True) for tensor in batch)
            # bf16 autocast: ~1.5x faster on CPUs with bf16 units (benchmarks/), losses stay fp32.
            loss = _training_step(net, moved, losses, optimizer, fast.precision == "bf16")
            target = moved[2]
            schedule.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total += loss.item() * len(target)
            seen += len(target)
        train_seconds = time.perf_counter() - started
        replicas.sync_buffers(model)
        if averaged is not None:
            replicas.sync_buffers(averaged.module)
        val_loss, accuracy = validate(kept, data, val_part, replicas)
        total, seen = replicas.sum([total, seen])
        record = EpochRecord(  # samples/s of all replicas together
            epoch, total / seen, val_loss, accuracy, time.perf_counter() - started, seen / train_seconds
        )
        result.history.append(record)
        if val_loss < best_loss - 1e-5:
            best_loss, stale, result.best_epoch = val_loss, 0, epoch
            best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        else:
            stale += 1
        done = stale >= t.early_stopping_patience
        if not replicas.is_main:
            continue
        if checkpoint is not None:
            state = {
                "key": key,
                "epoch": epoch,
                "model": model.state_dict(),
                "averaged": averaged.state_dict() if averaged is not None else None,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(replicas.device) if replicas.device.type == "cuda" else None,
                "best_loss": best_loss,
                "best_state": best_state,
                "stale": stale,
                "done": done,
                "best_epoch": result.best_epoch,
                "history": [asdict(r) for r in result.history],
            }
            atomic_write(checkpoint, partial(torch.save, state))
        log.info(
            "epoch %s: train loss %.4f, val log loss %.4f, val accuracy %s, %.0f samples/s",
            record.epoch,
            record.train_loss,
            record.val_log_loss,
            [round(a, 4) for a in record.val_accuracy],
            record.samples_per_s,
        )
        on_epoch(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


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
