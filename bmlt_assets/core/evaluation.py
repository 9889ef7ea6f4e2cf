"""The test-part evaluation: the model against the class prior, a logistic-regression baseline
and, on the synthetic market, the Bayes-optimal oracle. The test part is touched here only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import softmax

from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.metrics import (
    classification_metrics,
    confusion,
    logistic_baseline,
    order_book_features,
    prior_probabilities,
    signal_capture,
)

# (horizon index, test steps, test edges (N, C-1)) -> (N, C) probabilities
Oracle = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def evaluate(data: TrainingData, test_logits: np.ndarray, oracle: Oracle | None, logistic_max_iter: int) -> list[dict[str, Any]]:
    """One entry per horizon: metrics per predictor, signal capture and the model's confusion matrix."""
    train, test = data.parts["train"], data.parts["test"]
    train_features = order_book_features(data.source.base, train.steps)
    test_features = order_book_features(data.source.base, test.steps)
    report = []
    for i, horizon in enumerate(data.horizons):
        y = test.classes[:, i]
        predictors = {
            "model": softmax(test_logits[:, i].astype(np.float64), axis=1),
            "prior": prior_probabilities(train.classes[:, i], data.n_classes, len(y)),
            "logistic_obi": logistic_baseline(train_features, train.classes[:, i], test_features, data.n_classes, logistic_max_iter),
        }
        if oracle is not None:
            predictors["oracle"] = oracle(i, test.steps, test.edges[:, i])
        metrics = {name: classification_metrics(y, p) for name, p in predictors.items()}
        entry = {
            "horizon_steps": horizon,
            "samples": len(y),
            "metrics": metrics,
            "confusion": confusion(y, predictors["model"]).tolist(),
            "beats_baselines": all(
                metrics["model"]["log_loss"] < metrics[b]["log_loss"] for b in ("prior", "logistic_obi")
            ),
        }
        if oracle is not None:
            entry["capture"] = signal_capture(metrics["model"], metrics["prior"], metrics["oracle"])
        report.append(entry)
    return report


def render_markdown(report: list[dict[str, Any]], horizons_s: list[int], title: str) -> str:
    lines = [f"# {title}", ""]
    for entry, horizon in zip(report, horizons_s):
        lines += [f"## Horizon {horizon}s ({entry['samples']} test samples)", "", "| predictor | accuracy | macro-F1 | log loss |", "|---|---|---|---|"]
        for name, m in entry["metrics"].items():
            lines.append(f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['log_loss']:.4f} |")
        if "capture" in entry:
            c = entry["capture"]
            lines += ["", f"Signal capture: accuracy {c['accuracy_capture']:.3f}, log loss {c['logloss_capture']:.3f} (1 = oracle, 0 = class prior)."]
        verdict = "beats" if entry["beats_baselines"] else "does NOT beat"
        lines += ["", f"The model {verdict} both baselines on log loss.", "", "Confusion matrix (rows: realized class, columns: predicted):", ""]
        n = len(entry["confusion"])
        lines += ["| | " + " | ".join(f"p{j}" for j in range(n)) + " |", "|---" * (n + 1) + "|"]
        lines += [f"| r{j} | " + " | ".join(str(v) for v in row) + " |" for j, row in enumerate(entry["confusion"])]
        lines.append("")
    return "\n".join(lines)
