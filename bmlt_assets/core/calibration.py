"""Calibration: top-label expected calibration error, and temperature scaling with a class bias.

A head's probabilities are ``softmax(logits / T + b)``: one temperature ``T`` and one bias per
class ``b``, fitted on the purged validation part ("bias-corrected temperature scaling",
Alexandari et al., 2020). The temperature fixes over- or under-confidence; the bias fixes a class
balance the logits get wrong, which a class-weighted loss shifts by design (its minimizer is
``p_c w_c / Z``).

The bias is also what overfits: the class balance of one validation window follows that window's
realized drift, which the next day does not repeat. Fitted by maximum likelihood, a bias of +0.29
on the top class from about 870 independent 30 s outcomes cost 0.007 nats on the next day
(docs/benchmarks.md). So the bias has a Gaussian prior ``N(0, tau^2)`` in the sum-zero subspace,
and the likelihood counts independent outcomes (``core.uncertainty.independent_outcomes``: the
most validation samples whose outcome windows do not overlap), not overlapping samples: ``tau``
is the empirical-Bayes estimate, the one that makes the maximum-likelihood bias most probable
given its sampling error. A bias the outcomes do not support beyond noise is shrunk to 0
(``tau = 0``: temperature alone); a real one, such as class weights leave, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn.calibration import calibration_curve

from bmlt_assets.core.dataset import TrainingData
from bmlt_assets.core.evaluation_report import ReliabilityCurve
from bmlt_assets.core.train import predict_logits
from bmlt_assets.core.uncertainty import independent_outcomes

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


def reliability_curves(probabilities: np.ndarray, classes: np.ndarray, bins: int = 10) -> list[ReliabilityCurve]:
    """One-vs-rest reliability curve per class (quantile bins, so each holds data)."""
    curves = []
    for c in range(probabilities.shape[1]):
        observed, predicted = calibration_curve(classes == c, probabilities[:, c], n_bins=bins, strategy="quantile")
        curves.append(ReliabilityCurve(predicted.tolist(), observed.tolist()))
    return curves


@dataclass(frozen=True)
class Calibration:
    """``softmax(logits / temperature + bias)`` for one head; ``bias`` has one entry per class
    and sums to 0 (a common shift would not change the probabilities). ``bias_prior_sd`` and
    ``outcomes`` say how the bias was shrunk; ``temperature_alone`` is the temperature fitted
    without a bias, which the evaluation compares against (None in older checkpoints)."""

    temperature: float
    bias: tuple[float, ...]
    bias_prior_sd: float | None = None
    outcomes: int | None = None
    temperature_alone: float | None = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> (N, C) calibrated probabilities, in float64."""
        return softmax(np.asarray(logits, dtype=np.float64) / self.temperature + np.asarray(self.bias), axis=1)

    def without_bias(self) -> Calibration | None:
        """The temperature-only calibration fitted beside this one (None if not recorded)."""
        if self.temperature_alone is None:
            return None
        return Calibration(self.temperature_alone, (0.0,) * len(self.bias))

    @classmethod
    def identity(cls, n_classes: int) -> Calibration:
        return cls(1.0, (0.0,) * n_classes)


def _fit(logits: np.ndarray, classes: np.ndarray, bias_penalty: float | None) -> tuple[float, np.ndarray]:
    """The temperature and (centred) class bias minimizing the mean log loss of
    ``softmax(logits / T + b)`` plus ``bias_penalty * |b|^2 / 2``, by L-BFGS on (log T, b): convex
    in (1 / T, b), so the optimum is unique. ``bias_penalty`` None: no bias at all."""
    n, n_classes = logits.shape
    onehot = np.eye(n_classes)[classes]

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        temperature = np.exp(theta[0])
        bias = theta[1:] - theta[1:].mean() if bias_penalty is not None else np.zeros(n_classes)
        z = logits / temperature + bias
        log_p = z - logsumexp(z, axis=1, keepdims=True)
        residual = (np.exp(log_p) - onehot) / n  # d loss / d z
        loss = -np.sum(log_p * onehot) / n
        gradient = [-np.sum(residual * logits) / temperature]  # d z / d log T = -logits / T
        if bias_penalty is not None:
            loss += bias_penalty * np.sum(bias**2) / 2
            gradient += list(residual.sum(axis=0) - residual.sum() / n_classes + bias_penalty * bias)
        return float(loss), np.asarray(gradient)

    start = np.zeros(1 + n_classes if bias_penalty is not None else 1)
    theta = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B").x
    bias = theta[1:] - theta[1:].mean() if bias_penalty is not None else np.zeros(n_classes)
    return float(np.exp(theta[0])), bias


def bias_prior_variance(probabilities: np.ndarray, bias: np.ndarray, outcomes: int) -> float:
    """The empirical-Bayes variance ``tau^2`` of a prior ``N(0, tau^2)`` on the class bias (in the
    sum-zero subspace): the maximum-likelihood ``bias`` is then ``N(0, tau^2 I + S)``, with ``S`` the
    inverse Fisher information of ``outcomes`` independent outcomes at ``probabilities``; ``tau^2``
    maximizes that marginal likelihood (0 when the bias is within its own noise).

    Hand-written: a one-parameter maximization of a closed-form likelihood; scikit-learn's
    empirical-Bayes estimators (ARDRegression, BayesianRidge) are for regression weights."""
    n_classes = probabilities.shape[1]
    # An orthonormal basis of the sum-zero subspace (a common shift of the bias is no change).
    basis = np.linalg.svd(np.eye(n_classes) - 1 / n_classes)[0][:, : n_classes - 1]
    per_sample = np.diag(probabilities.mean(axis=0)) - probabilities.T @ probabilities / len(probabilities)
    fisher = outcomes * basis.T @ per_sample @ basis
    sampling_var, rotation = np.linalg.eigh(np.linalg.pinv(fisher))
    projected = (rotation.T @ basis.T @ bias) ** 2

    def negative_log_likelihood(tau2: float) -> float:
        total = tau2 + sampling_var
        return float(np.sum(np.log(total) + projected / total))

    upper = float(10 * (projected.max() + sampling_var.max()))
    best = minimize_scalar(negative_log_likelihood, bounds=(0.0, upper), method="bounded").x
    return float(best) if negative_log_likelihood(best) < negative_log_likelihood(0.0) else 0.0


def fit_calibration(logits: np.ndarray, classes: np.ndarray, outcomes: int | None = None) -> Calibration:
    """Temperature and class bias for one head, the bias shrunk by its empirical-Bayes prior given
    ``outcomes`` independent outcomes (default: every sample counts as one)."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(classes, dtype=np.int64)
    outcomes = len(classes) if outcomes is None else outcomes
    temperature_alone, _ = _fit(x, y, None)
    _, bias = _fit(x, y, 0.0)  # the maximum-likelihood bias, then its prior
    # Its sampling error where it would be noise: at the fit without a bias (at the bias itself the
    # information vanishes when one class takes every label).
    tau2 = bias_prior_variance(softmax(x / temperature_alone, axis=1), bias, outcomes)
    if tau2 == 0.0:
        return Calibration(temperature_alone, (0.0,) * x.shape[1], 0.0, outcomes, temperature_alone)
    # The posterior mode: the mean log loss of the samples stands for ``outcomes`` independent ones.
    temperature, bias = _fit(x, y, 1 / (tau2 * outcomes))
    return Calibration(temperature, tuple(bias.tolist()), float(np.sqrt(tau2)), outcomes, temperature_alone)


def validation_calibration(model: torch.nn.Module, data: TrainingData) -> list[Calibration]:
    """One calibration per head, fitted on the purged validation part (never on test)."""
    val = data.parts["val"]
    logits = predict_logits(model, data, val.steps)
    return [
        fit_calibration(logits[:, h], val.classes[:, h], independent_outcomes(val.steps, horizon))
        for h, horizon in enumerate(data.horizons)
    ]
