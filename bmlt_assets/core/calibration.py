"""Calibration: top-label expected calibration error and temperature scaling."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.calibration import calibration_curve

from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.train import predict_logits

ECE_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, classes: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins on [0, 1]:
    sum over bins of (bin share of samples) x |accuracy in bin - mean confidence in bin|.

    Hand-written: scikit-learn has reliability curves but no ECE.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == classes
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def reliability_curves(probabilities: np.ndarray, classes: np.ndarray, bins: int = 10) -> list[dict[str, list[float]]]:
    """One-vs-rest reliability curve per class (quantile bins, so each holds data)."""
    curves = []
    for c in range(probabilities.shape[1]):
        observed, predicted = calibration_curve(classes == c, probabilities[:, c], n_bins=bins, strategy="quantile")
        curves.append({"predicted": predicted.tolist(), "observed": observed.tolist()})
    return curves


def fit_temperature(logits: np.ndarray, classes: np.ndarray) -> float:
    """The scalar T > 0 minimizing the log loss of softmax(logits / T), by LBFGS on log T."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    y = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.exp().item()


def validation_temperatures(model: torch.nn.Module, data: TrainingData) -> list[float]:
    """One temperature per head, fitted on the purged validation part (never on test)."""
    val = data.parts["val"]
    logits = predict_logits(model, data, val.steps)
    return [fit_temperature(logits[:, h], val.classes[:, h]) for h in range(len(data.horizons))]
