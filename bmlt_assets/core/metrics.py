"""Evaluation: classification metrics, baselines and signal capture (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bmlt_assets.core.evaluation_report import Capture, Classification
from bmlt_assets.core.representation import quoted_spread_bps


def classification_metrics(classes: np.ndarray, probabilities: np.ndarray) -> Classification:
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    clipped = np.clip(probabilities, 1e-12, 1.0)
    normalized = clipped / clipped.sum(axis=1, keepdims=True)
    return Classification(
        accuracy=float(accuracy_score(classes, predicted)),
        balanced_accuracy=float(balanced_accuracy_score(classes, predicted)),
        macro_f1=float(f1_score(classes, predicted, average="macro", labels=range(n_classes), zero_division=0)),
        mcc=float(matthews_corrcoef(classes, predicted)),
        log_loss=float(log_loss(classes, normalized, labels=range(n_classes))),
        # Multi-class Brier: mean over samples of the squared distance to the one-hot outcome.
        brier=float(brier_score_loss(classes, normalized, labels=range(n_classes))),
    )


def per_sample_log_loss(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each sample's log loss (sklearn's log_loss gives only the mean, and the bootstrap needs the series)."""
    return -np.log(np.clip(probabilities[np.arange(len(classes)), classes], 1e-12, 1.0))


def confusion(classes: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return confusion_matrix(classes, probabilities.argmax(axis=1), labels=range(probabilities.shape[1]))


def prior_probabilities(train_classes: np.ndarray, n_classes: int, n: int) -> np.ndarray:
    """The class-prior baseline: training-part class frequencies for every sample."""
    prior = np.bincount(train_classes, minlength=n_classes) / len(train_classes)
    return np.broadcast_to(prior, (n, n_classes)).copy()


def persistence_probabilities(
    train_previous: np.ndarray, train_classes: np.ndarray, test_previous: np.ndarray, n_classes: int
) -> np.ndarray:
    """Persistence: the class distribution that followed each last realized class in training
    (a transition matrix with add-one smoothing); the class prior where the last class is unknown."""
    counts = np.ones((n_classes, n_classes))
    known = train_previous >= 0
    np.add.at(counts, (train_previous[known], train_classes[known]), 1)
    transition = counts / counts.sum(axis=1, keepdims=True)
    prior = np.bincount(train_classes, minlength=n_classes) / len(train_classes)
    return np.where((test_previous >= 0)[:, None], transition[np.maximum(test_previous, 0)], prior)


def order_book_features(quotes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per asset, from the raw best quotes (the first six ``representation.QUOTE_FIELDS``) at steps t and t - 1
    only, so the same under every representation and normalization: best-level (queue) imbalance,
    order-flow imbalance of the best level (change in bid minus change in ask queue, scaled by
    depth; 0 where t - 1 is unknown), whole-book imbalance, spread (bps), micro-price offset from
    mid (bps) and log best-level depth. ``quotes`` (S, 6, K) -> (N, 6K)."""
    now = np.asarray(quotes[steps], dtype=np.float64)  # (N, 6, K)
    before = np.asarray(quotes[np.maximum(steps - 1, 0)], dtype=np.float64)
    bid_distance, ask_distance, best_bid, best_ask, book_bid, book_ask = now[:, :6].transpose(1, 0, 2)
    depth = np.maximum(best_bid + best_ask, 1e-12)
    flow = np.nan_to_num((best_bid - before[:, 2]) - (best_ask - before[:, 3]))
    features = [
        (best_bid - best_ask) / depth,
        flow / depth,
        (book_bid - book_ask) / np.maximum(book_bid + book_ask, 1e-12),
        quoted_spread_bps(now),
        (ask_distance * best_bid + bid_distance * best_ask) / depth,
        np.log1p(depth),
    ]
    return np.concatenate(features, axis=1)


def logistic_baseline(
    train_features: np.ndarray, train_classes: np.ndarray, test_features: np.ndarray, n_classes: int, max_iter: int
) -> np.ndarray:
    """Multinomial logistic regression on order-book imbalance features, fitted on train only."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(train_features, train_classes)
    probabilities = np.zeros((len(test_features), n_classes))
    probabilities[:, model.classes_] = model.predict_proba(test_features)
    return probabilities


def signal_capture(model: Classification, prior: Classification, oracle: Classification) -> Capture:
    """Share of the achievable edge over the class prior that the model captured (1 = oracle)."""
    return Capture(
        accuracy_capture=(model.accuracy - prior.accuracy) / (oracle.accuracy - prior.accuracy),
        logloss_capture=(prior.log_loss - model.log_loss) / (prior.log_loss - oracle.log_loss),
    )
