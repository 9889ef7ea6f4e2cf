"""A trained model on disk: weights, the training part's normalization and the spec to rebuild it.

The spec names everything scoring needs (inputs, heads, calibration), so a checkpoint scores
raw windows on its own; ``bmlt_resources.pyfunc`` wraps it as the MLflow pyfunc.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bmlt_assets.core.calibration import Calibration
from bmlt_assets.core.config import ModelConfig, PlatformConfig
from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.files import META, StoredPath, read_meta, write_json
from bmlt_assets.core.models import OrderBookClassifier
from bmlt_assets.core.windows import Normalizer

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class ModelMeta:
    """The model folder's meta.json: the model's spec, and where it is registered. Written inside
    the folder's commit, after the registration, so that a committed model names its registry entry."""

    spec: dict[str, Any]
    best_epoch: int
    registered_version: str
    mlflow_run_id: str = ""  # absent from folders of early versions
    model_uri: str = ""

    def save(self, folder: Path) -> None:
        write_json(asdict(self), folder / META)

    @classmethod
    def load(cls, folder: StoredPath) -> ModelMeta:
        """From a committed model folder (its commit added file hashes, which are not ours)."""
        meta = read_meta(folder)
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})


def model_spec(config: PlatformConfig, data: TrainingData, calibration: list[Calibration]) -> dict[str, Any]:
    return {
        "model": config.model.model_dump(mode="json"),
        "levels": data.shape[1],
        "symbols": data.symbols,
        "target": data.target,
        "horizons_s": config.labels.horizons_s,
        "n_classes": data.n_classes,
        "window_steps": config.dataset.window_steps,
        "cadence_ms": config.data.cadence_ms,
        "edges": config.labels.edges,
        "labels": labels_spec(config, data),
        "representation": config.representation.model_dump(mode="json"),
        "fitted_ns": fitted_period_ns(data),
        "calibration": [asdict(head) for head in calibration],
    }


def labels_spec(config: PlatformConfig, data: TrainingData) -> dict[str, Any]:
    """What a class means: the kind of edges, their values (percent or multiples of the trailing
    volatility; for quantile edges, the values fitted on this training part, per horizon) and the
    volatility's lookback. Two models predict the same classes only if these are equal."""
    labels = config.labels
    if labels.edges == "fixed_pct":
        return {"edges": labels.edges, "fixed_pct_edges": labels.fixed_pct_edges}
    if labels.edges == "volatility_scaled":
        return {
            "edges": labels.edges,
            "volatility_edges": labels.volatility_edges,
            "vol_lookback_s": labels.vol_lookback_s,
        }
    fitted = [data.parts["train"].edges[0, i].tolist() for i in range(len(data.horizons))]
    return {"edges": labels.edges, "fitted_edges": fitted}


def spec_calibration(spec: dict[str, Any]) -> list[Calibration]:
    """The heads' calibration; a checkpoint written before the class bias holds temperatures only."""
    if "calibration" not in spec:
        return [Calibration(t, (0.0,) * spec["n_classes"]) for t in spec["temperatures"]]
    return [Calibration(**{**head, "bias": tuple(head["bias"])}) for head in spec["calibration"]]


def fitted_period_ns(data: TrainingData) -> list[int]:
    """First and last timestamp a model saw while being fitted and selected: its training and
    validation windows, features included (a window reaches ``window - 1`` steps back) and labels
    (a label reaches the longest horizon ahead)."""
    steps = np.concatenate([data.parts["train"].steps, data.parts["val"].steps])
    timestamps = data.source.timestamps
    first = max(int(steps.min()) - data.source.window + 1, 0)
    last = min(int(steps.max()) + max(data.horizons), len(timestamps) - 1)
    return [int(timestamps[first]), int(timestamps[last])]


def save_checkpoint(path: Path, model: OrderBookClassifier, normalizer: Normalizer, spec: dict[str, Any]) -> None:
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}  # loadable without a GPU
    torch.save({"state_dict": weights, "norm_mean": normalizer.mean, "norm_std": normalizer.std, "spec": spec}, path)


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[OrderBookClassifier, Normalizer, dict[str, Any]]:
    """The model (in eval mode, on ``device``), the normalization and the spec of a checkpoint."""
    payload = torch.load(path, weights_only=False, map_location="cpu")
    spec = payload["spec"]
    model = OrderBookClassifier(
        ModelConfig.model_validate(spec["model"]),
        spec["levels"],
        len(spec["symbols"]),
        len(spec["horizons_s"]),
        spec["n_classes"],
    )
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, Normalizer(payload["norm_mean"], payload["norm_std"]), spec


def input_example(data: TrainingData, n: int = 2) -> dict[str, np.ndarray]:
    """The first ``n`` test windows in the scoring input layout (for the logged signature)."""
    steps = data.parts["test"].steps[:n]
    index = steps[:, None] + np.arange(1 - data.source.window, 1)
    return {
        "book": np.asarray(data.source.base[index], dtype=np.float32),
        "mids": np.asarray(data.source.mids[index], dtype=np.float64),
        "timestamp_ns": np.asarray(data.source.timestamps[steps], dtype=np.int64),
    }
