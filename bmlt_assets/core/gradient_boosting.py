"""The gradient-boosted baseline: the model a quant tries first on order-book data.

scikit-learn's ``HistGradientBoostingClassifier`` on the standard order-flow features of the
model's own window (``core/order_flow.py``, every configured symbol), fitted on the training part
with early stopping on the purged validation part, then calibrated on validation exactly as the
model is (temperature and shrunk class bias). LightGBM with the same settings and features was
within 0.005 nats of test log loss either way (better at 10 s, worse at 30 s, each beyond noise)
and fitted in 0.7 of the time: neither is better at both horizons, so the baseline takes no new
dependency (``python -m benchmarks.gradient_boosting``, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from bmlt_assets.core.calibration import Calibration, fit_calibration
from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.order_flow import order_flow_features
from bmlt_assets.core.uncertainty import independent_outcomes

# Settings chosen on the synthetic default's validation part (docs/benchmarks.md): 15-leaf trees
# beat 31-leaf ones there, and early stopping ends near 80 rounds at this learning rate.
SETTINGS = {
    "learning_rate": 0.05,
    "max_iter": 500,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "n_iter_no_change": 20,
}


@dataclass(frozen=True)
class GradientBoosted:
    """One horizon's fitted classifier and its validation calibration."""

    classifier: HistGradientBoostingClassifier
    calibration: Calibration
    n_classes: int

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        raw = np.zeros((len(features), self.n_classes))
        with threadpool_limits(1):  # see fit_gradient_boosting
            raw[:, self.classifier.classes_] = self.classifier.predict_proba(features)
        return self.calibration.probabilities(np.log(np.clip(raw, 1e-12, 1.0)))


def sample_features(data: TrainingData, steps: np.ndarray) -> np.ndarray:
    """The order-flow features of the samples at ``steps``, over the model's window."""
    return order_flow_features(data.quotes, data.source.mids, steps, data.source.window)


def fit_gradient_boosting(data: TrainingData, seed: int, threads: int | None = None) -> list[GradientBoosted]:
    """One baseline per horizon: fitted on the training part, early-stopped and calibrated on the
    purged validation part (never on test), on ``threads`` OpenMP threads (default one: on shared
    cores OpenMP's spinning workers made a fit 20 times slower than one thread)."""
    train, val = data.parts["train"], data.parts["val"]
    train_features, val_features = sample_features(data, train.steps), sample_features(data, val.steps)
    fitted = []
    for i, horizon in enumerate(data.horizons):
        classifier = HistGradientBoostingClassifier(**SETTINGS, random_state=seed)
        with threadpool_limits(threads or 1):
            classifier.fit(train_features, train.classes[:, i], X_val=val_features, y_val=val.classes[:, i])
        uncalibrated = GradientBoosted(classifier, Calibration.identity(data.n_classes), data.n_classes)
        log_p = np.log(np.clip(uncalibrated.probabilities(val_features), 1e-12, 1.0))
        calibration = fit_calibration(log_p, val.classes[:, i], independent_outcomes(val.steps, horizon))
        fitted.append(GradientBoosted(classifier, calibration, data.n_classes))
    return fitted
