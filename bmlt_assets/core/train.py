"""The training loop: seeded, class-weighted, early-stopped on the purged validation part."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import PART_FIELDS, Part, TrainingData
from bmlt_assets.core.files import atomic_write
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


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


class WindowBatches(torch.utils.data.Dataset):
    """Item i is a whole batch, gathered with one vectorized index from the (memory-mapped) base.

    The batch composition is decided in the main process from a seeded generator, so DataLoader
    workers only gather: the result is identical for any number of workers.
    """

    def __init__(self, data: TrainingData, part: Part, batches: list[np.ndarray]):
        self.data, self.part, self.batches = data, part, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.batches[i]
        windows, calendar = self.data.source.inputs(self.part.steps[rows])
        return torch.from_numpy(windows), torch.from_numpy(calendar), torch.from_numpy(self.part.classes[rows])


def batch_loader(
    data: TrainingData, part: Part, batches: list[np.ndarray], workers: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        WindowBatches(data, part, batches), batch_size=None, shuffle=False, num_workers=workers
    )


@torch.no_grad()
def predict_logits(model: nn.Module, data: TrainingData, steps: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, H, C) logits for the samples at ``steps`` (model in eval mode)."""
    model.eval()
    out = []
    for chunk in _batches(len(steps), batch_size, None):
        windows, times = data.source.inputs(steps[chunk])
        out.append(model(torch.from_numpy(windows), torch.from_numpy(times)).numpy())
    return np.concatenate(out) if out else np.empty((0, len(data.horizons), data.n_classes), np.float32)


def mean_log_loss(logits: np.ndarray, classes: np.ndarray) -> float:
    """Mean over horizons of the multi-class log loss (nats)."""
    tensor = torch.from_numpy(logits)
    target = torch.from_numpy(classes)
    return float(
        np.mean([nn.functional.cross_entropy(tensor[:, h], target[:, h]).item() for h in range(logits.shape[1])])
    )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_log_loss: float
    val_accuracy: list[float]
    seconds: float
    samples_per_s: float


@dataclass
class TrainResult:
    model: OrderBookClassifier
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from: int = 0  # the last epoch restored from a checkpoint (0: a fresh start)


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
    checkpoint: Path | None = None,
    data_fingerprint: str = "",
) -> TrainResult:
    """Train with early stopping on validation log loss; the best epoch's weights are returned.

    With ``checkpoint``, the full training state (weights, optimizer, schedule, random streams,
    early-stopping state) is written there atomically after every epoch, and a run that finds a
    matching checkpoint continues after its epoch: a killed training run, run again, completes
    with the same result as an uninterrupted one. A checkpoint matches only the same
    ``data_fingerprint`` (content hash of the input partitions) and meaningful config."""
    t = config.training
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    seed_everything(t.seed)
    rng = np.random.default_rng(t.seed)
    model = build_model(config, data)
    if t.channels_last:  # ~1.3x faster convolutions on CPU (docs/benchmarks.md)
        # torch's stubs omit to()'s memory_format keyword, which nn.Module.to accepts at runtime.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_part, val_part = data.parts["train"], data.parts["val"]
    if t.max_train_samples and len(train_part) > t.max_train_samples:
        # An evenly spaced subset keeps the whole training period represented.
        keep = np.linspace(0, len(train_part) - 1, t.max_train_samples).astype(np.int64)
        train_part = Part(**{name: getattr(train_part, name)[keep] for name in PART_FIELDS})
    losses = [
        nn.CrossEntropyLoss(weight=class_weights(train_part.classes[:, h], data.n_classes, t.class_weights))
        for h in range(len(data.horizons))
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    batches_per_epoch = -(-len(train_part) // t.batch_size)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * batches_per_epoch)
        if t.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )

    result = TrainResult(model=model, best_epoch=0)
    best_loss, best_state, stale, done, first_epoch = np.inf, None, 0, False, 1
    key = meaning_key(config, data_fingerprint, list(data.shape), train_part.steps[[0, -1]].tolist(), len(train_part))
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["key"] == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            best_loss, best_state, stale, done = state["best_loss"], state["best_state"], state["stale"], state["done"]
            result.best_epoch, result.history = state["best_epoch"], [EpochRecord(**r) for r in state["history"]]
            first_epoch = state["epoch"] + 1
            result.resumed_from = state["epoch"]
    for epoch in range(first_epoch, t.epochs + 1):
        if done:
            break
        model.train()
        started = time.perf_counter()
        total, seen = 0.0, 0
        loader = batch_loader(data, train_part, _batches(len(train_part), t.batch_size, rng), t.loader_workers)
        for windows, calendar, target in tqdm(
            loader, desc=f"epoch {epoch}/{t.epochs}", disable=not t.progress_bar, mininterval=2.0, leave=False
        ):
            # bf16 autocast: ~1.5x faster on CPUs with bf16 units (benchmarks/), losses stay fp32.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.precision == "bf16"):
                logits = model(windows, calendar).float()
            loss = sum(losses[h](logits[:, h], target[:, h]) for h in range(len(losses))) / len(losses)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(target)
            seen += len(target)
        train_seconds = time.perf_counter() - started
        val_logits = predict_logits(model, data, val_part.steps)
        val_loss = mean_log_loss(val_logits, val_part.classes)
        accuracy = [float((val_logits[:, h].argmax(1) == val_part.classes[:, h]).mean()) for h in range(len(losses))]
        record = EpochRecord(
            epoch, total / seen, val_loss, accuracy, time.perf_counter() - started, seen / train_seconds
        )
        result.history.append(record)
        if val_loss < best_loss - 1e-5:
            best_loss, stale, result.best_epoch = val_loss, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        done = stale >= t.early_stopping_patience
        if checkpoint is not None:
            state = {
                "key": key,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
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
